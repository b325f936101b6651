"""Every runner answer checked at the boundary, against the shapes protocol.py promises.

The evaluator reads only answers that passed here, so a runner's wrong shape is its
protocol-error, said where it arrived ("score: results[3].logprobs is not a list of numbers"),
and a KeyError or TypeError deeper in the evaluator is the evaluator's own bug, never blamed
on a runner. Only shapes are checked here; what the values mean (token counts, teacher
forcing) is checked by the scenarios, whose failure is `invalid`.
"""


class Malformed(ValueError):
    """An answer that does not have the shape its op promises."""


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise Malformed(what)


def _ints(x, what: str) -> None:
    _need(isinstance(x, list) and all(_is_int(v) for v in x), f"{what} is not a list of integers")


def _entry(e, what: str) -> None:
    _need(isinstance(e, dict), f"{what} is not an object")
    lp = e.get("logprobs")
    _need(isinstance(lp, list) and all(_is_number(v) for v in lp), f"{what}.logprobs is not a list of numbers")
    top = e.get("top")
    _need(top is None or (isinstance(top, list) and all(isinstance(t, list) for t in top)), f"{what}.top is not a list of lists")


def _describe(r: dict, req: dict) -> None:
    _need(isinstance(r.get("engine"), str), "engine is not a string")
    _need(isinstance(r.get("available", True), bool), "available is not a boolean")


def _load(r: dict, req: dict) -> None:
    _need(_is_int(r.get("vocab_size")) and r["vocab_size"] > 0, "vocab_size is not a positive integer")
    _need(isinstance(r.get("device"), str), "device is not a string")
    _need(isinstance(r.get("settings", {}), dict), "settings is not an object")


def _generate(r: dict, req: dict) -> None:
    if "batches" in req:
        answers, asked = r.get("answers"), req["batches"]
        _need(isinstance(answers, list) and len(answers) == len(asked), f"answers is not one per batch ({len(asked)})")
        for i, (answer, prompts) in enumerate(zip(answers, asked)):
            _need(isinstance(answer, dict), f"answers[{i}] is not an object")
            try:
                _generate(answer, {"prompts": prompts})
            except Malformed as exc:
                raise Malformed(f"answers[{i}]: {exc}") from None
        return
    tokens = r.get("tokens")
    _need(isinstance(tokens, list) and len(tokens) == len(req.get("prompts", [])),
          f"tokens is not one list per prompt ({len(req.get('prompts', []))})")
    for i, row in enumerate(tokens):
        _ints(row, f"tokens[{i}]")
    _ints(r.get("token_ns"), "token_ns")
    _need(_is_int(r.get("start_ns")) and _is_int(r.get("end_ns")), "start_ns and end_ns are not integers")


def _score(r: dict, req: dict) -> None:
    results = r.get("results")
    _need(isinstance(results, list), "results is not a list")
    if "groups" in req:
        _need(len(results) == len(req["groups"]), f"results has {len(results)} groups, {len(req['groups'])} asked")
        for g, group in enumerate(results):
            _need(isinstance(group, list), f"results[{g}] is not a list")
            for i, e in enumerate(group):
                _entry(e, f"results[{g}][{i}]")
    else:
        for i, e in enumerate(results):
            _entry(e, f"results[{i}]")
            if "want" in req:  # the chosen ids' log-probabilities: one number per id asked, per position
                _need(i < len(req["want"]), f"results has {len(results)} entries, {len(req['want'])} sequences asked")
                wanted = e.get("wanted")
                _need(isinstance(wanted, list) and [len(w) if isinstance(w, list) else -1 for w in wanted]
                      == [len(ids) for ids in req["want"][i]] and all(_is_number(v) for w in wanted for v in w),
                      f"results[{i}].wanted does not hold one number per id asked at each position")


def _memory(r: dict, req: dict) -> None:
    _need(_is_int(r.get("rss_bytes")) and _is_int(r.get("peak_rss_bytes")), "rss_bytes and peak_rss_bytes are not integers")


def _energy(r: dict, req: dict) -> None:
    joules = r.get("joules")
    _need(joules is None or (isinstance(joules, dict) and all(_is_number(v) for v in joules.values())),
          "joules is not an object of numbers")


def _technique(r: dict, req: dict) -> None:
    if req.get("name") in ("attention", "kv"):
        rows = r.get("rows")
        _need(isinstance(rows, list) and all(isinstance(x, dict) and _is_int(x.get("length", x.get("new_tokens"))) for x in rows),
              "rows is not a list of measurements")
    elif req.get("name") == "train":
        steps = len(req.get("batches") or [])
        for key in ("losses", "seconds"):
            _need(isinstance(r.get(key), list) and len(r[key]) == steps and all(_is_number(v) for v in r[key]),
                  f"{key} is not one number per step ({steps})")
    elif req.get("name") == "flops":
        _need(_is_number(r.get("counted_flops")) and isinstance(r.get("forward_seconds"), list), "counted_flops or forward_seconds missing")


def _serving(r: dict, req: dict) -> None:
    answers, asked = r.get("requests"), req.get("requests", [])
    _need(isinstance(answers, list) and len(answers) == len(asked), f"requests is not one answer per request ({len(asked)})")
    for i, a in enumerate(answers):
        _need(isinstance(a, dict) and _is_int(a.get("submitted_ns")), f"requests[{i}].submitted_ns is not an integer")
        _ints(a.get("tokens"), f"requests[{i}].tokens")
        _ints(a.get("token_ns"), f"requests[{i}].token_ns")
        _need(len(a["token_ns"]) == len(a["tokens"]), f"requests[{i}] has {len(a['tokens'])} tokens and "
              f"{len(a['token_ns'])} timestamps")
        _need("queued_ns" not in a or (_is_int(a["queued_ns"]) and a["queued_ns"] >= 0),
              f"requests[{i}].queued_ns is not a non-negative integer")
    _need(_is_int(r.get("start_ns")) and _is_int(r.get("end_ns")), "start_ns and end_ns are not integers")
    steps = r.get("steps")
    _need(isinstance(steps, list) and all(isinstance(x, list) and len(x) == 2 and all(map(_is_int, x)) for x in steps),
          "steps is not a list of [start_ns, end_ns] pairs")


SHAPES = {"describe": _describe, "load": _load, "generate": _generate, "score": _score, "memory": _memory,
          "energy": _energy, "technique": _technique, "serving": _serving}


def check(op: str, result, request: dict) -> dict:
    """The answer, if it has its op's shape; Malformed saying what is wrong otherwise."""
    if not isinstance(result, dict):
        raise Malformed(f"the result is {type(result).__name__}, not an object")
    if op in SHAPES:
        SHAPES[op](result, request)
    return result

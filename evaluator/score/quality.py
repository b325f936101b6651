"""The quality scenario: one runner, the same token ids as every other backend, scored here.

It asks for log-probabilities only (HellaSwag items, WikiText-2 windows) and keeps the raw
answers beside the cell (raw/<cell>.json): every item's ending sums and every window's NLL,
so the paired comparisons (gate.py) and every summary can be recomputed from the files.

A quality cell may be scored in several rounds (budget.py): each round is one runner
session that continues the HellaSwag items and the WikiText-2 windows where the last one
stopped, each in its seeded order, and asks its `judge` at every planned look whether the
verdict is already known. With `--quality-items auto` a round scores the same share of the
windows as of the items, so perplexity, too, costs only what its verdict needs.
"""
import math
from dataclasses import dataclass
from typing import Callable

from evaluator.launch.process import RunnerFailure
from evaluator.phases import Phases
from evaluator.score import fidelity, hellaswag, perplexity
from evaluator.stats import sequential

# The most logits one grouped score request may make an engine hold: 2^25 floats (128 MiB in
# float32). At a 512-token vocabulary that is ~150 HellaSwag items a request; at 128k, one.
LOGITS_BUDGET = 2**25
ITEM_MODES = ("auto", "all")
PPL_MIN_WINDOWS = 32  # with `auto`: enough windows for the ratio estimator's interval to mean something
REFERENCE_EXHAUSTED = "the reference has no more items"  # a judge's stop that a later round may lift


FULL_VOCAB = 1024  # vocabularies up to this size send whole distributions: the KL is exact
KL_CHUNKS = 4      # llama.cpp chunks scored with them: 1,020 positions


@dataclass(frozen=True)
class Quality:
    items: str = "auto"                  # auto: stop when the verdicts are known; all; or a number N
    seed: int = 1234                     # of the order items are scored in
    ppl_window: int | None = None        # None: min(model context, 1024)
    ppl_stride: int | None = None        # None: half the window
    ppl_max_tokens: int | None = None    # None: the whole file
    ppl_llamacpp: bool = False           # also llama-perplexity's definition (costs half the rolling pass)
    fidelity_windows: int = 8            # rolling windows scored with top-k for fidelity
    top_k: int = 64                      # the reference's top tokens kept per position above FULL_VOCAB
    name: str = "quality"

    @property
    def total_items(self) -> int:
        return hellaswag.ITEMS if self.items in ITEM_MODES else min(int(self.items), hellaswag.ITEMS)

    @property
    def sequential(self) -> bool:
        return self.items == "auto"

    def design(self) -> dict:
        return sequential.design(self.total_items, self.sequential)


@dataclass(frozen=True)
class Round:
    """One runner session of a quality cell: HellaSwag up to `upto` items, continuing the
    (metrics, raw) of the previous session, asking judge(raw, n) -> stop reason | None at looks."""
    upto: int
    previous: tuple[dict, dict] | None = None
    judge: Callable | None = None
    reference_fidelity: list | None = None  # the reference's fidelity windows: their top ids are asked for (`want`)


def _checked(results: list, lengths: list[int], what: str) -> list:
    if len(results) != len(lengths) or any(len(r["logprobs"]) != n for r, n in zip(results, lengths)):
        raise RunnerFailure("invalid", f"{what}: expected {lengths} log-probabilities, got "
                            f"{[len(r.get('logprobs', [])) for r in results]}")
    return results


def _score_windows(runner, windows, timeout_s: float, top_k: int, top_k_windows: int, what: str, progress,
                   want: list | None = None):
    """(NLL per window, tokens per window, the answers of the first `top_k_windows` windows, with
    top-k, and with the log-probabilities of want[i]'s ids at each position where given)."""
    nll, count, kept = [], [], []
    for i, w in enumerate(windows):
        k = top_k if i < top_k_windows else 0
        asked = {"want": [want[i]]} if want and i < len(want) and k else {}
        (res,) = _checked(runner.request("score", timeout_s, sequences=[w.tokens], start=w.start, top_k=k, **asked)["results"],
                          [len(w.tokens) - w.start], what)
        nll.append(-sum(res["logprobs"]))
        count.append(len(res["logprobs"]))
        if k:  # log-probabilities to float32's precision: the raw file stays half the size
            kept.append(dict(res, top=[[[t, round(lp, 6)] for t, lp in top] for top in res["top"]]))
        if progress and i % 100 == 0:
            progress(f"{what} {i}/{len(windows)}")
    return nll, count, kept


def _batches(reqs: list[dict], vocab_size: int):
    """HellaSwag items packed into grouped score requests, each holding at most LOGITS_BUDGET
    logits (rows x longest row x vocabulary) and at least one item."""
    batch, rows, width = [], 0, 0
    for req in reqs:
        r = rows + len(req["sequences"])
        w = max(width, len(req["prefix"]) + max(len(s) for s in req["sequences"]))
        if batch and r * w * vocab_size > LOGITS_BUDGET:
            yield batch
            batch, r, w = [], len(req["sequences"]), len(req["prefix"]) + max(len(s) for s in req["sequences"])
        batch.append(req)
        rows, width = r, w
    if batch:
        yield batch


def windows_for(sc: Quality, extent: int, total_windows: int) -> int:
    """The WikiText-2 windows a cell scores beside `extent` HellaSwag items: every window with a
    fixed item count; with `auto`, the same share of the windows as of the items (seeded order,
    at least PPL_MIN_WINDOWS), so both sets reach their whole at the same look."""
    if not sc.sequential:
        return total_windows
    return min(total_windows, max(PPL_MIN_WINDOWS, math.ceil(total_windows * extent / sc.total_items)))


@dataclass(frozen=True)
class WikiText:
    """WikiText-2 as one cell scores it, built once per cell: its windows and their order."""
    source: str
    tokens: list
    whole_file: bool
    window: int
    stride: int
    rolling: list
    order: list


def wikitext(tok, sc: Quality) -> WikiText:
    source = perplexity.text()
    tokens = tok.encode_cached("wikitext-2-test", source)
    whole_file = sc.ppl_max_tokens is None or sc.ppl_max_tokens >= len(tokens)
    tokens = tokens if whole_file else tokens[: sc.ppl_max_tokens]
    window = sc.ppl_window or min(tok.context_length or 1024, 1024)
    stride = sc.ppl_stride or window // 2
    rolling = perplexity.rolling_windows(tokens, tok.bos, window, stride)
    # What the tokens spell: the file, or for --ppl-tokens the text of its first N tokens (words
    # and bytes per token are then that part's).
    source = source if whole_file else tok.decode(tokens)
    return WikiText(source, tokens, whole_file, window, stride, rolling,
                    perplexity.window_order(len(rolling), sc.seed if sc.sequential else None))


def fidelity_k(sc: Quality, vocab_size: int | None) -> int:
    """Tokens kept per position for the KL: the whole vocabulary where it is small enough to send."""
    return vocab_size if vocab_size and vocab_size <= FULL_VOCAB else sc.top_k


def _reference_ids(reference_fidelity: list, first: int, count: int) -> list:
    """The reference's top ids at every position of its fidelity windows first .. first+count."""
    return [[[t for t, _ in top] for top in w["top"]] for w in reference_fidelity[first: first + count]]


def _perplexity(runner, tok, sc: Quality, wt: WikiText, timeout_s: float, extent: int, previous: dict | None,
                progress, vocab_size: int, reference_fidelity: list | None = None) -> tuple[dict, dict]:
    """(metrics, raw) of WikiText-2, scored up to windows_for(extent), continuing `previous` raw."""
    source, tokens, whole_file, window, stride, rolling, order = (
        wt.source, wt.tokens, wt.whole_file, wt.window, wt.stride, wt.rolling, wt.order)
    raw = dict(previous) if previous else {"perplexity": {}, "fidelity_windows": []}
    done = dict(raw["perplexity"].get("rolling") or {"window_nll": [], "window_tokens": []})
    done.setdefault("windows", list(range(len(done["window_nll"]))))  # results from before the seeded order
    if done["windows"] != order[: len(done["windows"])]:
        raise ValueError("the stored WikiText-2 answers do not follow this cell's window order")
    todo = order[len(done["windows"]): windows_for(sc, extent, len(rolling))]
    top_k_windows = max(0, sc.fidelity_windows - len(done["windows"]))
    k = fidelity_k(sc, vocab_size)
    first = len(raw["fidelity_windows"])
    want = None
    if reference_fidelity and top_k_windows:
        theirs = [w.get("window") for w in reference_fidelity[first: first + top_k_windows]]
        if any(t is not None and t != mine for t, mine in zip(theirs, todo)):
            raise ValueError(f"the reference scored WikiText-2 windows {theirs} for fidelity, this cell {todo[:len(theirs)]}")
        want = _reference_ids(reference_fidelity, first, top_k_windows)
    try:
        # Sent the reference's ids, a variant needs only its own first token (top-1 agreement).
        nll, count, kept = _score_windows(runner, [rolling[i] for i in todo], timeout_s, 1 if want else k, top_k_windows,
                                          "perplexity", progress, want)
        kept = [fidelity.with_kl(w, reference_fidelity[first + i]) if "wanted" in w else w for i, w in enumerate(kept)]
    except RunnerFailure as exc:
        if not (want and exc.status == "unsupported"):
            raise
        # an engine that cannot return chosen ids (vLLM's prompt log-probabilities): each side's
        # own top-k (exact still where both are the whole vocabulary), and the cell says so
        raw["fidelity_partition"] = f"each side's own top-{k} ({exc.reason})"
        nll, count, kept = _score_windows(runner, [rolling[i] for i in todo], timeout_s, k, top_k_windows,
                                          "perplexity", progress)
    kept = [dict(w, window=i) for w, i in zip(kept, todo)]  # which window: a later pairing is checked
    raw["vocab_size"] = vocab_size
    done = {"windows": done["windows"] + todo, "window_nll": done["window_nll"] + nll,
            "window_tokens": done["window_tokens"] + count, "windows_total": len(rolling)}
    raw["perplexity"] = dict(raw["perplexity"], rolling=done)
    raw["fidelity_windows"] = raw["fidelity_windows"] + kept
    metrics = {"rolling": perplexity.summarize_rolling(done["window_nll"], done["window_tokens"], len(rolling), source,
                                                       window, stride, sum(len(w.tokens) - w.start for w in rolling))}
    if sc.ppl_llamacpp and (tok.context_length is None or tok.context_length >= perplexity.LLAMACPP_CTX):
        if "llamacpp" not in raw["perplexity"]:  # its own definition: every chunk, in the first round
            stream = [tok.bos] + tok.encode_cached("wikitext-2-test-llamacpp", perplexity.llamacpp_text(),
                                                   tok.encode_as_llamacpp)
            chunks = perplexity.llamacpp_windows(stream[: None if whole_file else len(tokens) + 1], tok.bos)
            # The first chunks also with whole distributions where the vocabulary is small enough
            # to send: the exact KL on llama-perplexity's own positions (its --kl-divergence).
            nll, count, dists = _score_windows(runner, chunks, timeout_s, k, KL_CHUNKS, "llama.cpp perplexity", progress)
            raw["perplexity"]["llamacpp"] = {"window_nll": nll, "window_tokens": count, "fidelity_windows": dists, "top_k": k}
        lc = raw["perplexity"]["llamacpp"]
        metrics["llamacpp"] = perplexity.summarize_llamacpp(sum(lc["window_nll"]), sum(lc["window_tokens"]),
                                                            len(lc["window_tokens"]))
    return metrics, raw


def _score_items(runner, items: list, tok, timeout_s: float, vocab_size: int, progress=None, done: int = 0,
                 total: int = 0) -> list[list[float]]:
    """Each item's ending log-probability sums, in the items' order. They are sent sorted by
    length, so an engine that batches them pads little (lm-evaluation-harness sorts the same way)."""
    reqs = hellaswag.requests(items, tok)
    by_length = sorted(range(len(reqs)), key=lambda i: len(reqs[i]["prefix"]) + max(map(len, reqs[i]["sequences"])))
    sums = [None] * len(reqs)
    count = 0
    for batch in _batches([reqs[i] for i in by_length], vocab_size):
        res = runner.request("score", timeout_s, groups=batch, top_k=0)["results"]
        if len(res) != len(batch):
            raise RunnerFailure("invalid", f"hellaswag: {len(batch)} groups asked, {len(res)} answered")
        for req, answers in zip(batch, res):
            lengths = [len(s) for s in req["sequences"]]
            sums[by_length[count]] = [sum(r["logprobs"]) for r in _checked(answers, lengths, "hellaswag")]
            count += 1
        if progress:
            progress(f"hellaswag {done + count}/{total}")
    return sums


def run(runner, tok, sc: Quality, timeout_s: float, vocab_size: int, rnd: Round, progress=None,
        phases: Phases | None = None) -> tuple[dict, dict]:
    """(metrics, raw) after this round, the previous rounds' answers included."""
    phases = phases or Phases()
    raw = dict(rnd.previous[1]) if rnd.previous else None
    looks, stop = sc.design()["looks"], None
    n = len(((raw or {}).get("hellaswag") or {}).get("items", []))
    # The windows go with the items, look by look: a variant that stops at a look has scored
    # that look's share of WikiText-2, not the round's.
    first = min(next((look for look in looks if look > n), sc.total_items), rnd.upto, sc.total_items)
    with phases("wikitext-2"):
        wt = wikitext(tok, sc)
        ppl_metrics, raw = _perplexity(runner, tok, sc, wt, timeout_s, max(first, n), raw, progress, vocab_size,
                                       rnd.reference_fidelity)
    raw["hellaswag"] = dict(raw.get("hellaswag") or {"items": [], "ending_logprob_sums": []})
    with phases("hellaswag"):
        order = hellaswag.order(hellaswag.load(), sc.seed)[: sc.total_items]
    scored = raw["hellaswag"]
    if scored["items"] != [it.index for it in order[: len(scored["items"])]]:
        raise ValueError("the stored HellaSwag answers do not follow this cell's item order")
    while len(scored["items"]) < min(rnd.upto, sc.total_items) and stop is None:
        n = len(scored["items"])
        end = min(next(look for look in looks if look > n), rnd.upto)
        if end > first:
            with phases("wikitext-2"):
                ppl_metrics, raw = _perplexity(runner, tok, sc, wt, timeout_s, end, raw, progress, vocab_size)
        block = order[n:end]
        with phases("hellaswag"):
            scored["ending_logprob_sums"] = scored["ending_logprob_sums"] + _score_items(
                runner, block, tok, timeout_s, vocab_size, progress, n, sc.total_items)
        scored["items"] = scored["items"] + [it.index for it in block]
        if end in looks and rnd.judge:
            with phases("verdict"):
                stop = rnd.judge(raw, end)
    n = len(scored["items"])
    # Final: the verdict is known, or nothing is left to score; otherwise a later round may go on.
    final = n >= sc.total_items or (stop is not None and stop != REFERENCE_EXHAUSTED)
    scored["stopped"] = stop or ("every planned item" if n >= sc.total_items else f"this round's {n} items")
    hs = hellaswag.summarize(order[:n], scored["ending_logprob_sums"])
    hs["order"] = {"seed": sc.seed, "mode": sc.items, "planned": sc.total_items, "scored": n,
                   "stopped": scored["stopped"], "final": final}
    return {"hellaswag": hs, "perplexity": ppl_metrics}, raw

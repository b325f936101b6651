"""Scenarios: what a cell asks its runner to do, and the metrics derived from the answers.

Every duration comes from the runner's own timestamps (start_ns, token_ns, end_ns), so the
pipe, JSON and the host's scheduling never enter a latency. Definitions:

- end-to-end latency: end_ns - start_ns of one generate request (prompt in, all tokens out).
- time to first token (TTFT): token_ns[0] - start_ns; includes the prefill.
- inter-token latency (ITL): token_ns[i] - token_ns[i-1], every gap of every timed request.
- time per output token (TPOT): (token_ns[-1] - token_ns[0]) / (new_tokens - 1), per request.
- prefill tokens/s: batch * prompt_tokens / TTFT.  decode tokens/s: batch * (new_tokens - 1) /
  (token_ns[-1] - token_ns[0]): the first token belongs to the prefill.

The latency and throughput loops' timed requests run back to back inside the runner, a chunk
at a time (back_to_back.py): no round trip through the evaluator enters between them.

Timed requests take their prompts in turn from a pool of distinct WikiText-2 windows of the same
length, the same pool for every engine: an engine that keeps a prefix cache cannot answer a
repeated prompt from it (MLPerf's TEST04 audit exists to catch that), and no row's time is one
prompt's.
"""
import itertools
from dataclasses import asdict, dataclass

from evaluator.errors import UserError
from evaluator.launch.process import RunnerFailure, RunnerProcess
from evaluator.measure import back_to_back, energy, sampling
from evaluator.stats.intervals import summarize


@dataclass(frozen=True)
class Latency:
    """Batch 1: warmup requests, then timed ones until the medians are precise (sampling.py)."""
    prompt_tokens: int = 32
    new_tokens: int = 64
    distinct_prompts: int = 8   # timed request i takes prompt i mod 8
    warmup: int = 2
    min_iterations: int = 10
    min_duration_s: float = 2.0
    precision: float = 0.02     # 95% interval half-width of each headline median, relative
    # The cap on the timed loop beyond its minimums, precision reached or not: 10 s holds a run of
    # ten configurations to a few minutes; a jittery machine reaches ±2% by sampling longer
    # (--max-time 60), and what it reached instead is printed and kept.
    max_time_s: float = 10.0
    max_iterations: int = 20000  # bounds the samples kept (and the cell file) for very fast engines
    name: str = "latency"

    def budget(self) -> sampling.Budget:
        return sampling.Budget(self.min_iterations, self.min_duration_s, self.precision, self.max_time_s,
                               self.max_iterations)


@dataclass(frozen=True)
class Throughput:
    """A sweep of batch sizes, each timed until its median tokens/s is precise (or its cap)."""
    prompt_tokens: int = 32
    new_tokens: int = 64
    batch_sizes: tuple = (1, 4, 16)
    distinct_batches: int = 4   # timed step i of a batch size takes the pool's (i mod 4)-th slice
    min_iterations: int = 3
    precision: float = 0.02
    max_time_s: float = 5.0     # per batch size
    name: str = "throughput"

    def budget(self) -> sampling.Budget:
        return sampling.Budget(self.min_iterations, 0.0, self.precision, self.max_time_s, 10000)


@dataclass(frozen=True)
class Check:
    """Greedy from BOS before anything is timed: the tokens a fast path must reproduce."""
    new_tokens: int = 256


SCENARIOS = ("latency", "throughput", "quality")
OPT_IN = ("serving",)  # asked for by name: not in a default run


def options(scenario) -> dict:
    return asdict(scenario)


def check_fits(scenario, context_length: int | None) -> None:
    """A scenario's longest sequence against the model's context (a technique states its own)."""
    tokens = getattr(scenario, "model_tokens", None)
    if tokens is None:
        tokens = scenario.prompt_tokens + scenario.new_tokens
    if context_length and tokens > context_length:
        raise UserError(f"{scenario.name}: a sequence of {tokens} tokens exceeds the model's context of "
                        f"{context_length} tokens")


def _generate(runner: RunnerProcess, prompts: list[list[int]], new_tokens: int, timeout_s: float) -> dict:
    answer = runner.request("generate", timeout_s, prompts=prompts, max_new_tokens=new_tokens)
    return _accounted(answer, len(prompts), new_tokens)


def _accounted(answer: dict, prompts: int, new_tokens: int) -> dict:
    tokens, token_ns = answer.get("tokens"), answer.get("token_ns")
    # Token accounting: a runner that returns the wrong amount is lying about its speed.
    if (not isinstance(tokens, list) or len(tokens) != prompts
            or any(not isinstance(t, list) or len(t) != new_tokens for t in tokens)):
        raise RunnerFailure("invalid", f"asked for {prompts} x {new_tokens} tokens, got "
                            f"{[len(t) for t in tokens] if isinstance(tokens, list) else tokens!r}")
    if not isinstance(token_ns, list) or len(token_ns) != new_tokens:
        raise RunnerFailure("invalid", f"asked for {new_tokens} token timestamps, got {len(token_ns or [])}")
    return answer


def _timings(answer: dict, batch: int, prompt_tokens: int) -> dict:
    start, ts, end = answer["start_ns"], answer["token_ns"], answer["end_ns"]
    n = len(ts)
    decode_s = (ts[-1] - ts[0]) / 1e9
    return {
        "e2e_ms": (end - start) / 1e6,
        "ttft_ms": (ts[0] - start) / 1e6,
        "itl_ms": [(b - a) / 1e6 for a, b in zip(ts, ts[1:])],
        "tpot_ms": decode_s * 1e3 / (n - 1) if n > 1 else None,
        "prefill_tokens_per_s": batch * prompt_tokens / ((ts[0] - start) / 1e9),
        "decode_tokens_per_s": batch * (n - 1) / decode_s if n > 1 and decode_s > 0 else None,
        "tokens_per_s": batch * n / ((end - start) / 1e9),
    }


def run_check(runner: RunnerProcess, bos: int, check: Check, timeout_s: float) -> list[int]:
    return _generate(runner, [[bos]], check.new_tokens, timeout_s)["tokens"][0]


# The medians whose precision decides when a latency loop may stop. Decode and prefill speed
# are the reciprocals of TPOT and TTFT, request by request, so their medians' precision is the same.
HEADLINE = ("e2e_ms", "ttft_ms", "tpot_ms")
METRICS = (("e2e_ms", "ms"), ("ttft_ms", "ms"), ("tpot_ms", "ms"), ("prefill_tokens_per_s", "tokens/s"),
           ("decode_tokens_per_s", "tokens/s"))


def run_latency(runner: RunnerProcess, prompts: list[list[int]], sc: Latency, timeout_s: float, progress=None) -> dict:
    """Warmup, then one timed loop until every headline median is within the precision (or
    the cap), timed request i on prompts[i mod len(prompts)], one at a time and back to back
    inside the runner (back_to_back.py). The result's `validity` holds each rule's Yes/No and
    what was reached; `output_tokens` are prompts[0]'s."""
    idle = energy.idle_watts(runner, timeout_s)  # after load, before any work: the floor the loop adds to
    warm = [_generate(runner, [prompts[i % len(prompts)]], sc.new_tokens, timeout_s) for i in range(sc.warmup)]
    chunks = back_to_back.Chunks(runner, sc.new_tokens, timeout_s, sc.min_iterations,
                                 [(w["end_ns"] - w["start_ns"]) / 1e6 for w in warm])
    first_output, requests = {}, itertools.count()

    def step(room):
        numbers = [next(requests) for _ in range(min(chunks.size, room))]
        lead = numbers[0] - 1  # the prompt before the chunk's first in turn: never that one's
        lead_answer, timed = chunks.run([prompts[lead % len(prompts)]], [[prompts[n % len(prompts)]] for n in numbers],
                                        lambda answer, n: _accounted(answer, n, sc.new_tokens))
        for n, answer in [(lead, lead_answer), *zip(numbers, timed)]:
            which, tokens = n % len(prompts), answer["tokens"][0]
            if first_output.setdefault(which, tokens) != tokens:  # greedy is deterministic: a change is a bug
                what = f"timed request {n + 1}" if n > lead else f"the untimed lead before timed request {n + 2}"
                raise RunnerFailure("invalid", f"{what} returned other tokens than the first request on the same "
                                               f"prompt ({which + 1} of {len(prompts)})")
        return [_timings(answer, 1, len(prompts[0])) for answer in timed]

    before = runner.request("energy", timeout_s)
    runs, validity = sampling.sample(step, HEADLINE, sc.budget(), progress=progress)
    spent = energy.spent(before, runner.request("energy", timeout_s), chunks.issued * sc.new_tokens, validity["duration_s"],
                         idle)
    # An imprecise loop still measured correct answers: its numbers stay, with the wider
    # intervals they have, and the verdict INVALID says which precision was reached instead.
    metrics = {key: summarize([r[key] for r in runs if r[key] is not None], unit) for key, unit in METRICS}
    # Gaps inside one request are not independent samples; their intervals treat them as if
    # they were. TPOT is the per-request statistic with exact intervals.
    metrics["itl_ms"] = summarize([gap for r in runs for gap in r["itl_ms"]], "ms")
    return {"metrics": metrics, "iterations": len(runs), "duration_s": validity["duration_s"],
            "output_tokens": first_output[0], "distinct_prompts": len(prompts), "validity": validity, "energy": spent}


# Teacher forcing: scoring prompt + output must put each generated token first, up to ties
# (prefill in one batch and decode step by step round differently: seen up to 0.25 nats with
# llama.cpp's f16 KV cache). A real accounting bug misses by nats, not by rounding.
ARGMAX_TIE_NATS = 0.5


def check_consistency(runner: RunnerProcess, prompt: list[int], output: list[int], timeout_s: float) -> dict:
    """The tokens of a timed run against the scoring path for the same prompt: the first token
    generated, and every later one, must be the scoring path's argmax (within ARGMAX_TIE_NATS)."""
    (res,) = runner.request("score", timeout_s, sequences=[prompt + output], start=len(prompt), top_k=1)["results"]
    misses = []
    for i, (token, lp, top) in enumerate(zip(output, res["logprobs"], res["top"])):
        best_id, best_lp = top[0]
        if best_id != token and best_lp - lp > ARGMAX_TIE_NATS:
            misses.append({"position": i, "generated": token, "argmax": best_id, "margin_nats": best_lp - lp})
    result = {"positions": len(output), "misses": misses, "tie_nats": ARGMAX_TIE_NATS}
    if misses:
        first = misses[0]
        raise RunnerFailure("invalid", f"generated token {first['position']} ({first['generated']}) is not what scoring the "
                            f"same prompt ranks first ({first['argmax']}, {first['margin_nats']:.2f} nats ahead); "
                            f"{len(misses)} of {len(output)} positions disagree")
    return result


def run_throughput(runner: RunnerProcess, prompts: list[list[int]], sc: Throughput, timeout_s: float, progress=None) -> dict:
    """Per batch size: one warmup, then timed requests until the median tokens/s is within the
    precision (or the cap); each batch size keeps its own `validity`. Timed step i of batch size
    b sends the (i mod k)-th of k consecutive slices of b prompts from the pool (k at most
    distinct_batches)."""
    per_batch = []
    for batch in sc.batch_sizes:
        slices = [prompts[i:i + batch] for i in range(0, len(prompts) - batch + 1, batch)][:sc.distinct_batches]
        try:
            warm = _generate(runner, slices[0], sc.new_tokens, timeout_s)  # warmup: allocator, caches
        except RunnerFailure as exc:
            if exc.status != "unsupported" or batch == 1:
                raise
            per_batch.append({"batch_size": batch, "unsupported": exc.reason})
            continue
        chunks = back_to_back.Chunks(runner, sc.new_tokens, timeout_s, sc.min_iterations,
                                     [(warm["end_ns"] - warm["start_ns"]) / 1e6])
        turns = itertools.count()

        def step(room, batch=batch, slices=slices, chunks=chunks, turns=turns):
            numbers = [next(turns) for _ in range(min(chunks.size, room))]
            _, timed = chunks.run(slices[(numbers[0] - 1) % len(slices)], [slices[n % len(slices)] for n in numbers],
                                  lambda answer, n: _accounted(answer, n, sc.new_tokens))
            return [_timings(answer, batch, len(prompts[0])) for answer in timed]

        runs, validity = sampling.sample(step, ("tokens_per_s",), sc.budget())
        per_batch.append({
            "batch_size": batch, "validity": validity,
            "tokens_per_s": summarize([r["tokens_per_s"] for r in runs], "tokens/s"),
            "decode_tokens_per_s": summarize([r["decode_tokens_per_s"] for r in runs if r["decode_tokens_per_s"]], "tokens/s"),
            "e2e_ms": summarize([r["e2e_ms"] for r in runs], "ms"),
        })
        if progress:
            progress(batch)
    best = max((b for b in per_batch if "tokens_per_s" in b), key=lambda b: b["tokens_per_s"]["p50"])
    timed = [b["validity"] for b in per_batch if "validity" in b]
    validity = {"valid": all(v["valid"] for v in timed), "per_batch": timed,
                "rules": [dict(r, rule=f"batch {b['batch_size']}: {r['rule']}") for b in per_batch if "validity" in b
                          for r in b["validity"]["rules"]],
                "iterations": sum(v["iterations"] for v in timed), "duration_s": sum(v["duration_s"] for v in timed),
                "stopped_by": ", ".join(sorted({v["stopped_by"] for v in timed}))}
    return {"metrics": {"per_batch": per_batch, "best_tokens_per_s": best["tokens_per_s"]["p50"],
                        "best_tokens_per_s_ci": best["tokens_per_s"]["p50_ci"], "best_batch_size": best["batch_size"]},
            "validity": validity}

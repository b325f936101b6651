"""Scenarios: what a cell asks its runner to do, and the metrics derived from the answers.

Every duration comes from the runner's own timestamps (start_ns, token_ns, end_ns), so the
pipe, JSON and the host's scheduling never enter a latency. Definitions:

- end-to-end latency: end_ns - start_ns of one generate request (prompt in, all tokens out).
- time to first token (TTFT): token_ns[0] - start_ns; includes the prefill.
- inter-token latency (ITL): token_ns[i] - token_ns[i-1], every gap of every timed request.
- time per output token (TPOT): (token_ns[-1] - token_ns[0]) / (new_tokens - 1), per request.
- prefill tokens/s: batch * prompt_tokens / TTFT.  decode tokens/s: batch * (new_tokens - 1) /
  (token_ns[-1] - token_ns[0]): the first token belongs to the prefill.
"""
import time
from dataclasses import asdict, dataclass, field

from evaluator.errors import UserError
from evaluator.launch.process import RunnerFailure, RunnerProcess
from evaluator.measure.stats import summarize


@dataclass(frozen=True)
class Latency:
    """Batch 1: warmup requests, then timed ones until both minimums are met."""
    prompt_tokens: int = 32
    new_tokens: int = 64
    warmup: int = 2
    min_iterations: int = 10
    min_duration_s: float = 2.0
    max_iterations: int = 500
    name: str = "latency"


@dataclass(frozen=True)
class Throughput:
    """A sweep of batch sizes, each a few timed requests after one warmup."""
    prompt_tokens: int = 32
    new_tokens: int = 64
    batch_sizes: tuple = (1, 4, 16)
    iterations: int = 3
    name: str = "throughput"


@dataclass(frozen=True)
class Check:
    """Greedy from BOS before anything is timed: the tokens a fast path must reproduce."""
    new_tokens: int = 256


SCENARIOS = ("latency", "throughput", "quality")


def options(scenario) -> dict:
    return asdict(scenario)


def check_fits(scenario, context_length: int | None) -> None:
    if context_length and scenario.prompt_tokens + scenario.new_tokens > context_length:
        raise UserError(f"{scenario.name}: prompt_tokens + new_tokens = {scenario.prompt_tokens + scenario.new_tokens} "
                        f"exceeds the model's context of {context_length} tokens")


def _generate(runner: RunnerProcess, prompts: list[list[int]], new_tokens: int, timeout_s: float) -> dict:
    answer = runner.request("generate", timeout_s, prompts=prompts, max_new_tokens=new_tokens)
    tokens, token_ns = answer.get("tokens"), answer.get("token_ns")
    # Token accounting: a runner that returns the wrong amount is lying about its speed.
    if (not isinstance(tokens, list) or len(tokens) != len(prompts)
            or any(not isinstance(t, list) or len(t) != new_tokens for t in tokens)):
        raise RunnerFailure("invalid", f"asked for {len(prompts)} x {new_tokens} tokens, got "
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


def run_latency(runner: RunnerProcess, prompt: list[int], sc: Latency, timeout_s: float, progress=None) -> dict:
    for _ in range(sc.warmup):
        _generate(runner, [prompt], sc.new_tokens, timeout_s)
    runs, first_tokens = [], None
    t0 = time.monotonic()
    while len(runs) < sc.max_iterations and (len(runs) < sc.min_iterations or time.monotonic() - t0 < sc.min_duration_s):
        answer = _generate(runner, [prompt], sc.new_tokens, timeout_s)
        if first_tokens is None:
            first_tokens = answer["tokens"][0]
        elif answer["tokens"][0] != first_tokens:  # greedy is deterministic: a change is a bug
            raise RunnerFailure("invalid", f"timed request {len(runs) + 1} returned other tokens than request 1")
        runs.append(_timings(answer, 1, len(prompt)))
        if progress:
            progress(len(runs))
    metrics = {key: summarize([r[key] for r in runs if r[key] is not None], unit)
               for key, unit in (("e2e_ms", "ms"), ("ttft_ms", "ms"), ("tpot_ms", "ms"),
                                 ("prefill_tokens_per_s", "tokens/s"), ("decode_tokens_per_s", "tokens/s"))}
    metrics["itl_ms"] = summarize([gap for r in runs for gap in r["itl_ms"]], "ms")
    return {"metrics": metrics, "iterations": len(runs), "duration_s": time.monotonic() - t0,
            "output_tokens": first_tokens}


def run_throughput(runner: RunnerProcess, prompts: list[list[int]], sc: Throughput, timeout_s: float, progress=None) -> dict:
    per_batch = []
    for batch in sc.batch_sizes:
        batch_prompts = prompts[:batch]
        try:
            _generate(runner, batch_prompts, sc.new_tokens, timeout_s)  # warmup: allocator, caches
        except RunnerFailure as exc:
            if exc.status != "unsupported" or batch == 1:
                raise
            per_batch.append({"batch_size": batch, "unsupported": exc.reason})
            continue
        runs = [_timings(_generate(runner, batch_prompts, sc.new_tokens, timeout_s), batch, len(prompts[0]))
                for _ in range(sc.iterations)]
        per_batch.append({
            "batch_size": batch,
            "tokens_per_s": summarize([r["tokens_per_s"] for r in runs], "tokens/s"),
            "decode_tokens_per_s": summarize([r["decode_tokens_per_s"] for r in runs if r["decode_tokens_per_s"]], "tokens/s"),
            "e2e_ms": summarize([r["e2e_ms"] for r in runs], "ms"),
        })
        if progress:
            progress(batch)
    best = max((b for b in per_batch if "tokens_per_s" in b), key=lambda b: b["tokens_per_s"]["mean"])
    return {"metrics": {"per_batch": per_batch, "best_tokens_per_s": best["tokens_per_s"]["mean"],
                        "best_batch_size": best["batch_size"]}}

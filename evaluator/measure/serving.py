"""The serving scenario: how many users a deployment holds within its latency objectives.

For each rate of `rates` (requests per second, light to heavy), `requests` requests arrive on a
seeded schedule the harness makes (arrivals.py: Poisson by default), each a distinct WikiText-2
window of `prompt_tokens` with exactly `new_tokens` to generate, offered to the engine's own
asynchronous API by the runner library (the `serving` op), every token stamped on the runner's
clock. The sweep stops at the knee: once a rate's output throughput gains less than KNEE_GAIN
over the rate before, the engine is saturated and heavier rates only queue.

Per rate, every latency is measured from the request's *scheduled* arrival, so the time a
request waits for the engine (to finish its current step, or for a free slot) is the user's:
  TTFT   first token - arrival          TPOT  (last - first token) / (new_tokens - 1)
  ITL    every gap between tokens       E2E   last token - arrival
each with its median, tails and 95% intervals (stats.intervals.summarize: a tail is reported
only where the requests suffice for it); requests/s and output tokens/s over the time from the
first arrival to the last token; with `slo`, goodput: requests/s meeting every objective. The
lateness (offered - scheduled) is kept, and the generator's own part of it: a request falling
due during an engine step is offered when the step returns (an engine's own server queues it
until its next step too), so what remains is the harness's. A rate at which arrivals, delayed
by that part alone, fall short of the schedule's rate by more than 5% is INVALID: it measured
the generator, not the engine.
"max requests/s within the SLO" is the heaviest valid rate shown, with 95% confidence, to have at
least SLO_SHARE of its requests meet every objective (MLPerf's Server scenario holds a 90th or
99th percentile): the Wilson interval of the share met must lie above SLO_SHARE ("within"),
wholly below it is "outside", and in between "undecided": too few requests to tell, as MLPerf's
early stopping declines to claim a percentile its sample cannot bound. Even with every request
meeting the objectives, 35 requests are the fewest that can show 90% (SLO_REQUESTS_NEEDED).

With `concurrency` (vLLM's `bench serve --max-concurrency`, a closed load) the sweep is over
numbers of users instead: N requests in flight from the start, each answered one letting the
next in, so a request "arrives" when it is offered and there is no schedule to fall behind;
"max requests/s within the SLO" is then the requests/s achieved at the heaviest concurrency
within it.
"""
import argparse
import bisect
import math
from dataclasses import dataclass

from evaluator.launch.process import RunnerFailure, RunnerProcess
from evaluator.measure import arrivals
from evaluator.stats.intervals import samples_needed, summarize, wilson_interval

SLO_METRICS = ("ttft", "tpot", "e2e")
KNEE_GAIN = 1.05   # a rate whose output tokens/s gains less than this factor is past the knee
FOLLOWED = 0.95    # offered arrivals at least this share of the schedule's own rate
SLO_SHARE = 0.9    # of the requests meeting every objective, for a rate to count as within the SLO
SLO_REQUESTS_NEEDED = next(n for n in range(1, 10_000) if wilson_interval(n, n)[0] >= SLO_SHARE)


@dataclass(frozen=True)
class Serving:
    rates: tuple = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
    requests: int = samples_needed(0.95)  # per rate: 72, the fewest whose order statistics bound a p95
    min_duration_s: float = 5.0  # and a schedule at least this long: more requests at heavy rates
    prompt_tokens: int = 32
    new_tokens: int = 32
    burstiness: float = 1.0      # gamma shape of the gaps: 1 is Poisson
    seed: int = 0
    slo: tuple = ()              # (("ttft", ms), ("tpot", ms), ("e2e", ms)), any of them
    concurrency: tuple = ()      # users in flight, instead of rates: a closed load
    name: str = "serving"


def load_label(row: dict) -> str:
    """The load a row was measured under, for people: "16 requests/s" or "16 users"."""
    if "rate" in row:
        return f"{row['rate']:g} requests/s"
    return f"{row['concurrency']} user" + ("s" if row["concurrency"] != 1 else "")


def _increasing(text: str, cast, unit: str, example: str) -> tuple:
    """A comma-separated list of loads, each > 0, increasing (the sweep's order)."""
    try:
        loads = tuple(cast(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a comma-separated list of {unit}") from None
    if not loads or not all(x > 0 for x in loads) or list(loads) != sorted(set(loads)):
        raise argparse.ArgumentTypeError(f"{text!r}: must be > 0 and increasing, e.g. {example}")
    return loads


def parse_rates(text: str) -> tuple:
    """"1,2,4" -> (1.0, 2.0, 4.0): requests per second (an argparse type)."""
    return _increasing(text, float, "requests per second", "1,2,4,8")


def parse_concurrency(text: str) -> tuple:
    """"1,4,16" -> (1, 4, 16): users in flight (an argparse type)."""
    return _increasing(text, int, "whole numbers of users", "1,4,16")


def parse_burstiness(text: str) -> float:
    """The gamma shape of the gaps, > 0 (an argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be > 0 (1 is Poisson, below 1 burstier)")
    return value


def parse_slo(text: str) -> tuple:
    """"ttft:500,tpot:50" -> (("ttft", 500.0), ("tpot", 50.0)), objectives in milliseconds (an argparse type)."""
    slo = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        metric, _, ms = part.partition(":")
        if metric not in SLO_METRICS:
            raise argparse.ArgumentTypeError(f"{part!r}: unknown metric {metric!r}; valid: {', '.join(SLO_METRICS)} "
                                             "(e.g. ttft:500,tpot:50)")
        try:
            bound = float(ms)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: {ms!r} is not a number of milliseconds") from None
        if not bound > 0:
            raise argparse.ArgumentTypeError(f"{part!r}: the bound must be > 0 ms")
        slo.append((metric, bound))
    return tuple(slo)


def run_serving(runner: RunnerProcess, prompts: list[list[int]], sc: Serving, timeout_s: float, progress=None) -> dict:
    def offer(at, **closed):
        asked = [{"at_s": a, "prompt": prompts[i % len(prompts)], "new_tokens": sc.new_tokens} for i, a in enumerate(at)]
        # a closed load of N users serves its requests N at a time: as many request times, back to back
        rounds = math.ceil(len(at) / closed["concurrency"]) if closed else 1
        return runner.request("serving", timeout_s * rounds + at[-1], requests=asked, **closed)

    # Untimed first: every request at once, so the engine meets each batch size (decode drains
    # from `requests` to 1) before a timed rate does; vLLM's CPU kernels are built per shape on
    # first use, and they made the lightest rate look slowest.
    offer([0.0] * sc.requests)
    rows = []
    for load in sc.concurrency or sc.rates:
        if sc.concurrency:
            rows.append(_rate(offer([0.0] * sc.requests, concurrency=load), sc, None, concurrency=load))
        else:
            count = max(sc.requests, math.ceil(load * sc.min_duration_s) + 1)
            at = arrivals.offsets(load, count, seed=sc.seed, burstiness=sc.burstiness)
            rows.append(_rate(offer(at), sc, at, rate=load))
        if progress:
            progress(f"serving {load_label(rows[-1])}: {rows[-1]['output_tokens_per_s']:,.0f} output tokens/s")
        if len(rows) > 1 and rows[-1]["output_tokens_per_s"] < KNEE_GAIN * rows[-2]["output_tokens_per_s"]:
            break
    within = [r.get("rate") or r["requests_per_s"] for r in rows if r["valid"] and r.get("slo_verdict") == "within"]
    return {"metrics": {"per_rate": rows, "saturated": len(rows) < len(sc.concurrency or sc.rates),
                        "max_rate_within_slo": max(within) if sc.slo and within else None,
                        "min_duration_s": sc.min_duration_s,
                        "slo": dict(sc.slo), "slo_share": SLO_SHARE, "slo_requests_needed": SLO_REQUESTS_NEEDED}}


def _ready(arrival_ns: int, steps: list) -> int:
    """When a request due at arrival_ns could be offered: then, or when the engine step running
    at that moment returned (the engine's own server would queue it until then too)."""
    i = bisect.bisect_right(steps, [arrival_ns, float("inf")]) - 1
    return max(arrival_ns, steps[i][1]) if i >= 0 and steps[i][0] <= arrival_ns < steps[i][1] else arrival_ns


def _arrivals(at: list[float], arrival: list[int], offered: list[int], steps: list) -> tuple[dict, bool]:
    """An open schedule's arrivals as offered: lateness, the generator's own part of it, and
    whether the offered rate kept up with the schedule's (FOLLOWED)."""
    own = [o - _ready(a, steps) for o, a in zip(offered, arrival)]  # the generator's own delay
    schedule_rate = (len(at) - 1) / at[-1] if len(at) > 1 and at[-1] > 0 else None
    span_offered = (arrival[-1] + own[-1]) - (arrival[0] + own[0])
    offered_rate = (len(at) - 1) / (span_offered / 1e9) if len(at) > 1 and span_offered > 0 else None
    followed = schedule_rate is None or (offered_rate is not None and offered_rate >= FOLLOWED * schedule_rate)
    return {"schedule_per_s": schedule_rate, "offered_per_s": offered_rate,
            "lateness_ms": summarize([(o - a) * 1e-6 for o, a in zip(offered, arrival)], "ms"),
            "generator_lateness_ms": summarize([d * 1e-6 for d in own], "ms")}, followed


def _rate(out: dict, sc: Serving, at: list[float] | None, **load) -> dict:
    """One load's row; `load` is rate=requests/s (an open schedule, arrivals `at`) or
    concurrency=users (a closed load: a request arrives when it is offered)."""
    start, ms = out["start_ns"], 1e-6
    reqs = out["requests"]
    for i, r in enumerate(reqs):
        if len(r["tokens"]) != sc.new_tokens:
            raise RunnerFailure("invalid", f"serving at {load_label(load)}: request {i} got {len(r['tokens'])} tokens, "
                                f"{sc.new_tokens} asked")
    offered = [r["submitted_ns"] for r in reqs]
    arrival = offered if at is None else [start + round(a * 1e9) for a in at]
    per = {"ttft": [(r["token_ns"][0] - a) * ms for r, a in zip(reqs, arrival)],
           "tpot": [(r["token_ns"][-1] - r["token_ns"][0]) * ms / (sc.new_tokens - 1) for r in reqs] if sc.new_tokens > 1 else [],
           "e2e": [(r["token_ns"][-1] - a) * ms for r, a in zip(reqs, arrival)]}
    itl = [(b - a) * ms for r in reqs for a, b in zip(r["token_ns"], r["token_ns"][1:])]
    span_s = (max(r["token_ns"][-1] for r in reqs) - start) / 1e9
    schedule, followed = _arrivals(at, arrival, offered, out["steps"]) if at is not None else (None, True)
    row = {**load, "requests": len(reqs), "duration_s": span_s,
           **{f"{k}_ms": summarize(v, "ms") for k, v in per.items()}, "itl_ms": summarize(itl, "ms"),
           "requests_per_s": len(reqs) / span_s, "output_tokens_per_s": len(reqs) * sc.new_tokens / span_s,
           "arrivals": schedule, "valid": followed}
    if reqs and all("queued_ns" in r for r in reqs):  # the engine's own count of time spent in its queue
        row["queued_ms"] = summarize([r["queued_ns"] * ms for r in reqs], "ms")
    if sc.slo:
        met = [all(per[k][i] <= bound for k, bound in sc.slo if per[k]) for i in range(len(reqs))]
        low, high = wilson_interval(sum(met), len(reqs))
        row.update(met_slo=sum(met), slo_share=sum(met) / len(reqs), slo_share_ci=[low, high], goodput_per_s=sum(met) / span_s,
                   slo_verdict="within" if low >= SLO_SHARE else "outside" if high < SLO_SHARE else "undecided")
    return row

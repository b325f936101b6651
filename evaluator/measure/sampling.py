"""Adaptive sampling: time requests until the numbers the report prints are precise enough.

Like criterion.rs and MLPerf LoadGen: after the minimum requests and the minimum duration,
keep sampling until the 95% interval of each headline metric's median is within
`precision` of the median (relative half-width), or until the cell's time cap (which bounds
the sampling beyond the minimums, never the minimums themselves: on a slow device ten requests
may take minutes). Every sample of the loop is kept; none is dropped as an outlier and no quiet
attempt is chosen.

The verdict is LoadGen's: each rule printed with Yes/No and what was reached. VALID means
every rule held; INVALID names the precision reached instead.
"""
import math
import time
from dataclasses import dataclass

from evaluator.stats.intervals import median_precision


@dataclass(frozen=True)
class Budget:
    min_iterations: int
    min_duration_s: float
    precision: float        # relative half-width of the median's 95% interval
    max_time_s: float       # the cap: stop here whether or not the precision was reached
    max_iterations: int     # bounds the samples kept for very fast engines


def sample(step, headline: tuple[str, ...], budget: Budget, clock=time.monotonic, progress=None) -> tuple[list, dict]:
    """Call step(room) -> [{metric: value}, ...] (one sample or a few timed back to back, at
    most `room`: what the sample cap leaves) until the budget says stop; (samples, validity).

    Precision is checked at geometrically spaced counts (every 5% more samples), so checking
    costs little however long the loop runs."""
    runs, t0, next_check = [], clock(), budget.min_iterations
    reached = {m: math.inf for m in headline}
    stopped = "time cap"
    while True:
        runs += step(budget.max_iterations - len(runs))
        elapsed = clock() - t0
        if progress:
            progress(len(runs))
        minimums = len(runs) >= budget.min_iterations and elapsed >= budget.min_duration_s
        if minimums and len(runs) >= next_check:
            next_check = len(runs) + max(1, len(runs) // 20)
            reached = {m: median_precision([r[m] for r in runs if r[m] is not None]) for m in headline}
            if all(p <= budget.precision for p in reached.values()):
                stopped = "precision reached"
                break
        if minimums and elapsed >= budget.max_time_s:  # the minimums always run: a slow engine's too
            break
        if len(runs) >= budget.max_iterations:
            stopped = "request cap"
            break
    duration = clock() - t0
    if stopped != "precision reached":  # the last look may predate the last samples
        reached = {m: median_precision([r[m] for r in runs if r[m] is not None]) for m in headline}
    return runs, verdict(len(runs), duration, reached, budget, stopped)


def verdict(n: int, duration_s: float, reached: dict, budget: Budget, stopped: str) -> dict:
    rules = [{"rule": f"at least {budget.min_iterations} requests", "met": n >= budget.min_iterations, "value": f"{n}"}]
    if budget.min_duration_s > 0:
        rules.append({"rule": f"at least {budget.min_duration_s:g} s", "met": duration_s >= budget.min_duration_s,
                      "value": f"{duration_s:.2f} s"})
    for metric, p in reached.items():
        rules.append({"rule": f"{metric} median within ±{100 * budget.precision:g}% (95% interval)",
                      "met": p <= budget.precision, "value": "no interval yet" if math.isinf(p) else f"±{100 * p:.2f}%"})
    valid = all(r["met"] for r in rules)
    return {"valid": valid, "rules": rules, "stopped_by": stopped, "iterations": n, "duration_s": duration_s,
            "precision": budget.precision, "max_time_s": budget.max_time_s}


def explain(validity: dict) -> str:
    """One line: every rule that failed, with what was reached, and how the loop ended."""
    failed = [f"{r['rule']}: No ({r['value']})" for r in validity["rules"] if not r["met"]]
    return (f"INVALID after {validity['iterations']} requests in {validity['duration_s']:.1f} s "
            f"(stopped by the {validity['stopped_by']}): " + "; ".join(failed))


def print_rules(validity: dict) -> list[str]:
    """LoadGen-style lines: 'Result is : VALID' then each rule with Yes/No."""
    lines = [f"Result is : {'VALID' if validity['valid'] else 'INVALID'}"]
    lines += [f"  {r['rule']}: {'Yes' if r['met'] else 'NO'} ({r['value']})" for r in validity["rules"]]
    return lines

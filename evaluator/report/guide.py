"""The decision guide: for each target, which measured configuration to deploy, and why each
other one loses. Rules, in order, the first that fails is the reason given:

1. it was measured (a failed or unsupported configuration says why not);
2. it fits the memory budget (peak device memory on a GPU, peak RSS on a CPU; the budget
   defaults to the target's memory);
3. it does not FAIL the quality gate at `max_quality_loss_pct` (the gate's own allowed loss:
   one number for both). INCONCLUSIVE stays a candidate, and says so wherever it appears;
4. its p95 end-to-end latency meets `max_latency_ms` (when given; a p95 the sample cannot
   support does not meet it);
then the best by the objective, with a winner named only when its advantage's 95% interval
(the ratio of the two medians) excludes 1. Otherwise the leaders are tied within noise, and
the tie is broken by less memory, then less quality loss, which the guide says.

Constraints are options of `just eval` (stored in run.json) and of `just report`.
"""
from dataclasses import asdict, dataclass

from evaluator.errors import UserError
from evaluator.report.configs import Config, reference_for
from evaluator.stats.intervals import ratio_interval

OBJECTIVES = {
    # name: (its estimate, its 95% interval, higher is better, how it is named in a sentence, unit)
    "decode": (lambda c: c.decode_tokens_per_s, lambda c: c.interval("decode_tokens_per_s"), True,
               "median decode speed", "tokens/s"),
    "latency": (lambda c: c.e2e_ms["p50"], lambda c: c.e2e_ms["p50_ci"], False, "median end-to-end latency", "ms"),
    "throughput": (lambda c: c.throughput_tokens_per_s, lambda c: c.throughput_ci, True,
                   "best batched throughput (median)", "tokens/s"),
    # One reading per cell: no interval, so only equal readings tie.
    "memory": (lambda c: c.peak_memory_bytes and c.peak_memory_bytes / 1e9,
               lambda c: c.peak_memory_bytes and [c.peak_memory_bytes / 1e9] * 2, False, "peak memory", "GB"),
    # One of the swept rates (`--scenarios serving --slo ...`): likewise, only equal rates tie.
    "goodput": (lambda c: c.rows.value("serving_max_rate_within_slo"),
                lambda c: [c.rows.value("serving_max_rate_within_slo")] * 2, True, "max requests/s within the SLO",
                "requests/s"),
}


@dataclass(frozen=True)
class Constraints:
    memory_budget_gb: float | None = None   # None: the target's own memory
    max_quality_loss_pct: float = 1.0       # also the quality gate's allowed loss
    max_latency_ms: float | None = None     # on p95 end-to-end latency at batch 1
    objective: str = "decode"

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise UserError(f"unknown objective {self.objective!r}; valid: {', '.join(OBJECTIVES)}")
        for name, flag in (("memory_budget_gb", "--memory-budget"), ("max_latency_ms", "--max-latency-ms")):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UserError(f"{flag} must be > 0, got {value:g}")
        if self.max_quality_loss_pct < 0:
            raise UserError(f"--max-quality-loss must be >= 0 percent, got {self.max_quality_loss_pct}")

    @property
    def margin(self) -> float:
        return self.max_quality_loss_pct / 100

    def as_dict(self) -> dict:
        return asdict(self)


def _fmt(value: float, unit: str) -> str:
    return f"{value:,.3g} {unit}" if value < 100 else f"{value:,.0f} {unit}"


def loss_text(loss: dict | None) -> str:
    if not loss:
        return "quality loss unknown"
    lo, hi = (100 * x for x in loss["ci"])
    return f"quality loss {100 * loss['loss']:+.2f}% [{lo:+.2f}, {hi:+.2f}] ({loss['verdict']})"


def _ratio(a: Config, b: Config, objective: str) -> dict | None:
    read, ci, higher, _, _ = OBJECTIVES[objective]
    # Oriented so that > 1 means `a` is better.
    if higher:
        return ratio_interval(read(a), ci(a), read(b), ci(b))
    return ratio_interval(read(b), ci(b), read(a), ci(a))


def _ratio_text(r: dict | None) -> str:
    return "no interval" if r is None else f"{r['ratio']:.3g}x [{r['ci'][0]:.3g}, {r['ci'][1]:.3g}]"


def decide(configs: list[Config], target: dict, reference: str | None, constraints: Constraints) -> dict:
    """{"target", "budget_gb", "winner": label|None, "why", "tie": bool, "rows": [{"label", "verdict", "reason"}]}"""
    mine = [c for c in configs if c.target_name == target["name"]]
    ref = reference_for(configs, reference, target["name"])
    budget = constraints.memory_budget_gb or target.get("memory_gb")
    read, _, higher, what, unit = OBJECTIVES[constraints.objective]
    quality_known = any(c.perplexity is not None for c in mine)
    margin = constraints.margin
    rows, survivors = [], []
    for c in mine:
        reason = None
        gate = c.gate(margin)
        p95 = c.e2e_ms["p95"]
        if not c.measured:
            reason = f"not measured ({c.why_not})"
        elif budget and c.peak_memory_bytes and c.peak_memory_bytes / 1e9 > budget:
            reason = f"needs {c.peak_memory_bytes / 1e9:.3g} GB, over the {budget:g} GB budget"
        elif quality_known and c.perplexity is None:
            reason = "quality not measured (failed or left out), so its loss is unknown"
        elif gate and gate["verdict"] == "FAIL":
            reason = "fails the quality gate: " + "; ".join(gate["reasons"])
        elif constraints.max_latency_ms and (p95 is None or p95 > constraints.max_latency_ms):
            reason = (f"p95 latency {p95:.3g} ms, over the {constraints.max_latency_ms:g} ms objective" if p95 else
                      f"p95 latency not supported by the sample (needs {c.e2e_ms['p95_needs']} requests)"
                      if c.e2e_ms["p95_needs"] else "latency not measured")
        elif read(c) is None:
            reason = f"{what} not measured"
        if reason:
            rows.append({"label": c.label, "verdict": "excluded", "reason": reason})
        else:
            survivors.append(c)
    notes = []
    if not quality_known:
        notes.append("no quality was measured in this run, so quality loss is not part of the decision")
    result = {"target": target["name"], "budget_gb": budget, "notes": notes, "constraints": constraints.as_dict()}
    if not survivors:
        return dict(result, winner=None, tie=False, why="no measured configuration meets every constraint", rows=rows)
    survivors.sort(key=lambda c: read(c), reverse=higher)
    leader = survivors[0]
    tied = [leader] + [c for c in survivors[1:] if not ((r := _ratio(leader, c, constraints.objective)) and r["excludes_one"])]

    def loss_key(c):
        loss = c.quality_loss(margin) if c is not ref else None
        return loss["loss"] if loss else 0.0

    best = min(tied, key=lambda c: (c.peak_memory_bytes or float("inf"), loss_key(c)))
    for c in survivors:
        if c is best:
            continue
        r = _ratio(best, c, constraints.objective)
        tie = c in tied
        rows.append({"label": c.label, "verdict": "tied within noise" if tie else "meets the constraints",
                     "reason": f"{what} {_fmt(read(c), unit)} vs {_fmt(read(best), unit)}: the winner is "
                               f"{_ratio_text(r)} as good" + (" (the interval includes 1)" if tie else "")
                               + ("" if c is ref else f"; {loss_text(c.quality_loss(margin))}")
                               + (f"; {c.timing_invalid}" if c.timing_invalid else "")})
    why = f"best {what} ({_fmt(read(best), unit)}) of the {len(survivors)} configuration(s) that " + \
        (f"fit {budget:g} GB" if budget else "were measured") + \
        (f", do not fail the {constraints.max_quality_loss_pct:g}% quality gate" if quality_known else "") + \
        (f" and meet p95 latency {constraints.max_latency_ms:g} ms" if constraints.max_latency_ms else "")
    if len(tied) > 1:
        others = ", ".join(c.label for c in tied if c is not best)
        why = (f"tied within noise on {what} with {others} (every ratio's 95% interval includes 1); chosen for "
               + ("less memory" if len({c.peak_memory_bytes for c in tied}) > 1 else "less quality loss"))
    elif len(survivors) > 1:
        why += f"; ahead of the next by {_ratio_text(_ratio(best, survivors[1], constraints.objective))}"
    if best is not ref and quality_known:
        why += f"; {loss_text(best.quality_loss(margin))}"
    if best.timing_invalid:
        why += f"; {best.timing_invalid}, so its interval is wider"
    rows.sort(key=lambda r: r["verdict"] == "excluded")
    return dict(result, winner=best.label, tie=len(tied) > 1, why=why, rows=rows)

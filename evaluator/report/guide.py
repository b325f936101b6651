"""The decision guide: for each target, which measured configuration to deploy, and why each
other one loses. Rules, in order, the first that fails is the reason given:

1. it was measured (a failed or unsupported configuration says why not);
2. it fits the memory budget (peak device memory on a GPU, peak RSS on a CPU; the budget
   defaults to the target's memory);
3. it passed the quality gate and loses at most `max_quality_loss_pct` against the reference
   on that target: HellaSwag acc_norm down, or rolling perplexity up, in percent;
4. its p95 end-to-end latency meets `max_latency_ms` (when given);
then the best by the objective wins, and every other survivor loses on the objective.

Constraints are options of `just eval` (stored in run.json) and of `just report`.
"""
from dataclasses import asdict, dataclass

from evaluator.errors import UserError
from evaluator.report.configs import Config, reference_for

OBJECTIVES = {
    # name: (what it reads, higher is better, how it is named in a sentence, unit)
    "decode": (lambda c: c.decode_tokens_per_s, True, "decode speed", "tokens/s"),
    "latency": (lambda c: c.e2e_ms["p50"], False, "p50 end-to-end latency", "ms"),
    "throughput": (lambda c: c.throughput_tokens_per_s, True, "best batched throughput", "tokens/s"),
    "memory": (lambda c: c.peak_memory_bytes and c.peak_memory_bytes / 1e9, False, "peak memory", "GB"),
}


@dataclass(frozen=True)
class Constraints:
    memory_budget_gb: float | None = None   # None: the target's own memory
    max_quality_loss_pct: float = 1.0
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

    def as_dict(self) -> dict:
        return asdict(self)


def quality_loss_pct(cfg: Config, ref: Config | None) -> float | None:
    """The larger of the acc_norm drop and the perplexity rise against the reference, in %."""
    if ref is None or cfg.perplexity is None or ref.perplexity is None:
        return None
    losses = [100 * (cfg.perplexity / ref.perplexity - 1)]
    if cfg.acc_norm is not None and ref.acc_norm:
        losses.append(100 * (1 - cfg.acc_norm / ref.acc_norm))
    return max(losses)


def _fmt(value: float, unit: str) -> str:
    return f"{value:,.3g} {unit}" if value < 100 else f"{value:,.0f} {unit}"


def decide(configs: list[Config], target: dict, reference: str | None, constraints: Constraints) -> dict:
    """{"target", "budget_gb", "winner": label|None, "why": str, "rows": [{"label", "verdict", "reason"}]}"""
    mine = [c for c in configs if c.target_name == target["name"]]
    ref = reference_for(configs, reference, target["name"])
    budget = constraints.memory_budget_gb or target.get("memory_gb")
    read, higher, what, unit = OBJECTIVES[constraints.objective]
    quality_known = any(c.perplexity is not None for c in mine)
    rows, survivors = [], []
    for c in mine:
        reason = None
        loss = quality_loss_pct(c, ref)
        if not c.measured:
            reason = f"not measured ({c.why_not})"
        elif budget and c.peak_memory_bytes and c.peak_memory_bytes / 1e9 > budget:
            reason = f"needs {c.peak_memory_bytes / 1e9:.3g} GB, over the {budget:g} GB budget"
        elif quality_known and c.perplexity is None:
            reason = "quality not measured (failed or left out), so its loss is unknown"
        elif c.gated:
            reason = "fails the quality gate: " + "; ".join(c.gated)
        elif loss is not None and loss > constraints.max_quality_loss_pct:
            reason = f"loses {loss:.2f}% quality, over the {constraints.max_quality_loss_pct:g}% allowed"
        elif constraints.max_latency_ms and (c.e2e_ms["p95"] is None or c.e2e_ms["p95"] > constraints.max_latency_ms):
            p95 = c.e2e_ms["p95"]
            reason = (f"p95 latency {p95:.3g} ms, over the {constraints.max_latency_ms:g} ms objective" if p95
                      else "latency not measured")
        elif read(c) is None:
            reason = f"{what} not measured"
        if reason:
            rows.append({"label": c.label, "verdict": "excluded", "reason": reason})
        else:
            survivors.append(c)
    notes = []
    if not quality_known:
        notes.append("no quality was measured in this run, so quality loss is not part of the decision")
    if not survivors:
        return {"target": target["name"], "budget_gb": budget, "winner": None, "notes": notes,
                "why": "no measured configuration meets every constraint", "rows": rows,
                "constraints": constraints.as_dict()}
    survivors.sort(key=lambda c: read(c), reverse=higher)
    best = survivors[0]
    for c in survivors[1:]:
        ratio = read(c) / read(best) if read(best) else float("nan")
        rows.append({"label": c.label, "verdict": "meets the constraints",
                     "reason": f"{what} {_fmt(read(c), unit)} vs {_fmt(read(best), unit)} ({ratio:.2f}x the winner)"})
    loss = quality_loss_pct(best, ref)
    why = (f"best {what} ({_fmt(read(best), unit)}) of the {len(survivors)} configuration(s) that "
           + (f"fit {budget:g} GB" if budget else "were measured")
           + (f", lose at most {constraints.max_quality_loss_pct:g}% quality (this one: {loss:+.2f}%)"
              if loss is not None else "")
           + (f" and meet p95 latency {constraints.max_latency_ms:g} ms" if constraints.max_latency_ms else ""))
    rows.sort(key=lambda r: r["verdict"] == "excluded")
    return {"target": target["name"], "budget_gb": budget, "winner": best.label, "why": why, "rows": rows,
            "notes": notes, "constraints": constraints.as_dict()}

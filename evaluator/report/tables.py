"""The report's tables: the status matrix and the comparison table in the article's shape.

Every text that came from a result is escaped here, at the point it becomes HTML.
"""
from html import escape

from evaluator.measure import sampling
from evaluator.report.configs import Config, reference_for


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}" if abs(x) < 1 else f"{x:.2f}"


def _gb(b):
    return None if b is None else b / 1e9


def _delta(value, base, higher_is_better: bool, name: str) -> str | None:
    if value is None or base in (None, 0):
        return None
    pct = 100 * (value / base - 1)
    good = (pct > 0) == higher_is_better
    cls = "good" if abs(pct) >= 0.05 and good else ("worse" if abs(pct) >= 0.05 else "")
    return f'<span class="{cls}">{pct:+.1f}% {escape(name)}</span>'


def deltas(c: Config, base: Config | None) -> str:
    """"-47% VRAM, +37% speed, -0.3% acc_norm" against the baseline row, as the article writes it."""
    if base is None:
        return "–"
    if c is base:
        return "baseline"
    mem = "VRAM" if c.target.get("accelerator") == "cuda" else "memory"
    speed = (c.decode_tokens_per_s, base.decode_tokens_per_s)
    # Quality changes come from the gate: the variant and the reference on the same items and
    # windows. Their raw scores may cover different items (the budget stops each variant apart).
    gate = c.gate() or {}
    acc, ppl = (gate.get("hellaswag") or {}).get("acc_norm"), gate.get("perplexity")
    parts = [_delta(c.peak_memory_bytes, base.peak_memory_bytes, False, mem),
             _delta(*speed, True, "speed"),
             _delta(1 - acc["loss"], 1, True, "acc_norm") if acc else None,
             _delta(ppl["ratio"], 1, False, "ppl") if ppl else None]
    return ", ".join(p for p in parts if p) or "–"


STATUS_CLASS = {"ok": "ok", "unsupported": "unsupported"}


def status_matrix(configs: list[Config], targets: list[str], scenarios: list[str], margin: float) -> str:
    """Rows: backend variants. Columns: target x scenario. A cell: its status, why, its log tail."""
    rows = {}
    for c in configs:
        rows.setdefault(c.label, {})[c.target_name] = c
    head = "".join(f'<th colspan="{len(scenarios)}">{escape(t)}</th>' for t in targets)
    sub = "".join(f"<th>{escape(s)}</th>" for _ in targets for s in scenarios)
    body = ""
    for label, by_target in rows.items():
        tds = ""
        for t in targets:
            cfg = by_target.get(t)
            for s in scenarios:
                cell = cfg.cells.get(s) if cfg else None
                if cell is None:
                    tds += '<td class="l unsupported">not run</td>'
                    continue
                status = cell["status"]
                extra = ""
                gate = cfg.gate(margin) if s == "quality" else None
                if status == "ok" and gate:
                    status = f"ok · {gate['verdict']}"
                    extra = "".join(f'<div class="why">{escape(r)}</div>' for r in gate["reasons"])
                validity = cell.get("validity") or {}
                if validity and not validity.get("valid", True):
                    status = "ok · INVALID"
                    extra += "".join(f'<div class="why">{escape(line)}</div>' for line in sampling.print_rules(validity))
                elif validity.get("valid") and cell["scenario"]["name"] == "latency":
                    reached = ", ".join(f'{r["rule"].split(" median")[0]} {r["value"]}' for r in validity["rules"]
                                        if " median " in r["rule"])
                    extra += (f'<div class="why">VALID: {validity["iterations"]} requests in '
                              f'{validity["duration_s"]:.1f} s; medians {escape(reached)}</div>')
                check = cell.get("check") or {}
                if check.get("matches_reference") is True:
                    extra += '<div class="why">✔ greedy text matches the reference</div>'
                if check.get("matches_reference") is False:
                    extra += f'<div class="why">greedy text differs from the reference at char {check.get("first_divergence_char")}</div>'
                if cell.get("reason"):
                    extra += f'<div class="why">{escape(cell["reason"])}</div>'
                if cell.get("log_tail"):
                    extra += f'<details><summary>log tail</summary><pre>{escape(cell["log_tail"])}</pre></details>'
                cls = ("gated" if "FAIL" in status or "INVALID" in status else "inconclusive" if "INCONCLUSIVE" in status
                       else STATUS_CLASS.get(cell["status"], "bad"))
                tds += f'<td class="l {cls}" title="{escape(cell["cell_id"])}"><b>{escape(status)}</b>{extra}</td>'
        body += f'<tr><td class="l">{escape(label)}</td>{tds}</tr>'
    return (f'<table class="matrix"><tr><th class="l" rowspan="2">backend · variant</th>{head}</tr>'
            f"<tr>{sub}</tr>{body}</table>")


def _ci_text(value, ci) -> str:
    """ "±1.2%" for a symmetric-enough interval, the interval itself in the cell's title."""
    if value is None or not ci or not value:
        return ""
    half = 100 * (ci[1] - ci[0]) / 2 / abs(value)
    return f'<small class="ci" title="95% interval [{fmt(ci[0])}, {fmt(ci[1])}]"> ±{half:.2g}%</small>'


def _p95(c: Config) -> str:
    if c.e2e_ms["p95"] is not None:
        return fmt(c.e2e_ms["p95"]) + _ci_text(c.e2e_ms["p95"], c.e2e_ms["p95_ci"])
    need = c.e2e_ms["p95_needs"]
    return f'<small title="a p95 needs {need} requests to be bounded">needs {need} requests</small>' if need else "–"


COLUMNS = [
    # (header, its value and 95% interval as HTML, unit shown under the header)
    ("peak memory", lambda c: fmt(_gb(c.peak_memory_bytes)), "GB, one reading"),
    ("model file", lambda c: fmt(_gb(c.model_bytes)), "GB"),
    ("decode", lambda c: fmt(c.decode_tokens_per_s) + _ci_text(c.decode_tokens_per_s, c.interval("decode_tokens_per_s")),
     "tokens/s, median"),
    ("throughput", lambda c: fmt(c.throughput_tokens_per_s) + _ci_text(c.throughput_tokens_per_s, c.throughput_ci),
     "tokens/s, best batch"),
    ("latency p50", lambda c: fmt(c.e2e_ms["p50"]) + _ci_text(c.e2e_ms["p50"], c.e2e_ms["p50_ci"]), "ms"),
    ("p95", _p95, "ms"),
    ("TTFT p50", lambda c: fmt(c.ttft_ms) + _ci_text(c.ttft_ms, c.interval("ttft_ms")), "ms"),
    ("energy", lambda c: fmt(c.energy_j_per_token), "J/token"),
    ("HellaSwag acc_norm", lambda c: fmt(c.acc_norm) + (f"<small> ({c.acc_norm_items:,} items)</small>" if c.acc_norm_items else ""), ""),
    ("perplexity", lambda c: fmt(c.perplexity) + _ci_text(c.perplexity, c.perplexity_ci), "WikiText-2"),
    ("KL vs ref", lambda c: fmt(c.kl_mean), "nats"),
    ("top-1 agree", lambda c: fmt(c.top1_agreement), ""),
]


def _quality_cell(c: Config, base: Config | None, margin: float) -> str:
    if c is base:
        return "reference"
    gate = c.gate(margin)
    if not gate:
        error = (c.cell("quality") or {}).get("quality_gate_error")
        return f'<small class="gated">{escape(error)}</small>' if error else "–"
    cls = {"FAIL": "gated", "INCONCLUSIVE": "inconclusive", "PASS": "ok"}[gate["verdict"]]
    parts = []
    acc = (gate.get("hellaswag") or {}).get("acc_norm")
    if acc:
        lo, hi = (100 * x for x in acc["loss_ci"])
        parts.append(f"acc_norm {100 * acc['loss']:+.2f}% [{lo:+.2f}, {hi:+.2f}], "
                     f"+{acc['gained']}/−{acc['lost']} items, McNemar p {acc['mcnemar_p']:.2g}")
    ppl = gate.get("perplexity")
    if ppl:
        lo, hi = (100 * x for x in ppl["loss_ci"])
        parts.append(f"perplexity {100 * ppl['loss']:+.2f}% [{lo:+.2f}, {hi:+.2f}]")
    return (f'<b class="{cls}">{gate["verdict"]}</b><br><small>{escape("; ".join(parts))} '
            f'(allowed {100 * margin:g}%)</small>')


def comparison(configs: list[Config], target: str, reference: str | None, margin: float) -> str:
    """One row per configuration on a target, the reference first, deltas against it."""
    mine = [c for c in configs if c.target_name == target and c.measured]
    if not mine:
        return "<p>No configuration was measured on this target.</p>"
    base = reference_for(configs, reference, target)
    mine.sort(key=lambda c: c is not base)
    head = "".join(f'<th>{escape(h)}<br><small>{escape(u)}</small></th>' for h, _, u in COLUMNS)
    body = ""
    for c in mine:
        tds = "".join(f'<td data-metric="{escape(h)}">{read(c)}</td>' for h, read, _ in COLUMNS)
        flag = (f'<br><small class="gated" title="{escape(c.timing_invalid)}">timing INVALID: precision not reached</small>'
                if c.timing_invalid else "")
        body += (f'<tr><td class="l">{escape(c.label)}{flag}</td>{tds}<td class="l">{_quality_cell(c, base, margin)}</td>'
                 f'<td class="l">{deltas(c, base)}</td></tr>')
    return (f'<table class="compare"><tr><th class="l">configuration</th>{head}<th class="l">quality gate<br>'
            f'<small>loss vs reference, 95% interval</small></th><th class="l">vs baseline</th></tr>{body}</table>')

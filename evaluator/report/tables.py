"""The report's tables: the status matrix and the comparison table in the article's shape.

Every text that came from a result is escaped here, at the point it becomes HTML.
"""
from html import escape

from evaluator.report.configs import Config, reference_for
from evaluator.report.guide import quality_loss_pct


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
    """"-47% VRAM, +37% speed, -0.3% acc" against the baseline row, as the article writes it."""
    if base is None:
        return "–"
    if c is base:
        return "baseline"
    mem = "VRAM" if c.target.get("accelerator") == "cuda" else "memory"
    speed = (c.decode_tokens_per_s, base.decode_tokens_per_s)
    parts = [_delta(c.peak_memory_bytes, base.peak_memory_bytes, False, mem),
             _delta(*speed, True, "speed"),
             _delta(c.acc_norm, base.acc_norm, True, "acc_norm"),
             _delta(c.perplexity, base.perplexity, False, "ppl")]
    return ", ".join(p for p in parts if p) or "–"


STATUS_CLASS = {"ok": "ok", "unsupported": "unsupported"}


def status_matrix(configs: list[Config], targets: list[str], scenarios: list[str]) -> str:
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
                gate = cell.get("quality_gate")
                if status == "ok" and gate and not gate["passed"]:
                    status = "ok · GATED"
                    extra = f'<div class="why">{escape("; ".join(gate["reasons"]))}</div>'
                check = cell.get("check") or {}
                if check.get("matches_reference") is True:
                    extra += '<div class="why">✔ greedy text matches the reference</div>'
                if check.get("matches_reference") is False:
                    extra += f'<div class="why">greedy text differs from the reference at char {check.get("first_divergence_char")}</div>'
                if cell.get("validity") and not cell["validity"].get("valid", True):
                    extra += f'<div class="why">{escape("; ".join(cell["validity"]["reasons"]))}</div>'
                if cell.get("reason"):
                    extra += f'<div class="why">{escape(cell["reason"])}</div>'
                if cell.get("log_tail"):
                    extra += f'<details><summary>log tail</summary><pre>{escape(cell["log_tail"])}</pre></details>'
                cls = "gated" if "GATED" in status else STATUS_CLASS.get(status, "bad")
                tds += f'<td class="l {cls}" title="{escape(cell["cell_id"])}"><b>{escape(status)}</b>{extra}</td>'
        body += f'<tr><td class="l">{escape(label)}</td>{tds}</tr>'
    return (f'<table class="matrix"><tr><th class="l" rowspan="2">backend · variant</th>{head}</tr>'
            f"<tr>{sub}</tr>{body}</table>")


COLUMNS = [
    # (header, how to read it from a Config, unit shown under the header)
    ("peak memory", lambda c: _gb(c.peak_memory_bytes), "GB"),
    ("model file", lambda c: _gb(c.model_bytes), "GB"),
    ("decode", lambda c: c.decode_tokens_per_s, "tokens/s"),
    ("throughput", lambda c: c.throughput_tokens_per_s, "tokens/s, best batch"),
    ("latency p50", lambda c: c.e2e_ms["p50"], "ms"),
    ("p95", lambda c: c.e2e_ms["p95"], "ms"),
    ("p99", lambda c: c.e2e_ms["p99"], "ms"),
    ("TTFT p50", lambda c: c.ttft_ms, "ms"),
    ("energy", lambda c: c.energy_j_per_token, "J/token"),
    ("HellaSwag acc_norm", lambda c: c.acc_norm, ""),
    ("perplexity", lambda c: c.perplexity, "WikiText-2"),
    ("KL vs ref", lambda c: c.kl_mean, "nats"),
    ("top-1 agree", lambda c: c.top1_agreement, ""),
]


def comparison(configs: list[Config], target: str, reference: str | None) -> str:
    """One row per configuration on a target, the reference first, deltas against it."""
    mine = [c for c in configs if c.target_name == target and c.measured]
    if not mine:
        return "<p>No configuration was measured on this target.</p>"
    base = reference_for(configs, reference, target)
    mine.sort(key=lambda c: c is not base)
    head = "".join(f'<th>{escape(h)}<br><small>{escape(u)}</small></th>' for h, _, u in COLUMNS)
    body = ""
    for c in mine:
        tds = "".join(f'<td data-metric="{escape(h)}">{fmt(read(c))}</td>' for h, read, _ in COLUMNS)
        loss = quality_loss_pct(c, base)
        flag = ' <span class="gated">GATED</span>' if c.gated else ""
        body += (f'<tr><td class="l">{escape(c.label)}{flag}</td>{tds}<td class="l">{deltas(c, base)}'
                 f'{"" if loss is None or c is base else f"<br><small>quality loss {loss:+.2f}%</small>"}</td></tr>')
    return (f'<table class="compare"><tr><th class="l">configuration</th>{head}<th class="l">vs baseline</th></tr>'
            f"{body}</table>")

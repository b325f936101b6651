"""The report's tables as data: the status matrix and the comparison table in the article's
shape. They hold text and numbers only; templates/report.html.j2 turns them into HTML, where
Jinja2 escapes every value (nothing here writes markup).

Every number of the comparison table is read from the export table (`Config.rows`: the rows
`just export` writes for the configuration), so the two cannot disagree. What is not a
measurement stays with the cells: the status matrix (statuses, reasons, log tails), the
quality verdict in words, and how many requests an unbounded p95 needs.
"""
from dataclasses import dataclass

from evaluator.measure import sampling
from evaluator.report import export
from evaluator.report.configs import Config, reference_for


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}" if abs(x) < 1 else f"{x:.2f}"


def _gb(b):
    return None if b is None else b / 1e9


@dataclass(frozen=True)
class Shown:
    """One number as a table shows it: its text, "±x%" of its 95% interval (the interval itself
    as the tooltip), and a small note beside it."""
    text: str
    half_pct: str = ""
    interval: str = ""
    note: str = ""
    note_title: str = ""


def shown(value, ci=None, note: str = "", note_title: str = "") -> Shown:
    if value is None or not ci or not value:
        return Shown(fmt(value), note=note, note_title=note_title)
    half = 100 * (ci[1] - ci[0]) / 2 / abs(value)
    return Shown(fmt(value), f"{half:.2g}", f"[{fmt(ci[0])}, {fmt(ci[1])}]", note, note_title)


def _shown(rows: export.Rows, metric: str, statistic: str = "", scale: float = 1.0, note=None) -> Shown:
    """The first row of `metric` (and statistic) as a table shows it, with its interval."""
    r = rows.first(metric, statistic)
    if r is None:
        return Shown(fmt(None))
    ci = (r["ci_low"] / scale, r["ci_high"] / scale) if r["ci_low"] is not None else None
    return shown(r["value"] / scale, ci, note(r) if note else "")


def _energy(rows: export.Rows) -> Shown:
    """Joules per token with its interval; the share above idle and the methods on hover."""
    total = rows.first("energy_per_token", "total: ")
    if total is None:
        return Shown(fmt(None))
    above = rows.value("energy_per_token", "above idle")
    return shown(total["value"], (total["ci_low"], total["ci_high"]) if total["ci_low"] is not None else None,
                 f"{fmt(above)} above idle" if above is not None else "", total["statistic"].removeprefix("total: "))


@dataclass(frozen=True)
class Delta:
    css: str   # "good", "worse" or ""
    text: str  # "+37.0% speed"


def _delta(value, base, higher_is_better: bool, name: str) -> Delta | None:
    if value is None or base in (None, 0):
        return None
    pct = 100 * (value / base - 1)
    good = (pct > 0) == higher_is_better
    css = "good" if abs(pct) >= 0.05 and good else ("worse" if abs(pct) >= 0.05 else "")
    return Delta(css, f"{pct:+.1f}% {name}")


def deltas(c: Config, base: Config | None) -> list[Delta]:
    """"-47% VRAM, +37% speed, -0.3% acc_norm" against the baseline row, as the article writes it."""
    if base is None:
        return [Delta("", "–")]
    if c is base:
        return [Delta("", "baseline")]
    mine, theirs = c.rows, base.rows
    mem = "VRAM" if c.target.get("accelerator") == "cuda" else "memory"
    # Quality changes come from the gate: the variant and the reference on the same items and
    # windows. Their raw scores may cover different items (the budget stops each variant apart).
    gate = c.gate() or {}
    acc, ppl = (gate.get("hellaswag") or {}).get("acc_norm"), gate.get("perplexity")
    parts = [_delta(c.peak_memory_bytes, base.peak_memory_bytes, False, mem),
             _delta(mine.value("decode_tokens_per_s", "median"), theirs.value("decode_tokens_per_s", "median"), True, "speed"),
             _delta(1 - acc["loss"], 1, True, "acc_norm") if acc else None,
             _delta(ppl["ratio"], 1, False, "ppl") if ppl else None]
    return [p for p in parts if p] or [Delta("", "–")]


STATUS_CLASS = {"ok": "ok", "unsupported": "unsupported"}


def status_matrix(configs: list[Config], targets: list[str], scenarios: list[str], margin: float) -> list[dict]:
    """Rows: backend variants. Columns: target x scenario. A cell: its status, why, its log tail.
    [{"label", "cells": [{"css", "status", "title", "why": [str], "log_tail"}]}]"""
    rows = {}
    for c in configs:
        rows.setdefault(c.label, {})[c.target_name] = c
    out = []
    for label, by_target in rows.items():
        tds = []
        for t in targets:
            cfg = by_target.get(t)
            for s in scenarios:
                cell = cfg.cells.get(s) if cfg else None
                tds.append(_matrix_cell(cell, cfg, s, margin) if cell else
                           {"css": "unsupported", "status": "not run", "title": "", "why": [], "log_tail": None})
        out.append({"label": label, "cells": tds})
    return out


def _matrix_cell(cell: dict, cfg: Config, scenario: str, margin: float) -> dict:
    status, why = cell["status"], []
    gate = cfg.gate(margin) if scenario == "quality" else None
    if status == "ok" and gate:
        status = f"ok · {gate['verdict']}"
        why += gate["reasons"]
    validity = cell.get("validity") or {}
    if validity and not validity.get("valid", True):
        status = "ok · INVALID"
        why += sampling.print_rules(validity)
    elif validity.get("valid") and cell["scenario"]["name"] == "latency":
        reached = ", ".join(f'{r["rule"].split(" median")[0]} {r["value"]}' for r in validity["rules"] if " median " in r["rule"])
        why.append(f'VALID: {validity["iterations"]} requests in {validity["duration_s"]:.1f} s; medians {reached}')
    check = cell.get("check") or {}
    if check.get("matches_reference") is True:
        why.append("✔ greedy text matches the reference")
    if check.get("matches_reference") is False:
        why.append(f'greedy text differs from the reference at char {check.get("first_divergence_char")}')
    if cell.get("reason"):
        why.append(cell["reason"])
    css = ("gated" if "FAIL" in status or "INVALID" in status else "inconclusive" if "INCONCLUSIVE" in status
           else STATUS_CLASS.get(cell["status"], "bad"))
    return {"css": css, "status": status, "title": cell["cell_id"], "why": why, "log_tail": cell.get("log_tail")}


def _p95(c: Config) -> Shown:
    if c.rows.first("e2e_ms", "p95"):
        return _shown(c.rows, "e2e_ms", "p95")
    need = c.e2e_ms["p95_needs"]
    return Shown("", note=f"needs {need} requests", note_title=f"a p95 needs {need} requests to be bounded") if need else Shown("–")


def _items(r: dict) -> str:
    return f"({r['n']:,} items)" if r.get("n") else ""


COLUMNS = [
    # (header, its value and 95% interval from the configuration's export rows, unit shown under the header)
    ("peak memory", lambda c: shown(_gb(c.peak_memory_bytes)), "GB, one reading"),
    ("model file", lambda c: _shown(c.rows, "model_file", "size", 1e9), "GB"),
    ("decode", lambda c: _shown(c.rows, "decode_tokens_per_s", "median"), "tokens/s, median"),
    ("throughput", lambda c: _shown(c.rows, "tokens_per_s_best_batch"), "tokens/s, best batch"),
    ("latency p50", lambda c: _shown(c.rows, "e2e_ms", "median"), "ms"),
    ("p95", _p95, "ms"),
    ("TTFT p50", lambda c: _shown(c.rows, "ttft_ms", "median"), "ms"),
    ("serving", lambda c: _shown(c.rows, "serving_max_rate_within_slo"), "max requests/s within the SLO"),
    ("energy", lambda c: _energy(c.rows), "J/token"),
    ("HellaSwag acc_norm", lambda c: _shown(c.rows, "hellaswag_acc_norm", "share", note=_items), ""),
    ("perplexity", lambda c: _shown(c.rows, "wikitext2_token_perplexity"), "WikiText-2"),
    ("KL vs ref", lambda c: _shown(c.rows, "kl", "mean"), "nats"),
    ("top-1 agree", lambda c: _shown(c.rows, "top1_agreement", "mean"), ""),
]


def _quality_cell(c: Config, base: Config | None, margin: float) -> dict:
    """{"verdict", "css", "detail"}: the gate's verdict and its loss intervals, in words."""
    if c is base:
        return {"verdict": "", "css": "", "detail": "reference"}
    gate = c.gate(margin)
    if not gate:
        error = (c.cell("quality") or {}).get("quality_gate_error")
        return {"verdict": "", "css": "gated", "detail": error or "–"}
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
    return {"verdict": gate["verdict"], "css": {"FAIL": "gated", "INCONCLUSIVE": "inconclusive", "PASS": "ok"}[gate["verdict"]],
            "detail": f"{'; '.join(parts)} (allowed {100 * margin:g}%)"}


BITS_PER_BYTE = ("bits per byte", lambda c: _shown(c.rows, "wikitext2_bits_per_byte"), "WikiText-2, any tokenizer")


def columns(configs: list[Config]) -> list[tuple]:
    """COLUMNS, where the run's models tokenize differently with bits per byte for perplexity:
    a token's perplexity depends on what a token is, a byte's does not."""
    tokenizers = {(c.cell("quality") or {}).get("model", {}).get("tokenizer_sha256") for c in configs if c.cell("quality")}
    if len(tokenizers - {None}) < 2:
        return COLUMNS
    return [BITS_PER_BYTE if header == "perplexity" else (header, read, unit) for header, read, unit in COLUMNS]


def comparison(configs: list[Config], target: str, reference: str | None, margin: float) -> list[dict]:
    """One row per configuration on a target, the reference first, deltas against it:
    [{"label", "timing_invalid", "values": [(header, Shown)], "quality": {...}, "deltas": [Delta]}]"""
    mine = [c for c in configs if c.target_name == target and c.measured]
    base = reference_for(configs, reference, target)
    mine.sort(key=lambda c: c is not base)
    return [{"label": c.label, "timing_invalid": c.timing_invalid,
             "values": [(h, read(c)) for h, read, _ in columns(configs)],
             "quality": _quality_cell(c, base, margin), "deltas": deltas(c, base)} for c in mine]

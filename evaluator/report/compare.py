"""`just compare RUN_A RUN_B`: what changed between two runs, cell by cell, marking only
differences larger than the runs' own noise.

Cells are matched by (backend, variant, target, scenario). A difference is marked CHANGED when:
- timed metrics (latency, TTFT, decode speed, throughput), which keep their samples: the means
  differ by more than 3 standard errors of the difference AND by more than the larger of the
  two runs' own coefficients of variation (a change smaller than one run's scatter is noise);
- HellaSwag accuracy: by more than 1.96 combined standard errors (95%);
- perplexity and KL, deterministic for the same tokens: by more than 0.01% (float reductions);
- peak memory, one reading per cell: by more than 5%;
- status: any change.
Runs that scored different data (HellaSwag subset, perplexity tokens) are not compared on it.
"""
import math
from dataclasses import dataclass


@dataclass
class Row:
    cell: str
    metric: str
    a: object
    b: object
    change_pct: float | None
    changed: bool
    why: str


def _samples_stat(s: dict | None) -> tuple | None:
    if not s or not s.get("n"):
        return None
    return s["mean"], s.get("std", 0.0), s["n"], s.get("cv", 0.0)


def _timed(a: dict | None, b: dict | None) -> tuple[bool, str]:
    sa, sb = _samples_stat(a), _samples_stat(b)
    diff = abs(sa[0] - sb[0])
    se = math.sqrt(sa[1] ** 2 / sa[2] + sb[1] ** 2 / sb[2])
    rel = diff / abs(sa[0]) if sa[0] else float("inf")
    noise_cv = max(sa[3], sb[3])
    changed = diff > 3 * se and rel > noise_cv
    return changed, f"Δ {diff:.4g} vs 3·SE {3 * se:.3g}, |Δ|/mean {100 * rel:.1f}% vs CV {100 * noise_cv:.1f}%"


def _pct(a, b):
    return 100 * (b / a - 1) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a else None


def _get(cell: dict, *path):
    for p in path:
        if not isinstance(cell, dict) or p not in cell:
            return None
        cell = cell[p]
    return cell


TIMED = [("latency", "e2e_ms p50 (mean compared)", ("metrics", "e2e_ms")),
         ("latency", "ttft_ms", ("metrics", "ttft_ms")),
         ("latency", "decode tokens/s", ("metrics", "decode_tokens_per_s"))]


def compare_cells(a: dict, b: dict) -> list[Row]:
    name = f'{a["backend"]}.{a["variant"]}@{a["target"]["name"]} {a["scenario"]["name"]}'
    rows = []
    if a["status"] != b["status"]:
        return [Row(name, "status", a["status"], b["status"], None, True, b.get("reason") or a.get("reason") or "")]
    if a["status"] != "ok":
        return [Row(name, "status", a["status"], b["status"], None, False, "same status")]
    scenario = a["scenario"]["name"]
    for sc, metric, path in TIMED:
        if sc == scenario and _get(a, *path) and _get(b, *path):
            sa, sb = _get(a, *path), _get(b, *path)
            changed, why = _timed(sa, sb)
            rows.append(Row(name, metric, sa["mean"], sb["mean"], _pct(sa["mean"], sb["mean"]), changed, why))
    if scenario == "throughput":
        best = {}
        for label, cell in (("a", a), ("b", b)):
            per = [p for p in cell["metrics"]["per_batch"] if "tokens_per_s" in p]
            best[label] = max(per, key=lambda p: p["tokens_per_s"]["mean"]) if per else None
        if best["a"] and best["b"]:
            changed, why = _timed(best["a"]["tokens_per_s"], best["b"]["tokens_per_s"])
            ma, mb = best["a"]["tokens_per_s"]["mean"], best["b"]["tokens_per_s"]["mean"]
            rows.append(Row(name, "best throughput tokens/s", ma, mb, _pct(ma, mb), changed, why))
    if scenario == "quality":
        ha, hb = a["metrics"]["hellaswag"], b["metrics"]["hellaswag"]
        if (ha.get("subset"), ha["items"]) != (hb.get("subset"), hb["items"]):
            rows.append(Row(name, "HellaSwag", ha["items"], hb["items"], None, False, "different item sets: not compared"))
        else:
            va, vb = ha["acc_norm"]["value"], hb["acc_norm"]["value"]
            se = math.sqrt(ha["acc_norm"]["stderr"] ** 2 + hb["acc_norm"]["stderr"] ** 2)
            rows.append(Row(name, "HellaSwag acc_norm", va, vb, _pct(va, vb), abs(va - vb) > 1.96 * se,
                            f"Δ {abs(va - vb):.4f} vs 1.96·SE {1.96 * se:.4f}"))
        pa, pb = a["metrics"]["perplexity"]["rolling"], b["metrics"]["perplexity"]["rolling"]
        if pa.get("tokens") != pb.get("tokens"):
            rows.append(Row(name, "perplexity", pa.get("tokens"), pb.get("tokens"), None, False,
                            "different token counts: not compared"))
        else:
            va, vb = pa["token_perplexity"], pb["token_perplexity"]
            rows.append(Row(name, "perplexity", va, vb, _pct(va, vb), abs(_pct(va, vb)) > 0.01, "deterministic: > 0.01% is a change"))
        ka, kb = _get(a, "fidelity", "kl_mean"), _get(b, "fidelity", "kl_mean")
        if ka is not None and kb is not None:
            changed = abs(kb - ka) > max(1e-4 * max(ka, kb), 1e-9)
            rows.append(Row(name, "KL vs reference", ka, kb, _pct(ka, kb), changed, "deterministic: > 0.01% is a change"))
    ma, mb = _get(a, "memory", "peak_rss_bytes"), _get(b, "memory", "peak_rss_bytes")
    if ma and mb:
        rows.append(Row(name, "peak RSS MiB", ma / 2**20, mb / 2**20, _pct(ma, mb), abs(_pct(ma, mb)) > 5, "one reading: > 5% is a change"))
    return rows


def compare(cells_a: list[dict], cells_b: list[dict]) -> tuple[list[Row], list[str]]:
    """Rows for every matched cell, and notes for cells present in only one run."""
    def key(c):
        return c["backend"], c["variant"], c["target"]["name"], c["scenario"]["name"]

    by_a, by_b = {key(c): c for c in cells_a}, {key(c): c for c in cells_b}
    rows = [r for k in by_a if k in by_b for r in compare_cells(by_a[k], by_b[k])]
    notes = [f"only in A: {'.'.join(k)}" for k in by_a if k not in by_b]
    notes += [f"only in B: {'.'.join(k)}" for k in by_b if k not in by_a]
    return rows, notes


def _v(x) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def format_rows(rows: list[Row], notes: list[str], changed_only: bool) -> str:
    shown = [r for r in rows if r.changed or not changed_only]
    width = max([len(r.cell) for r in shown] + [4])
    lines = [f"{'cell':<{width}}  {'metric':<26} {'A':>12} {'B':>12} {'change':>9}  verdict"]
    for r in shown:
        pct = f"{r.change_pct:+.2f}%" if r.change_pct is not None else ""
        verdict = "CHANGED" if r.changed else "within noise" if r.change_pct is not None else ""
        lines.append(f"{r.cell:<{width}}  {r.metric:<26} {_v(r.a):>12} {_v(r.b):>12} {pct:>9}  {verdict}  ({r.why})")
    lines += notes
    changed = sum(r.changed for r in rows)
    lines.append(f"{changed} of {len(rows)} compared metrics changed beyond the runs' own noise")
    return "\n".join(lines)

"""`just compare RUN_A RUN_B`: what changed between two runs, cell by cell, with the same
statistics as every verdict (evaluator/stats).

Cells are matched by (backend, variant, target, scenario). A metric is CHANGED when:
- timed metrics (median latency, TTFT, decode speed, best throughput): the 95% interval of
  the ratio of the two runs' medians excludes 1 (each median's interval from its own samples);
- HellaSwag: both runs scored the same items, so item by item: the items whose correctness
  flipped (named), McNemar's exact test on them and the paired interval of Δacc_norm; CHANGED when
  that interval excludes 0 (the run's raw answers are read for it);
- perplexity: paired over the same windows, CHANGED when the ratio's interval excludes 1;
- KL, deterministic for the same tokens: by more than 0.01% (float reductions);
- peak memory, one reading per cell: by more than 5%;
- status: any change.
Runs that scored different items or windows compare only what they share, and say so.
"""
import json
from dataclasses import dataclass
from pathlib import Path

from evaluator import store
from evaluator.score import gate, hellaswag
from evaluator.stats.intervals import Z95, ratio_interval


@dataclass
class Row:
    cell: str
    metric: str
    a: object
    b: object
    change_pct: float | None
    changed: bool
    why: str


def _pct(a, b):
    return 100 * (b / a - 1) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a else None


def _get(cell: dict, *path):
    for p in path:
        if not isinstance(cell, dict) or p not in cell:
            return None
        cell = cell[p]
    return cell


def _timed(name: str, metric: str, a: dict | None, b: dict | None, key: str = "p50") -> Row | None:
    if not a or not b or a.get(key) is None or b.get(key) is None:
        return None
    r = ratio_interval(b[key], b.get(f"{key}_ci"), a[key], a.get(f"{key}_ci"))
    if r is None:
        return Row(name, metric, a[key], b[key], _pct(a[key], b[key]), False, "no interval to judge by")
    why = f"B/A {r['ratio']:.4f} [{r['ci'][0]:.4f}, {r['ci'][1]:.4f}]"
    return Row(name, metric, a[key], b[key], _pct(a[key], b[key]), r["excludes_one"], why)


TIMED = [("latency", "e2e latency median ms", ("metrics", "e2e_ms")),
         ("latency", "TTFT median ms", ("metrics", "ttft_ms")),
         ("latency", "decode median tokens/s", ("metrics", "decode_tokens_per_s"))]


def _raw(folder: Path, cell: dict) -> dict | None:
    path = folder / cell["raw"] if cell.get("raw") else None
    return json.loads(path.read_text()) if path and path.is_file() else None


def _flips(raw_a: dict, raw_b: dict, n: int) -> list[int]:
    """HellaSwag item indices whose acc_norm correctness differs between the two runs."""
    items = hellaswag.load()
    sides = []
    for raw in (raw_a, raw_b):
        h = raw["hellaswag"]
        sides.append(hellaswag.correct([items[i] for i in h["items"][:n]], h["ending_logprob_sums"][:n])[1])
    return [i for i, a, b in zip(raw_a["hellaswag"]["items"][:n], *sides) if a != b]


def _quality(name: str, a: dict, b: dict, raw_a: dict | None, raw_b: dict | None) -> list[Row]:
    rows = []
    ha, hb = a["metrics"]["hellaswag"], b["metrics"]["hellaswag"]
    seeds = ((ha.get("order") or {}).get("seed"), (hb.get("order") or {}).get("seed"))
    if raw_a and raw_b and seeds[0] == seeds[1]:
        n = min(ha["items"], hb["items"])
        pair = gate.hellaswag_pairs(raw_a, raw_b, n, Z95, n)["acc_norm"]
        flipped = f"{pair['gained']} items right only in B, {pair['lost']} only in A, McNemar p = {pair['mcnemar_p']:.3g}"
        which = _flips(raw_a, raw_b, n)
        if which:
            flipped += f"; flipped items: {', '.join(map(str, which[:10]))}" + (" ..." if len(which) > 10 else "")
        ci = pair["ci"]
        rows.append(Row(name, f"HellaSwag acc_norm ({n} shared items)", pair["reference"], pair["variant"],
                        _pct(pair["reference"], pair["variant"]), ci[0] > 0 or ci[1] < 0,
                        f"Δ {pair['delta']:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}]; {flipped}"))
    else:
        rows.append(Row(name, "HellaSwag", ha["items"], hb["items"], None, False,
                        "different item orders or no raw answers: not compared"))
    pa, pb = a["metrics"]["perplexity"]["rolling"], b["metrics"]["perplexity"]["rolling"]
    ratio = gate.perplexity_pair(raw_a, raw_b) if raw_a and raw_b else None
    if ratio is None:
        rows.append(Row(name, "perplexity", pa.get("tokens"), pb.get("tokens"), None, False,
                        "different windows or no raw answers: not compared"))
    else:
        lo, hi = ratio["ci"]
        rows.append(Row(name, "perplexity", pa["token_perplexity"], pb["token_perplexity"],
                        _pct(pa["token_perplexity"], pb["token_perplexity"]), lo > 1 or hi < 1,
                        f"B/A {ratio['ratio']:.6f} [{lo:.6f}, {hi:.6f}] over {ratio['windows']} paired windows"))
    ka, kb = _get(a, "fidelity", "kl_mean"), _get(b, "fidelity", "kl_mean")
    if ka is not None and kb is not None:
        changed = abs(kb - ka) > max(1e-4 * max(ka, kb), 1e-9)
        rows.append(Row(name, "KL vs reference", ka, kb, _pct(ka, kb), changed, "deterministic: > 0.01% is a change"))
    return rows


def compare_cells(a: dict, b: dict, folder_a: Path | None = None, folder_b: Path | None = None) -> list[Row]:
    name = f'{a["backend"]}.{a["variant"]}@{a["target"]["name"]} {a["scenario"]["name"]}'
    if a["status"] != b["status"]:
        return [Row(name, "status", a["status"], b["status"], None, True, b.get("reason") or a.get("reason") or "")]
    if a["status"] != "ok":
        return [Row(name, "status", a["status"], b["status"], None, False, "same status")]
    scenario = a["scenario"]["name"]
    rows = [r for sc, metric, path in TIMED if sc == scenario if (r := _timed(name, metric, _get(a, *path), _get(b, *path)))]
    if scenario == "throughput":
        best = {k: {"p50": c["metrics"]["best_tokens_per_s"], "p50_ci": c["metrics"].get("best_tokens_per_s_ci")}
                for k, c in (("a", a), ("b", b))}
        rows.append(_timed(name, "best throughput median tokens/s", best["a"], best["b"]))
    if scenario == "quality":
        rows += _quality(name, a, b, folder_a and _raw(folder_a, a), folder_b and _raw(folder_b, b))
    ma, mb = _get(a, "memory", "peak_rss_bytes"), _get(b, "memory", "peak_rss_bytes")
    if ma and mb:
        rows.append(Row(name, "peak RSS MiB", ma / 2**20, mb / 2**20, _pct(ma, mb), abs(_pct(ma, mb)) > 5, "one reading: > 5% is a change"))
    return [r for r in rows if r]


def compare(folder_a: Path, folder_b: Path) -> tuple[list[Row], list[str]]:
    """Rows for every matched cell, and notes for cells present in only one run."""
    def key(c):  # a run may measure several models: a cell pairs with the same model's
        return (c.get("model") or {}).get("name", ""), c["backend"], c["variant"], c["target"]["name"], c["scenario"]["name"]

    by_a = {key(c): c for c in store.load_run(folder_a)[1]}
    by_b = {key(c): c for c in store.load_run(folder_b)[1]}
    rows = [r for k in by_a if k in by_b for r in compare_cells(by_a[k], by_b[k], folder_a, folder_b)]
    notes = [f"only in A: {'.'.join(filter(None, k))}" for k in by_a if k not in by_b]
    notes += [f"only in B: {'.'.join(filter(None, k))}" for k in by_b if k not in by_a]
    return rows, notes


def _v(x) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def format_rows(rows: list[Row], notes: list[str], changed_only: bool) -> str:
    shown = [r for r in rows if r.changed or not changed_only]
    width = max([len(r.cell) for r in shown] + [4])
    lines = [f"{'cell':<{width}}  {'metric':<34} {'A':>12} {'B':>12} {'change':>9}  verdict"]
    for r in shown:
        pct = f"{r.change_pct:+.2f}%" if r.change_pct is not None else ""
        verdict = "CHANGED" if r.changed else "within noise" if r.change_pct is not None else ""
        lines.append(f"{r.cell:<{width}}  {r.metric:<34} {_v(r.a):>12} {_v(r.b):>12} {pct:>9}  {verdict}  ({r.why})")
    lines += notes
    changed = sum(r.changed for r in rows)
    lines.append(f"{changed} of {len(rows)} compared metrics changed beyond the runs' own noise")
    return "\n".join(lines)

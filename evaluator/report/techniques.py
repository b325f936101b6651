"""The report's Techniques section, from the technique cells (measure/techniques.py) and the
latency cells of the PyTorch variants: the article's summary table (technique, memory saved,
speed-up, quality lost), its attention table, its mixed-precision training table, FLOPs and
model FLOPs utilisation, and plots. Every speed-up is a ratio of two medians with its 95%
interval; one whose interval holds 1 reads "tied".
"""
from evaluator.report.plots import _layout, escape
from evaluator.stats.intervals import ratio_interval

MIB = 2 ** 20


def _ratio(a: dict | None, b: dict | None) -> dict | None:
    """a's median over b's, with the interval of two independent medians."""
    if not (a and b and a.get("p50") and b.get("p50")):
        return None
    return ratio_interval(a["p50"], a.get("p50_ci"), b["p50"], b.get("p50_ci"))


def _speedup(r: dict | None) -> str:
    if not r:
        return "no interval"
    text = f'{r["ratio"]:.2f}x [{r["ci"][0]:.2f}, {r["ci"][1]:.2f}]'
    return text if r["excludes_one"] else text + " tied"


def _saved(base: float | None, new: float | None) -> str:
    if not base or new is None:
        return "not measured"
    return f"{100 * (1 - new / base):.0f}% ({base / MIB:,.1f} → {new / MIB:,.1f} MiB)"


def _ms(summary: dict | None) -> str:
    if not summary or summary.get("p50") is None:
        return "–"
    ci = summary.get("p50_ci")
    return f'{1e3 * summary["p50"]:,.2f} ms' + (f' [{1e3 * ci[0]:,.2f}, {1e3 * ci[1]:,.2f}]' if ci else "")


def _train_rows(cell: dict) -> tuple[list[dict], list[dict]]:
    configs = cell["train"]["configs"]
    base = next((c for c in configs if c["config"] == {"precision": "fp32"} and c["status"] == "ok"), None)
    table, summary = [], []
    for c in configs:
        if c["status"] != "ok":
            table.append({"label": c["label"], "status": c["status"], "reason": c.get("reason")})
            summary.append({"technique": f'training: {c["label"]}', "unsupported": c.get("reason")})
            continue
        check = c.get("loss_check") or {}
        grad = c.get("gradient_check")
        table.append({"label": c["label"], "status": "ok", "step": _ms(c["step"]),
                      "tokens_per_s": f'{c["tokens_per_s"]:,.0f}' if c.get("tokens_per_s") else "–",
                      "peak": f'{c["peak_bytes"] / MIB:,.1f} MiB' if c.get("peak_bytes") is not None else "–",
                      "loss": f'{c["losses"][-1]:.4f}',
                      "check": (f'{"within" if check["within"] else "OUTSIDE"} ±{check["tolerance"]:g} '
                                f'(max {check["max_relative_deviation"]:.2g})' if check else "reference"),
                      "gradients": (f'{"equal" if grad["within"] else "DIFFER"}: max {grad["max_relative_difference"]:.2g} '
                                    f'(tolerance {grad["tolerance"]:g})' if grad else "")})
        if base is not None and c is not base:
            summary.append({"technique": f'training: {c["label"]}', "memory": _saved(base.get("peak_bytes"), c.get("peak_bytes")),
                            "speedup": _speedup(_ratio(base["step"], c["step"])),
                            "quality": (f'loss within ±{100 * check["tolerance"]:g}% of fp32 at every step '
                                        f'(max {100 * check["max_relative_deviation"]:.2g}%)' if check.get("within")
                                        else f'loss off fp32 by up to {100 * check.get("max_relative_deviation", 0):.2g}%'),
                            "how": "peak memory and median step time against fp32 training, same weights and batches"})
    return table, summary


def _attention(cell: dict) -> tuple[dict, list[dict], dict | None]:
    att = cell["attention"]
    lengths = sorted({r["length"] for r in att["rows"]})
    impls = list(dict.fromkeys(r["impl"] for r in att["rows"]))
    at = {(r["impl"], r["length"]): r for r in att["rows"] if r["pass"] == "forward"}
    table = {"lengths": lengths, "rows": []}
    for impl in impls:
        fit = att["memory_exponent"].get(f"{impl} forward")
        table["rows"].append({"impl": impl, "cells": [
            (f'{_ms(at[(impl, n)].get("time"))}<br>{at[(impl, n)]["peak_bytes"] / MIB:,.1f} MiB' if (impl, n) in at
             and "peak_bytes" in at[(impl, n)] else (at[(impl, n)].get("out_of_memory", "–") if (impl, n) in at else "–"))
            for n in lengths],
            "exponent": f'{fit["exponent"]:.2f} [{fit["ci"][0]:.2f}, {fit["ci"][1]:.2f}]' if fit else "–"})
    for impl, why in att.get("unsupported", {}).items():
        table["rows"].append({"impl": impl, "cells": [escape(why)] + [""] * (len(lengths) - 1), "exponent": "unsupported"})
    longest = max((n for n in lengths if ("standard", n) in at and ("sdpa-flash", n) in at), default=None)
    summary = []
    for impl in impls:
        if impl != "standard" and longest and (impl, longest) in at and "time" in at[(impl, longest)]:
            a, b = at[("standard", longest)], at[(impl, longest)]
            summary.append({"technique": f"attention: {impl} instead of standard, {longest} tokens",
                            "memory": _saved(a["peak_bytes"], b["peak_bytes"]),
                            "speedup": _speedup(_ratio(a["time"], b["time"])),
                            "quality": f'outputs equal within {att["tolerance"]:g}',
                            "how": f'one forward, {att["heads"]} heads of {att["head_dim"]}, {att["dtype"]}, causal'})
    data = [{"type": "scatter", "mode": "lines+markers", "name": escape(impl),
             "x": [n for n in lengths if (impl, n) in at and "peak_bytes" in at[(impl, n)]],
             "y": [at[(impl, n)]["peak_bytes"] / MIB for n in lengths if (impl, n) in at and "peak_bytes" in at[(impl, n)]]}
            for impl in impls]
    figure = {"data": data, "layout": _layout("Attention: peak memory against sequence length (log-log; slope 2 is O(n²))",
                                              "sequence length (tokens)", "peak memory (MiB)",
                                              xaxis={"type": "log", "title": {"text": "sequence length (tokens)"}},
                                              yaxis={"type": "log", "title": {"text": "peak memory (MiB)"}})} if data else None
    return table, summary, figure


def _inference_rows(cells: list[dict]) -> list[dict]:
    """KV cache, attention kernel and bf16 in the model: latency cells of pytorch_eager variants."""
    lat = {c["variant"]: c["metrics"] for c in cells if c["backend"] == "pytorch_eager"
           and c["scenario"]["name"] == "latency" and c.get("status") == "ok"}
    rows = []
    for variant, what in (("fp32-sdpa-nokv", "KV cache (on against off)"), ("fp32-eager-kv", "SDPA in the model (against eager)"),
                          ("bf16-sdpa-kv", "bf16 inference (against fp32)")):
        if "fp32-sdpa-kv" in lat and variant in lat:
            on, other = lat["fp32-sdpa-kv"], lat[variant]
            # the speed-up of the technique: the time per token without it over the time with it
            r = _ratio(on["tpot_ms"], other["tpot_ms"]) if variant == "bf16-sdpa-kv" else _ratio(other["tpot_ms"], on["tpot_ms"])
            rows.append({"technique": f"inference: {what}", "memory": "see the comparison table",
                         "speedup": _speedup(r), "quality": "see the quality cells and the greedy check",
                         "how": "median time per output token of two latency cells (independent samples)"})
    return rows


def section(cells: list[dict]) -> dict | None:
    """Everything the Techniques section shows, or None when the run measured no technique."""
    by = {c["scenario"]["name"]: c for c in cells if c.get("status") == "ok" and c["scenario"]["name"] in ("attention", "train", "flops")}
    if not by:
        return None
    out = {"summary": [], "figures": []}
    if "train" in by:
        out["train"], rows = _train_rows(by["train"])
        out["train_shape"] = by["train"]["train"]
        out["summary"] += rows
    if "attention" in by:
        out["attention"], rows, fig = _attention(by["attention"])
        out["summary"] += rows
        if fig:
            out["figures"].append({"title": "Attention memory", "figure": fig})
    out["summary"] += _inference_rows(cells)
    if "flops" in by:
        f = by["flops"]["flops"]
        out["flops"] = {"formula": f["per_token_formula"]["total"], "counted": f["per_token_counted"],
                        "agreement": f"{100 * f['agreement']:+.2f}%", "context": f["context"], "dtype": f["dtype"],
                        "achieved": f["achieved_flops_per_s"], "peak": f["peak_flops_per_s"],
                        "mfu": f"{100 * f['mfu']:.1f}%" if f.get("mfu") is not None else "–", "forward": _ms(f["forward"])}
    return out

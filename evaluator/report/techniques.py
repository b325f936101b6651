"""The report's Techniques section, from the technique cells (measure/techniques.py) and the
latency cells of the PyTorch variants: the article's summary table (technique, memory saved,
speed-up, quality lost), its attention table, its mixed-precision training table, FLOPs and
model FLOPs utilisation, and plots. Every speed-up is a ratio of two medians with its 95%
interval; one whose interval holds 1 reads "tied".
"""
from evaluator.report.plots import _layout, escape
from evaluator.measure.techniques import TECHNIQUES
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
                                f'(max {check["max_relative_deviation"]:.2g})' if check
                                else "reference" if c is base else "no fp32 run to compare against"),
                      "gradients": (f'{"equal" if grad["within"] else "DIFFER"}: max {grad["max_relative_difference"]:.2g} '
                                    f'(tolerance {grad["tolerance"]:g})' if grad else "")})
        if base is not None and c is not base:
            summary.append({"technique": f'training: {c["label"]}', "memory": _saved(base.get("peak_bytes"), c.get("peak_bytes")),
                            "speedup": _speedup(_ratio(base["step"], c["step"])),
                            "quality": (f'loss within ±{100 * check["tolerance"]:g}% of fp32 at every step '
                                        f'(max {100 * check["max_relative_deviation"]:.2g}%)' if check.get("within")
                                        else f'loss off fp32 by up to {100 * check.get("max_relative_deviation", 0):.2g}%'),
                            "how": "peak memory of a step above its start (gradients, activations; the least over the steps "
                                   "after the first) and median step time against fp32 training, same weights and batches"})
    return table, summary


def _attention(cell: dict) -> tuple[dict, list[dict], dict | None]:
    att = cell["attention"]
    lengths = sorted({r["length"] for r in att["rows"]})
    impls = list(dict.fromkeys(r["impl"] for r in att["rows"]))
    passes = list(dict.fromkeys(r["pass"] for r in att["rows"]))
    at = {(r["impl"], r["pass"], r["length"]): r for r in att["rows"]}

    def shown(r: dict | None) -> str:
        if r is None:
            return "–"
        if "peak_bytes" not in r:
            return f'out of memory: {escape(r.get("out_of_memory", ""))}'
        return f'{_ms(r.get("time"))}<br>{r["peak_bytes"] / MIB:,.1f} MiB'

    table = {"lengths": lengths, "rows": []}
    for pass_ in passes:
        for impl in impls:
            fit = att["memory_exponent"].get(f"{impl} {pass_}")
            table["rows"].append({"impl": f"{impl}, {pass_}", "cells": [shown(at.get((impl, pass_, n))) for n in lengths],
                                  "exponent": f'{fit["exponent"]:.2f} [{fit["ci"][0]:.2f}, {fit["ci"][1]:.2f}]' if fit else "–"})
    for impl, why in att.get("unsupported", {}).items():
        table["rows"].append({"impl": impl, "cells": [escape(why)] + [""] * (len(lengths) - 1), "exponent": "unsupported"})
    summary = []
    for pass_ in passes:
        timed = [n for n in lengths if "time" in (at.get(("standard", pass_, n)) or {})]
        for impl in impls:
            both = [n for n in timed if "time" in (at.get((impl, pass_, n)) or {})]
            if impl == "standard" or not both:
                continue
            a, b = at[("standard", pass_, both[-1])], at[(impl, pass_, both[-1])]
            summary.append({"technique": f"attention: {impl} instead of standard ({pass_}, {both[-1]} tokens)",
                            "memory": _saved(a["peak_bytes"], b["peak_bytes"]),
                            "speedup": _speedup(_ratio(a["time"], b["time"])),
                            "quality": f'outputs equal within {att["tolerance"]:g}',
                            "how": f'{att["heads"]} heads of {att["head_dim"]}, {att["dtype"]}, causal'})
    data = []
    for pass_ in passes:
        for impl in impls:
            done = [n for n in lengths if "peak_bytes" in (at.get((impl, pass_, n)) or {})]
            data.append({"type": "scatter", "mode": "lines+markers", "name": escape(f"{impl}, {pass_}"), "x": done,
                         "y": [at[(impl, pass_, n)]["peak_bytes"] / MIB for n in done]})
    log = {"type": "log"}
    figure = {"data": data, "layout": _layout("Attention: peak memory against sequence length (log-log; slope 2 is O(n²))",
                                              "sequence length (tokens)", "peak memory (MiB)",
                                              xaxis=dict(log, title={"text": "sequence length (tokens)"}),
                                              yaxis=dict(log, title={"text": "peak memory (MiB)"}))} if data else None
    return table, summary, figure


def _kv(cell: dict) -> tuple[list[dict], list[dict], dict]:
    rows = cell["kv"]["rows"]
    table = [{"new_tokens": r["new_tokens"], "with": _ms(r["with_cache"]), "without": _ms(r["without_cache"]),
              "speedup": _speedup(r["speedup"]), "same": "yes" if r.get("same_tokens") else "NO"} for r in rows]
    last = rows[-1]
    summary = [{"technique": f'KV cache ({last["new_tokens"]} new tokens after {cell["kv"]["prompt_tokens"]})',
                "memory": "the cache's own size (not measured here)", "speedup": _speedup(last["speedup"]),
                "quality": ("none: the same greedy tokens at every length" if all(r.get("same_tokens") for r in rows)
                            else "greedy tokens DIFFER with and without the cache"),
                "how": "request time / new tokens (prefill included), with the cache and without, one runner"}]
    data = [{"type": "scatter", "mode": "lines+markers", "name": name, "x": [r["new_tokens"] for r in rows],
             "y": [1e3 * r[key]["p50"] for r in rows]}
            for name, key in (("with the KV cache", "with_cache"), ("without", "without_cache"))]
    figure = {"data": data, "layout": _layout("Time per output token against output length", "new tokens", "ms per token")}
    return table, summary, figure


def _inference_rows(cells: list[dict]) -> list[dict]:
    """KV cache, attention kernel and bf16 in the model: latency cells of pytorch_eager variants."""
    lat = {c["variant"]: c["metrics"] for c in cells if c["backend"] == "pytorch_eager"
           and c["scenario"]["name"] == "latency" and c.get("status") == "ok"}
    rows = []
    for variant, what in (("fp32-eager-kv", "SDPA in the model (against eager)"), ("bf16-sdpa-kv", "bf16 inference (against fp32)")):
        if "fp32-sdpa-kv" in lat and variant in lat:
            on, other = lat["fp32-sdpa-kv"], lat[variant]
            # the speed-up of the technique: the time per token without it over the time with it
            r = _ratio(on["tpot_ms"], other["tpot_ms"]) if variant == "bf16-sdpa-kv" else _ratio(other["tpot_ms"], on["tpot_ms"])
            rows.append({"technique": f"inference: {what}", "memory": "see the comparison table",
                         "speedup": _speedup(r), "quality": "see the quality cells and the greedy check",
                         "how": "median time per output token of two latency cells (independent samples)"})
    return rows


def _compile_rows(cells: list[dict]) -> list[dict]:
    """torch.compile's modes against eager, compile time apart (pytorch_compile's latency cells)."""
    ok = [c for c in cells if c.get("status") == "ok" and c["scenario"]["name"] == "latency"]
    eager = next((c for c in ok if c["backend"] == "pytorch_eager" and c["variant"] == "fp32-sdpa-kv"), None)
    rows = []
    for c in ok:
        if c["backend"] == "pytorch_compile" and eager:
            compile_s = (c.get("load") or {}).get("compile_s")
            rows.append({"technique": f'torch.compile {c["variant"]}', "memory": "see the comparison table",
                         "speedup": _speedup(_ratio(eager["metrics"]["tpot_ms"], c["metrics"]["tpot_ms"])),
                         "quality": "see the greedy check and the quality cells",
                         "how": "median time per output token against pytorch_eager fp32-sdpa-kv"
                                + (f"; compiling took {compile_s:.1f} s, outside every timed request" if compile_s else "")})
    return rows


def _quality_lost(cell: dict | None) -> str:
    """The paired gate's verdict and its larger loss (acc_norm or perplexity), with the interval."""
    g = (cell or {}).get("quality_gate")
    if not g:
        return "no quality cell" if not cell else (cell.get("quality_gate_error") or "not compared")
    parts = [(name, p) for name, p in (("acc_norm", (g.get("hellaswag") or {}).get("acc_norm")),
                                       ("perplexity", g.get("perplexity"))) if p]
    name, worst = max(parts, key=lambda np: np[1]["loss"])
    lo, hi = worst["loss_ci"]
    return f'{g["verdict"]}: {name} {100 * worst["loss"]:+.2f}% [{100 * lo:+.2f}, {100 * hi:+.2f}] of {g["reference"]}'


QUANT_BACKENDS = ("pytorch_quant", "llmcompressor")  # their variants are quantization methods; "fp32" is each one's own baseline


def _quant_rows(cells: list[dict]) -> list[dict]:
    """The quantization methods (pytorch_quant's and llmcompressor's variants) against pytorch_eager
    fp32: weight bytes in memory (and the checkpoint file where the method writes one), time per
    output token, and the paired quality verdict of their quality cells."""
    ok = [c for c in cells if c.get("status") == "ok"]
    eager = next((c for c in ok if c["backend"] == "pytorch_eager" and c["variant"] == "fp32-sdpa-kv"
                  and c["scenario"]["name"] == "latency"), None)
    rows = []
    for backend in QUANT_BACKENDS:
        mine = {(c["variant"], c["scenario"]["name"]): c for c in ok if c["backend"] == backend}
        base_bytes = next((c["load"].get("weight_bytes") for (v, _), c in mine.items() if v == "fp32" and c.get("load")), None)
        for variant in dict.fromkeys(v for v, _ in mine if v != "fp32"):
            rows.append(_quant_row(variant, mine.get((variant, "latency")), mine.get((variant, "quality")), base_bytes, eager))
    return rows


def _quant_row(variant: str, lat: dict | None, qual: dict | None, base_bytes, eager: dict | None) -> dict:
    some = lat or qual or {}
    load = some.get("load") or {}
    model_bytes = (some.get("model") or {}).get("size_bytes")
    base = base_bytes or model_bytes  # else the checkpoint's size
    speed = _ratio(eager["metrics"]["tpot_ms"], lat["metrics"]["tpot_ms"]) if lat and eager else None
    notes = [f'NF4 kernel: {load["nf4_cpu_kernel"]}' if load.get("nf4_cpu_kernel") else "",
             (load.get("settings") or {}).get("compressed_layers") or ""]
    artifact = load.get("artifact") or {}
    if artifact.get("size_bytes") and model_bytes:
        notes.append(f'checkpoint file {_saved(model_bytes, artifact["size_bytes"])}'
                     + (f', calibrated in {artifact["calibration_s"]:.0f} s on {artifact["calibration"]}'
                        if artifact.get("calibration_s") else ""))
    return {"technique": f"quantization: {variant}", "memory": _saved(base, load.get("weight_bytes")),
            "speedup": _speedup(speed) if lat and eager else "no latency cell beside pytorch_eager fp32",
            "quality": _quality_lost(qual),
            "how": "weights in memory after load against this runner's fp32 (or the checkpoint's size; "
                   "embeddings and output layer stay fp32); median time per output token against "
                   "pytorch_eager fp32-sdpa-kv; quality paired item by item" + "".join(f"; {n}" for n in notes if n)}


def sections(cells: list[dict]) -> list[dict]:
    """One Techniques section per target (and model, where a run compares several) that measured
    a technique, each from its own cells."""
    def where(c):
        return (c.get("model") or {}).get("name", ""), c["target"]["name"]
    places = list(dict.fromkeys(map(where, cells)))
    several = len({model for model, _ in places}) > 1
    out = []
    for model, target in places:
        got = section([c for c in cells if where(c) == (model, target)])
        if got:
            out.append(dict(got, target=f"{target}, {model}" if several else target))
    return out


def section(cells: list[dict]) -> dict | None:
    """Everything the Techniques section shows for one target's cells, or None when it measured
    no technique."""
    by = {c["scenario"]["name"]: c for c in cells if c.get("status") == "ok" and c["scenario"]["name"] in TECHNIQUES}
    quant = _quant_rows(cells)
    if not by and not quant:
        return None
    out = {"summary": quant, "figures": []}
    if "train" in by:
        out["train"], rows = _train_rows(by["train"])
        out["train_shape"] = by["train"]["train"]
        out["summary"] += rows
    if "attention" in by:
        out["attention"], rows, fig = _attention(by["attention"])
        out["summary"] += rows
        if fig:
            out["figures"].append({"title": "Attention memory", "figure": fig})
    if "kv" in by:
        out["kv"], rows, fig = _kv(by["kv"])
        out["summary"] += rows
        out["figures"].append({"title": "KV cache", "figure": fig})
    out["summary"] += _inference_rows(cells) + _compile_rows(cells)
    if "flops" in by:
        f = by["flops"]["flops"]
        out["flops"] = {"formula": f["per_token_formula"]["total"], "counted": f["per_token_counted"],
                        "agreement": f"{100 * f['agreement']:+.2f}%", "context": f["context"], "dtype": f["dtype"],
                        "achieved": f["achieved_flops_per_s"], "peak": f["peak_flops_per_s"],
                        "mfu": f"{100 * f['mfu']:.2g}%" if f.get("mfu") is not None else "–", "forward": _ms(f["forward"])}
    return out

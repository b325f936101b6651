"""Plotly figures (plain dicts: data + layout) built from configurations; the page draws
them with the plotly.js bundled in the page itself, so nothing is fetched.

Plotly renders a small set of HTML tags inside labels and decodes entities, so every label
that came from a result (model, backend, variant, target names) is passed through
`html.escape`: it shows as the text it is.
"""
import math
from html import escape as _html_escape

from evaluator.measure import serving
from evaluator.report.configs import Config

GB = 1e9


def escape(text: str) -> str:
    """<, > and & as entities, which plotly decodes back to text; quotes stay as they are
    (plotly would show &quot; literally, and without a '<' there is no tag to quote in)."""
    return _html_escape(text, quote=False)


def _name(c: Config, several_targets: bool) -> str:
    return escape(f"{c.label} @ {c.target_name}" if several_targets else c.label)


def _layout(title: str, x: str, y: str, **extra) -> dict:
    return {"title": {"text": escape(title)}, "xaxis": {"title": {"text": escape(x)}},
            "yaxis": {"title": {"text": escape(y)}}, "margin": {"l": 70, "r": 20, "t": 50, "b": 60},
            "height": 420, "legend": {"orientation": "h", "y": -0.25}, **extra}


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both speed (x, higher is better) and perplexity (y, lower)."""
    front, best_y = [], float("inf")
    for x, y in sorted(points, key=lambda p: (-p[0], p[1])):
        if y < best_y:
            front.append((x, y))
            best_y = y
    return sorted(front)


def _error(value, ci) -> dict:
    """An asymmetric plotly error bar from a 95% interval (none where there is no interval)."""
    if value is None or not ci:
        return {"visible": False}
    return {"type": "data", "symmetric": False, "array": [ci[1] - value], "arrayminus": [value - ci[0]]}


def _perplexity_ci(c: Config, margin: float | None) -> list[float] | None:
    """The perplexity ratio's interval against the reference, carried onto the perplexity."""
    g = c.gate(margin) or {}
    ppl = g.get("perplexity")
    return [c.perplexity * ppl["ci"][0] / ppl["ratio"], c.perplexity * ppl["ci"][1] / ppl["ratio"]] if ppl else None


SYMBOL = {"FAIL": "x", "INCONCLUSIVE": "diamond-open"}


def quality_vs_speed(configs: list[Config], target: str, margin: float | None = None) -> dict | None:
    cs = [c for c in configs if c.target_name == target and c.decode_tokens_per_s and c.perplexity]
    if not cs:
        return None
    data = [{"type": "scatter", "mode": "markers+text", "name": escape(c.label), "x": [c.decode_tokens_per_s],
             "y": [c.perplexity], "text": [escape(c.label)], "textposition": "top center",
             "error_x": _error(c.decode_tokens_per_s, c.interval("decode_tokens_per_s")),
             "error_y": _error(c.perplexity, _perplexity_ci(c, margin)),
             "marker": {"size": 11, "symbol": SYMBOL.get((c.gate(margin) or {}).get("verdict"), "circle")}} for c in cs]
    front = pareto_front([(c.decode_tokens_per_s, c.perplexity) for c in cs])
    data.append({"type": "scatter", "mode": "lines", "name": "Pareto front", "x": [p[0] for p in front],
                 "y": [p[1] for p in front], "line": {"dash": "dot", "color": "#444"}})
    return {"data": data, "layout": _layout(f"Quality against speed on {target} (× fails the quality gate, ◇ inconclusive; "
                                            "bars: 95% intervals)", "median decode speed, tokens/s (right is faster)",
                                            "WikiText-2 perplexity (down is better)")}


def memory_fit(configs: list[Config], memory_sizes: dict[str, float]) -> dict | None:
    """Peak memory per configuration against device memory sizes (what fits in 8 GB, 24 GB...)."""
    cs = [c for c in configs if c.peak_memory_bytes]
    if not cs:
        return None
    several = len({c.target_name for c in configs}) > 1
    names = [_name(c, several) for c in cs]
    data = [{"type": "bar", "orientation": "h", "name": "peak memory", "y": names,
             "x": [c.peak_memory_bytes / GB for c in cs],
             "text": [f"{c.peak_memory_bytes / GB:.3g} GB" for c in cs], "textposition": "auto"},
            {"type": "bar", "orientation": "h", "name": "model file", "y": names,
             "x": [(c.model_bytes or 0) / GB for c in cs]}]
    shapes, notes = [], []
    for label, gb in sorted(memory_sizes.items(), key=lambda kv: kv[1]):
        at = math.log10(gb)  # shapes and annotations on a log axis take log10 of the value
        shapes.append({"type": "line", "xref": "x", "yref": "paper", "x0": at, "x1": at, "y0": 0, "y1": 1,
                       "line": {"dash": "dash", "color": "#b00020"}})
        notes.append({"x": at, "y": 1.0, "xref": "x", "yref": "paper", "text": escape(f"{label} {gb:g} GB"),
                      "showarrow": False, "textangle": -30, "font": {"size": 10}, "yanchor": "bottom"})
    layout = _layout("Memory per configuration against device memory (dashed: what each device offers)",
                     "GB (log scale)", "", barmode="group", shapes=shapes, annotations=notes,
                     height=max(320, 40 * len(cs) + 160))
    layout["xaxis"]["type"] = "log"
    layout["yaxis"]["automargin"] = True
    return {"data": data, "layout": layout}


def latency_distribution(configs: list[Config]) -> dict | None:
    cs = [c for c in configs if c.latency_samples]
    if not cs:
        return None
    several = len({c.target_name for c in configs}) > 1
    data = [{"type": "box", "name": _name(c, several), "y": c.latency_samples, "boxpoints": "all",
             "jitter": 0.4, "pointpos": 0, "marker": {"size": 3}} for c in cs]
    layout = _layout("End-to-end latency per request, batch 1 (every timed request)", "", "ms", showlegend=False)
    layout["yaxis"]["type"] = "log"
    return {"data": data, "layout": layout}


def throughput_vs_batch(configs: list[Config]) -> dict | None:
    cs = [c for c in configs if c.per_batch]
    if not cs:
        return None
    several = len({c.target_name for c in configs}) > 1
    data = [{"type": "scatter", "mode": "lines+markers", "name": _name(c, several),
             "x": [b["batch_size"] for b in c.per_batch], "y": [b["tokens_per_s"]["p50"] for b in c.per_batch],
             "error_y": {"type": "data", "symmetric": False,
                         "array": [(b["tokens_per_s"]["p50_ci"] or [0, 0])[1] - b["tokens_per_s"]["p50"] for b in c.per_batch],
                         "arrayminus": [b["tokens_per_s"]["p50"] - (b["tokens_per_s"]["p50_ci"] or [0, 0])[0]
                                        for b in c.per_batch]}} for c in cs]
    layout = _layout("Throughput against batch size (median, bars: 95% intervals)", "batch size",
                     "generated tokens/s (all sequences)")
    sizes = sorted({b["batch_size"] for c in cs for b in c.per_batch})
    layout["xaxis"].update(type="log", tickvals=sizes, ticktext=[str(b) for b in sizes])
    return {"data": data, "layout": layout}


def serving_curve(configs: list[Config]) -> dict | None:
    """Serving, the classic plot: one point per offered rate (or number of users), the output tokens/s achieved
    against the median time to first token (from each request's scheduled arrival; bars: 95%
    intervals), the TTFT objective dashed where --slo set one. Past the knee a curve turns up:
    more load only queues."""
    cs = [(c, c.cell("serving")) for c in configs if c.cell("serving")]
    if not cs:
        return None
    several = len({c.target_name for c in configs}) > 1
    data = []
    for c, cell in cs:
        rows = [r for r in cell["metrics"]["per_rate"] if r["ttft_ms"].get("p50") is not None]
        cis = [r["ttft_ms"].get("p50_ci") or [r["ttft_ms"]["p50"]] * 2 for r in rows]
        data.append({"type": "scatter", "mode": "lines+markers", "name": _name(c, several),
                     "x": [r["output_tokens_per_s"] for r in rows], "y": [r["ttft_ms"]["p50"] for r in rows],
                     "error_y": {"type": "data", "symmetric": False, "array": [hi - r["ttft_ms"]["p50"] for r, (_, hi) in zip(rows, cis)],
                                 "arrayminus": [r["ttft_ms"]["p50"] - lo for r, (lo, _) in zip(rows, cis)]},
                     "text": [escape(serving.load_label(r) + ("" if r["valid"] else " (INVALID: offered late)"))
                              for r in rows], "hoverinfo": "x+y+text"})
    layout = _layout("Serving: throughput against time to first token (one point per offered load)", "output tokens/s",
                     "TTFT, median (ms)")
    layout["yaxis"]["type"] = "log"
    ttft = next((cell["metrics"]["slo"].get("ttft") for _, cell in cs if cell["metrics"].get("slo")), None)
    if ttft:
        layout["shapes"] = [{"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": ttft, "y1": ttft,
                             "line": {"dash": "dash", "color": "#b00020"}}]
    return {"data": data, "layout": layout}


def bandwidth_ceiling(configs: list[Config]) -> dict | None:
    """Decode speed as a share of the memory-bandwidth ceiling: each decoded token reads every
    weight once, so tokens/s <= bandwidth / model bytes. The bandwidth is the target's spec
    or, on this machine, the probe taken beside the latency cell."""
    rows = []
    for c in configs:
        bw = c.bandwidth_gbs
        if c.decode_tokens_per_s and c.model_bytes and bw:
            ceiling = bw * GB / c.model_bytes
            rows.append((c, ceiling, 100 * c.decode_tokens_per_s / ceiling))
    if not rows:
        return None
    several = len({c.target_name for c in configs}) > 1
    names = [_name(c, several) for c, _, _ in rows]
    cis = [c.interval("decode_tokens_per_s") for c, _, _ in rows]
    data = [{"type": "bar", "name": "% of the bandwidth ceiling", "x": names, "y": [p for _, _, p in rows],
             "error_y": {"type": "data", "symmetric": False,
                         "array": [p * ((ci[1] / c.decode_tokens_per_s) - 1) if ci else 0 for (c, _, p), ci in zip(rows, cis)],
                         "arrayminus": [p * (1 - ci[0] / c.decode_tokens_per_s) if ci else 0 for (c, _, p), ci in zip(rows, cis)]},
             "hovertext": [escape(f"{c.decode_tokens_per_s:,.0f} of {ceil:,.0f} tokens/s, {c.bandwidth_source}")
                      for c, ceil, _ in rows], "hoverinfo": "x+y+text"}]
    layout = _layout("Decode speed against the memory-bandwidth ceiling (bandwidth / model bytes per token)", "",
                     "% of the ceiling", showlegend=False,
                     shapes=[{"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": 100, "y1": 100,
                              "line": {"dash": "dash", "color": "#b00020"}}])
    if any(p > 100 for _, _, p in rows):
        layout["annotations"] = [{"xref": "paper", "yref": "paper", "x": 0, "y": 1.0, "yanchor": "bottom", "showarrow": False,
                                  "align": "left", "font": {"size": 11},
                                  "text": "Over 100%: the weights fit in the CPU's caches, so DRAM bandwidth does not bind."}]
    return {"data": data, "layout": layout}

"""The run's HTML page: one self-contained file (plotly.js inlined, no network), every text
escaped where it becomes HTML, and every plot's data embedded as JSON that cannot close its
<script> element.

A pure function of reports/<run-id>/run.json and cells/*.json, so `just report RUN_ID`
rebuilds it at any time, with other decision-guide constraints if asked.
"""
import json
from functools import cache
from html import escape
from pathlib import Path

from evaluator import store
from evaluator.report import configs as configs_mod
from evaluator.report import guide, plots, tables

# Every metric of every cell, for the reader who wants more than the comparison table:
# (title, scenario, how to read the number from a cell, unit, better)
def _with_ci(read_stat, metric):
    """A latency metric's statistic and its 95% interval: (value, [lo, hi])."""
    return lambda c: (c["metrics"][metric][read_stat], c["metrics"][metric].get(f"{read_stat}_ci"))


METRICS = [
    ("End-to-end latency, median", "latency", _with_ci("p50", "e2e_ms"), "ms", "lower"),
    ("End-to-end latency, mean", "latency", _with_ci("mean", "e2e_ms"), "ms", "lower"),
    ("End-to-end latency, p99 (where the sample supports it)", "latency", _with_ci("p99", "e2e_ms"), "ms", "lower"),
    ("Time to first token, median", "latency", _with_ci("p50", "ttft_ms"), "ms", "lower"),
    ("Inter-token latency, median", "latency", _with_ci("p50", "itl_ms"), "ms", "lower"),
    ("Time per output token, median", "latency", _with_ci("p50", "tpot_ms"), "ms", "lower"),
    ("Prefill speed, median", "latency", _with_ci("p50", "prefill_tokens_per_s"), "tokens/s", "higher"),
    ("Decode speed, median", "latency", _with_ci("p50", "decode_tokens_per_s"), "tokens/s", "higher"),
    ("Timed requests", "latency", lambda c: c["iterations"], "requests", "higher"),
    ("Best throughput over batch sizes, median", "throughput",
     lambda c: (c["metrics"]["best_tokens_per_s"], c["metrics"].get("best_tokens_per_s_ci")), "tokens/s", "higher"),
    ("HellaSwag acc_norm", "quality", lambda c: c["metrics"]["hellaswag"]["acc_norm"]["value"], "share", "higher"),
    ("HellaSwag acc", "quality", lambda c: c["metrics"]["hellaswag"]["acc"]["value"], "share", "higher"),
    ("HellaSwag items scored", "quality", lambda c: c["metrics"]["hellaswag"]["items"], "items", "higher"),
    ("WikiText-2 token perplexity (rolling)", "quality", lambda c: (c["metrics"]["perplexity"]["rolling"]["token_perplexity"],
                                                                      c["metrics"]["perplexity"]["rolling"].get("token_perplexity_ci")), "", "lower"),
    ("WikiText-2 word perplexity", "quality", lambda c: c["metrics"]["perplexity"]["rolling"]["word_perplexity"], "", "lower"),
    ("WikiText-2 bits per byte", "quality", lambda c: c["metrics"]["perplexity"]["rolling"]["bits_per_byte"], "bits", "lower"),
    ("WikiText-2 perplexity, llama-perplexity compatible", "quality", lambda c: c["metrics"]["perplexity"]["llamacpp"]["token_perplexity"], "", "lower"),
    ("KL divergence from the reference, mean", "quality", lambda c: (c["fidelity"]["kl_mean"], c["fidelity"].get("kl_mean_ci")), "nats", "lower"),
    ("KL divergence from the reference, p99", "quality", lambda c: c["fidelity"]["kl_p99"], "nats", "lower"),
    ("Top-1 agreement with the reference", "quality",
     lambda c: (c["fidelity"]["top1_agreement"], c["fidelity"].get("top1_agreement_ci")), "share", "higher"),
    ("Mean |Δp| of the correct token vs the reference", "quality", lambda c: c["fidelity"]["mean_abs_dp_correct"], "probability", "lower"),
    ("Peak RSS", None, lambda c: c["memory"]["peak_rss_bytes"] / 2**20, "MiB", "lower"),
    ("Peak device memory, allocator (live tensors)", None, lambda c: c["memory"]["peak_device_bytes"] / 2**20, "MiB", "lower"),
    ("Device memory held, NVML per process (CUDA context included)", None,
     lambda c: c["memory"]["process_device_bytes"] / 2**20, "MiB", "lower"),
    ("Load time", None, lambda c: c["load"]["load_s"], "s", "lower"),
    ("of which compile time (torch.compile)", None, lambda c: c["load"]["compile_s"], "s", "lower"),
    ("Model size on disk (the artifact the engine loads)", None,
     lambda c: (c["load"].get("artifact") or {}).get("size_bytes", c["model"]["size_bytes"]) / 2**20, "MiB", "lower"),
]

DEFINITIONS = [
    ("End-to-end latency", "end_ns − start_ns of one request, prompt in and every new token out, on the runner's own "
     "monotonic clock around the engine call (the pipe, JSON and the evaluator never enter it), over the timed "
     "requests at batch 1; raw samples are kept in the cell file."),
    ("Precision (±)", "every timed number carries its 95% interval: medians and percentiles from order statistics "
     "(exact, distribution-free), means by a seeded percentile bootstrap. A latency loop samples until every headline "
     "median's interval is within --precision (2%) of it, or its time cap; otherwise the cell is INVALID and says "
     "which precision it reached. p95 is shown only from 72 requests, p99 from 368 (below that the sample cannot "
     "bound them). ± is the interval's half-width relative to the value; hover for the interval."),
    ("Time to first token (TTFT)", "token_ns[0] − start_ns: the prefill of the whole prompt and the first step."),
    ("Inter-token latency", "every gap token_ns[i] − token_ns[i−1] of every timed request."),
    ("Decode speed", "(new_tokens − 1) / (token_ns[−1] − token_ns[0]): the first token belongs to the prefill."),
    ("Throughput", "batch × new_tokens / end-to-end time, for each batch size of the sweep; the best is shown."),
    ("Peak memory", "since load, the same for every engine: on a GPU the device memory the driver holds for the "
     "runner process (NVML's per-process view: CUDA context and the allocator's cached pool included; the "
     "allocator's own peak of live tensors where NVML cannot see the process), on a CPU the runner process's "
     "peak resident set (VmHWM, reset when the model is loaded): what must fit on the device."),
    ("Energy per token", "energy counters (RAPL on CPUs, NVML on NVIDIA GPUs) read by the runner around the timed "
     "requests, divided by the tokens they generated; shown only where the target exposes a counter."),
    ("HellaSwag acc_norm", "per item, each ending's summed token log-probability after the context, divided by the "
     "ending's length in characters; correct when the gold ending scores highest (lm-evaluation-harness's definition). "
     "acc is the same without the division."),
    ("Perplexity", "WikiText-2 test as one token stream, rolling windows of min(context, 1024) tokens advancing by half "
     "a window; every token scored once with at least half a window of context; exp(mean negative log-likelihood)."),
    ("KL divergence, top-1 agreement", "against the reference variant on the same target, over the first rolling "
     "windows: KL over the tokens in both top-10 lists plus one bucket for the rest (a lower bound of the full KL); "
     "top-1 agreement is the share of positions where both put the same token first."),
    ("Quality gate", "each variant against the reference on the same items (paired): the loss is the acc_norm drop "
     "or the perplexity rise, as a share of the reference's, with a 95% interval (HellaSwag: Agresti–Min interval "
     "for matched proportions, McNemar's exact test; perplexity: ratio estimator over windows). PASS when the whole "
     "interval is within the allowed loss (--max-quality-loss, 1%), FAIL when it is wholly beyond, INCONCLUSIVE "
     "otherwise, with the items that would likely decide it. With --quality-items auto, HellaSwag is scored in a "
     "seeded order and stops once the verdict is known; the intervals then use a group-sequential boundary that "
     "keeps them 95% across every look."),
    ("Bandwidth ceiling", "each decoded token reads every weight once, so decode tokens/s ≤ memory bandwidth / model "
     "bytes; the bandwidth is probed on this machine right before and after the cell, or the target's spec."),
]

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1280px;color:#1a1a1a;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}h3{font-size:1.05em}
nav a{margin-right:1em}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ddd;padding:.25em .5em;text-align:right;vertical-align:top}th{background:#f4f4f4}
td.l,th.l{text-align:left}.ok{color:#17692b}.unsupported{color:#777}.bad{color:#b00020}.gated{color:#a15c00;font-weight:600}
.inconclusive{color:#2a4fa1;font-weight:600}.ci{color:#666}
.good{color:#17692b}.worse{color:#b00020}.best{font-weight:700;background:#eef7ee}
.why{font-size:12px;max-width:28em;white-space:normal;color:#444}
pre{background:#f7f7f7;padding:.5em;white-space:pre-wrap;max-height:12em;overflow:auto;font-size:12px}
dl{display:grid;grid-template-columns:max-content auto;gap:.1em 1em}dt{font-weight:600}
.verdict{background:#f3f8ff;border-left:4px solid #2a6fdb;padding:.5em 1em;margin:.5em 0}
.plot{min-height:320px}.banner{background:#fff3f3;border:1px solid #b00020;padding:.5em 1em}
"""


@cache
def plotly_js() -> str:
    """plotly.js from the plotly package, inlined so the page opens from disk with no network."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def script_json(obj) -> str:
    """JSON safe inside <script>: no '<', '>' or '&' survive, so nothing can close the element."""
    return (json.dumps(obj, allow_nan=False, default=str)
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def _metric_table(title, scenario, read, unit, better, cells, targets) -> str:
    rows = {}
    for c in cells:
        if c["scenario"]["name"] != (scenario or "latency") or c.get("status") != "ok":
            continue  # memory and load: one row per configuration, from its latency cell
        try:
            v = read(c)
        except (KeyError, TypeError):
            v = None
        rows.setdefault(f'{c["backend"]} · {c["variant"]}', {})[c["target"]["name"]] = v if isinstance(v, tuple) else (v, None)
    values = [v for r in rows.values() for v, _ in r.values() if v is not None]
    if not values:
        return ""
    best = min(values) if better == "lower" else max(values)
    head = "".join(f"<th>{escape(t)}</th>" for t in targets)
    body = ""
    for name, by_target in rows.items():
        tds = "".join(f'<td class="{"best" if by_target.get(t, (None,))[0] == best else ""}">'
                      f'{tables.fmt(by_target.get(t, (None,))[0])}{_interval(by_target.get(t, (None, None))[1])}</td>'
                      for t in targets)
        body += f'<tr><td class="l">{escape(name)}</td>{tds}</tr>'
    return (f"<h3>{escape(title)} <small>({escape(unit)}, {better} is better)</small></h3>"
            f'<table><tr><th class="l">backend · variant</th>{head}</tr>{body}</table>')


def _interval(ci) -> str:
    return f"<br><small>[{tables.fmt(ci[0])}, {tables.fmt(ci[1])}]</small>" if ci else ""


def _guide_html(decisions: list[dict]) -> str:
    out = ""
    for d in decisions:
        c = d["constraints"]
        asked = (f'budget {d["budget_gb"]:g} GB' if d["budget_gb"] else "no memory budget") + \
            f', quality gate: loss ≤ {c["max_quality_loss_pct"]:g}%' + \
            (f', p95 latency ≤ {c["max_latency_ms"]:g} ms' if c["max_latency_ms"] else "") + f', objective: {c["objective"]}'
        winner = (f'<b>Deploy {escape(d["winner"])}</b>: {escape(d["why"])}.' if d["winner"]
                  else f'<b>Nothing qualifies</b>: {escape(d["why"])}.')
        notes = "".join(f"<br><small>{escape(n)}</small>" for n in d["notes"])
        rows = "".join(f'<tr><td class="l">{escape(r["label"])}</td><td class="l">{escape(r["verdict"])}</td>'
                       f'<td class="l">{escape(r["reason"])}</td></tr>' for r in d["rows"])
        verdict_head = "how it compares" if any(r["verdict"] != "excluded" for r in d["rows"]) else "why it loses"
        out += (f'<h3>On {escape(d["target"])} <small>({escape(asked)})</small></h3><div class="verdict">{winner}{notes}</div>'
                + (f'<table><tr><th class="l">configuration</th><th class="l">verdict</th><th class="l">{verdict_head}</th></tr>'
                   f"{rows}</table>" if rows else ""))
    return out


def _provenance(run: dict, configs: list) -> str:
    host = run["host"]
    engines = ""
    seen = set()
    for c in configs:
        e = c.engine
        if not e or (c.backend, c.target_name) in seen:
            continue
        seen.add((c.backend, c.target_name))
        env = next((x.get("environment") for x in c.cells.values() if x.get("environment")), None)
        image = next((x.get("image") for x in c.cells.values() if x.get("image")), None)
        versions = ", ".join(f"{k} {v}" for k, v in sorted((e.get("versions") or {}).items()))
        build = ", ".join(f"{k}={v}" for k, v in sorted((e.get("build") or {}).items()))
        where = f'image {image.get("tag")} ({image.get("id")})' if image else (env or "")
        engines += (f'<tr><td class="l">{escape(c.backend)}</td><td class="l">{escape(c.target_name)}</td>'
                    f'<td class="l">{escape(str(e.get("engine", "")))} {escape(str(e.get("engine_version", "")))}</td>'
                    f'<td class="l">{escape(str(e.get("device", "")))} {escape(str(e.get("gpu") or ""))}'
                    f'{escape(" driver " + str(e["driver"])) if e.get("driver") else ""}</td>'
                    f'<td class="l"><small>{escape(versions)}</small></td><td class="l"><small>{escape(build)}</small></td>'
                    f'<td class="l"><small>{escape(where)}</small></td></tr>')
    settings = ""
    for c in configs:
        loaded = next(((x.get("load") or {}).get("settings") for x in c.cells.values() if (x.get("load") or {}).get("settings")), None)
        if loaded:
            text = ", ".join(f"{k}={v}" for k, v in sorted(loaded.items()))
            settings += (f'<tr><td class="l">{escape(c.backend)} · {escape(c.variant)}</td><td class="l">{escape(c.target_name)}</td>'
                         f'<td class="l"><small>{escape(text)}</small></td></tr>')
    targets = "".join(
        f'<tr><td class="l">{escape(t["name"])}</td><td class="l">{escape(str(t.get("transport")))}</td>'
        f'<td class="l">{escape(str(t.get("arch")))}</td><td class="l">{escape(str(t.get("accelerator")))} {escape(str(t.get("gpu") or ""))}</td>'
        f'<td>{tables.fmt(t.get("memory_gb"))} GB</td><td>{tables.fmt(t.get("memory_bandwidth_gbs"))} GB/s</td></tr>'
        for t in run["targets"])
    return f"""<dl>
<dt>host</dt><dd>{escape(host["cpu"])}, {host["cpus"]} CPUs, {host["memory_gb"]} GB, {escape(host["os"])}, {escape(host["arch"])}, Python {escape(host["python"])}</dd>
<dt>git revision</dt><dd>{escape(host["git_revision"])}</dd>
<dt>command</dt><dd><code>just eval {escape(" ".join(run.get("argv") or []))}</code></dd>
<dt>host packages</dt><dd>{escape(", ".join(f"{k} {v}" for k, v in host.get("packages", {}).items()))}</dd>
</dl>
<h3>Targets</h3><table><tr><th class="l">target</th><th class="l">transport</th><th class="l">arch</th><th class="l">device</th><th>memory</th><th>bandwidth (spec)</th></tr>{targets}</table>
<h3>Engines</h3><table><tr><th class="l">backend</th><th class="l">target</th><th class="l">engine</th><th class="l">device</th><th class="l">versions</th><th class="l">build flags</th><th class="l">environment / image</th></tr>{engines}</table>
<h3>Engine settings per configuration</h3><p>Threads, caches and reservations as each engine took them at load.</p>
<table><tr><th class="l">backend · variant</th><th class="l">target</th><th class="l">settings</th></tr>{settings}</table>"""


def render(run: dict, cells: list[dict], constraints: guide.Constraints | None = None, inline_js: bool = True) -> str:
    constraints = constraints or guide.Constraints(**run.get("guide", {}))
    configs = configs_mod.group(cells)
    targets = [t["name"] for t in run["targets"]]
    scenario_names = [s["name"] for s in run.get("scenarios", [])] or sorted({c["scenario"]["name"] for c in cells})
    model = run["model"]
    reference = run.get("reference")

    decisions = [guide.decide(configs, t, reference, constraints) for t in run["targets"]]
    comparisons = "".join(f"<h3>On {escape(t)}</h3>{tables.comparison(configs, t, reference, constraints.margin)}"
                          for t in targets)
    no_energy = sorted({f'{c.target_name}: {(c.cell("latency").get("energy") or {}).get("unavailable")}'
                        for c in configs if c.cell("latency") and (c.cell("latency").get("energy") or {}).get("unavailable")})
    if no_energy:
        comparisons += f'<p><small>Energy not measured on {escape("; ".join(no_energy))}.</small></p>'


    from evaluator.catalog.targets import memory_sizes
    # The devices users ask "does it fit?" about, as known when the run started (run.json): the
    # page is a function of the stored run. Runs from before that record get the built-in catalog.
    sizes = {}
    for name, gb in (run.get("memory_sizes") or memory_sizes(include_user=False)).items():
        sizes.setdefault(gb, name)
    for t in run["targets"]:
        sizes[t["memory_gb"]] = t["name"]
    figures = [("Quality against speed", plots.quality_vs_speed(configs, t, constraints.margin)) for t in targets]
    figures += [("What fits where", plots.memory_fit(configs, {v: k for k, v in sizes.items()})),
                ("Latency distribution", plots.latency_distribution(configs)),
                ("Throughput against batch size", plots.throughput_vs_batch(configs)),
                ("Against the hardware's limit", plots.bandwidth_ceiling(configs))]
    figures = [(title, fig) for title, fig in figures if fig]
    plot_divs = "".join(f'<div class="plot" id="plot-{i}"></div>'
                        f'<script type="application/json" id="plot-{i}-data">{script_json(fig)}</script>'
                        for i, (_, fig) in enumerate(figures))

    tables_html = "".join(_metric_table(*m, cells, targets) for m in METRICS)
    scopes = ""
    for c in cells:
        if c["scenario"]["name"] != "quality" or c.get("status") != "ok":
            continue
        hs, ppl = c["metrics"]["hellaswag"], c["metrics"]["perplexity"]
        order = hs.get("order") or {}
        subset = (f'the first {hs["items"]:,} in the seeded order (seed {order.get("seed")}; items: {order.get("mode")}; '
                  f'stopped: {order.get("stopped")})' if hs["items"] < hs["of"] else "the whole validation set")
        defs = "; ".join(f'{k}: {v["definition"]}' for k, v in ppl.items())
        scopes += (f'<li>{escape(c["backend"])} · {escape(c["variant"])} · {escape(c["target"]["name"])}: HellaSwag '
                   f'{hs["items"]:,} of {hs["of"]:,} items ({escape(subset)}); perplexity {escape(defs)}</li>')
    texts = "".join(
        f'<h3>{escape(c["backend"])} · {escape(c["variant"])} · {escape(c["target"]["name"])}</h3>'
        f'<pre>{escape(c["check"]["text"])}</pre>'
        for c in cells if c.get("status") == "ok" and c.get("check"))
    banners = ""
    if model.get("synthetic"):
        banners += ('<p class="banner">Synthetic model: a real architecture with seeded random weights, for speed and '
                    'memory only. Its greedy text is gibberish and its quality numbers mean nothing.</p>')
    missing = [cid for cid in run.get("planned_cells", []) if cid not in {c["cell_id"] for c in cells}]
    if missing:
        banners += (f'<p class="banner">{len(missing)} planned cells have no result (the run was interrupted; '
                    f'<code>just eval --resume {escape(run["run_id"])}</code> finishes it): {escape(", ".join(missing))}</p>')
    failed = [c for c in cells if c["status"] not in ("ok", "unsupported")]
    if failed:
        banners += f'<p class="banner">{len(failed)} cells failed; each says why in the matrix below.</p>'
    definitions = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in DEFINITIONS)
    js = (f"<script>{plotly_js()}</script>" if inline_js else "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>deploy-eval · {escape(model["name"])} · {escape(run["run_id"])}</title>
<style>{CSS}</style>{js}</head><body>
<h1>deploy-eval: {escape(model["name"])}</h1>
<p>run {escape(run["run_id"])}, started {escape(run["started_at"])} · {escape(model["source"])},
{model["size_bytes"] / 2**20:,.2f} MiB of weights, sha256 {escape(model["sha256"][:16])}… · targets {escape(", ".join(targets))}</p>
<nav><a href="#guide">Decision guide</a><a href="#compare">Comparison</a><a href="#plots">Plots</a><a href="#matrix">Every cell</a>
<a href="#metrics">All metrics</a><a href="#definitions">Definitions</a><a href="#provenance">Provenance</a></nav>
{banners}
<h2 id="guide">Decision guide</h2>
<p>The configurations measured in this run, held to the constraints below (set them with <code>just eval</code> or
<code>just report RUN_ID --memory-budget GB --max-quality-loss PCT --max-latency-ms MS --objective
{escape("|".join(guide.OBJECTIVES))}</code>).</p>
{_guide_html(decisions)}
<h2 id="compare">Comparison</h2>
<p>Per configuration, against the baseline row (the reference variant, {escape(reference or "none")}).</p>
{comparisons}
<h2 id="plots">Plots</h2>
{plot_divs}
<h2 id="matrix">Every cell</h2>
{tables.status_matrix(configs, targets, scenario_names, constraints.margin)}
<h2 id="metrics">All metrics</h2>
<details><summary>Every metric per configuration and target (best in bold)</summary>{tables_html}</details>
{f"<h3>What the quality numbers cover</h3><ul>{scopes}</ul>" if scopes else ""}
<h3>Greedy output from BOS (the check run before timing)</h3>
{texts}
<h2 id="definitions">Definitions</h2>
<dl>{definitions}</dl>
<h2 id="provenance">Provenance</h2>
{_provenance(run, configs)}
<script>
document.querySelectorAll("div.plot").forEach(function (div) {{
  var fig = JSON.parse(document.getElementById(div.id + "-data").textContent);
  Plotly.newPlot(div, fig.data, fig.layout, {{responsive: true, displaylogo: false}});
}});
</script>
</body></html>
"""


def build(path: Path, constraints: guide.Constraints | None = None) -> Path:
    run, cells = store.load_run(path)
    out = path / "index.html"
    store.write_atomic(out, render(run, cells, constraints))
    return out

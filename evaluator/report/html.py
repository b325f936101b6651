"""The run's HTML page: one self-contained file (plotly.js inlined, no network), rendered from
templates/report.html.j2 by Jinja2 with autoescaping, so every value is text unless a template
says otherwise; the only markup that enters from Python is plot data as JSON that cannot close
its <script> element (script_json).

A pure function of reports/<run-id>/run.json and cells/*.json, so `just report RUN_ID`
rebuilds it at any time, with other decision-guide constraints if asked. The "All metrics"
section is the export table (export.py), the one `just export` writes.
"""
import json
from functools import cache
from pathlib import Path

import jinja2
from markupsafe import Markup

from evaluator import store
from evaluator.report import configs as configs_mod
from evaluator.report import export, guide, light_load, plots, tables
from evaluator.report import techniques as techniques_mod
from evaluator.score import reuse

TEMPLATES = Path(__file__).with_name("templates")

DEFINITIONS = [
    ("End-to-end latency", "end_ns − start_ns of one request, prompt in and every new token out, on the runner's own "
     "monotonic clock around the engine call (the pipe, JSON and the evaluator never enter it), over the timed "
     "requests at batch 1; raw samples are kept in the cell file. Timed requests take 8 distinct prompts of the same "
     "length in turn (throughput: 4 distinct batches), the same for every engine, so no engine's prefix cache can "
     "answer a repeated prompt."),
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
    ("Energy per token", "the runner machine's energy counters (RAPL on CPUs, NVML on NVIDIA GPUs; on Jetson boards "
     "and the Raspberry Pi 5 their power sensors sampled at 10 Hz and integrated) read around the timed requests, "
     "divided by the tokens they generated, with its 95% interval (a counter's resolution, a sampled sensor's standard "
     "error); idle draw included, and beside it the share above the idle power measured after load; an external "
     "meter's log (a target's power_log) over the same stretch in the cell file. Shown only where the target exposes "
     "one."),
    ("HellaSwag acc_norm", "per item, each ending's summed token log-probability after the context, divided by the "
     "ending's length in characters; correct when the gold ending scores highest (lm-evaluation-harness's definition). "
     "acc is the same without the division."),
    ("Perplexity", "WikiText-2 test as one token stream, rolling windows of min(context, 1024) tokens advancing by half "
     "a window; every token scored once with at least half a window of context; exp(mean negative log-likelihood)."),
    ("KL divergence, top-1 agreement", "against the reference variant on the same target, over the first rolling "
     "windows: where the vocabulary has at most 1,024 tokens, over the whole of it (exact, as llama-perplexity "
     "--kl-divergence computes it); above that, over the reference's top-64 tokens, each its own bucket, plus one "
     "bucket for the rest, the variant sent those very ids so both sides share the partition (a lower bound of the "
     "full KL, tight where those tokens hold most of the reference's mass: the share is in the export table). With "
     "--ppl-llamacpp the same on the first llama-perplexity chunks. Top-1 agreement is the share of positions where "
     "both put the same token first."),
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


@cache
def plotly_js() -> str:
    """plotly.js from the plotly package, inlined so the page opens from disk with no network."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def script_json(obj) -> Markup:
    """JSON safe inside <script>: no '<', '>' or '&' survive, so nothing can close the element."""
    return Markup(json.dumps(obj, allow_nan=False, default=str)
                  .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = tables.fmt
    env.filters["script_json"] = script_json
    return env


def metric_blocks(cells: list[dict], targets: list[str]) -> list[dict]:
    """The export table pivoted for reading: one block per metric and statistic, one row per
    configuration (and scenario, where a metric comes from several), one column per target."""
    blocks: dict[tuple, dict] = {}
    several = len({(c.get("model") or {}).get("name") for c in cells}) > 1  # rows then name their model
    for cell in cells:
        for r in export.cell_rows(cell):
            title, better = export.describe(r["metric"])
            block = blocks.setdefault((r["metric"], r["statistic"]), {
                "title": title, "statistic": r["statistic"], "unit": r["unit"], "better": better, "rows": {}, "scenarios": set()})
            block["scenarios"].add(r["scenario"])
            row = block["rows"].setdefault((r["model"] if several else "", r["backend"], r["variant"], r["scenario"]), {})
            row[r["target"]] = r
    out = []
    for block in blocks.values():
        mib = block["unit"] == "bytes"  # memory reads better in MiB
        scale = 2**20 if mib else 1
        values = [r["value"] / scale for row in block["rows"].values() for r in row.values() if r["value"] is not None]
        best = (min if block["better"] == "lower" else max)(values) if values else None
        rows = []
        for (model, backend, variant, scenario), by_target in block["rows"].items():
            label = (f"{model} · " if model else "") + f"{backend} · {variant}" + (f" ({scenario})" if len(block["scenarios"]) > 1 else "")
            shown = []
            for t in targets:
                r = by_target.get(t)
                value = None if r is None or r["value"] is None else r["value"] / scale
                ci = None if r is None or r["ci_low"] is None else (r["ci_low"] / scale, r["ci_high"] / scale)
                shown.append({"best": value is not None and value == best, "value": value, "ci": ci})
            rows.append({"label": label, "values": shown})
        out.append(dict(block, unit="MiB" if mib else block["unit"], rows=rows))
    return out


def _asked(d: dict) -> str:
    c = d["constraints"]
    return ((f'budget {d["budget_gb"]:g} GB' if d["budget_gb"] else "no memory budget")
            + f', quality gate: loss ≤ {c["max_quality_loss_pct"]:g}%'
            + (f', p95 latency ≤ {c["max_latency_ms"]:g} ms' if c["max_latency_ms"] else "") + f', objective: {c["objective"]}')


def _driver(d) -> str:
    """The NVIDIA driver a GPU engine ran under (runs from before the check stored a string)."""
    if isinstance(d, dict):
        return f' driver {d["version"]} (CUDA {d["cuda"]})' if d.get("version") else ""
    return f" driver {d}" if d else ""


def _engines(configs: list) -> tuple[list[dict], list[dict]]:
    """Per backend and target, the engine and where it ran; per configuration, its load settings."""
    engines, settings, seen = [], [], set()
    for c in configs:
        e = c.engine
        if e and (c.backend, c.target_name) not in seen:
            seen.add((c.backend, c.target_name))
            env = next((x.get("environment") for x in c.cells.values() if x.get("environment")), None)
            image = next((x.get("image") for x in c.cells.values() if x.get("image")), None)
            engines.append({
                "backend": c.backend, "target": c.target_name,
                "engine": f'{e.get("engine", "")} {e.get("engine_version", "")}',
                "device": f'{e.get("device", "")} {e.get("gpu") or ""}' + _driver(e.get("driver")),
                "versions": ", ".join(f"{k} {v}" for k, v in sorted((e.get("versions") or {}).items())),
                "build": ", ".join(f"{k}={v}" for k, v in sorted((e.get("build") or {}).items())),
                "where": f'image {image.get("tag")} ({image.get("id")})' if image else (env or "")})
        loaded = next(((x.get("load") or {}).get("settings") for x in c.cells.values() if (x.get("load") or {}).get("settings")), None)
        if loaded:
            settings.append({"label": c.label, "target": c.target_name,
                             "text": ", ".join(f"{k}={v}" for k, v in sorted(loaded.items()))})
    return engines, settings


def _figures(run: dict, configs: list, targets: list[str], margin: float) -> list[dict]:
    from evaluator.catalog.targets import memory_sizes
    # The devices users ask "does it fit?" about, as known when the run started (run.json): the
    # page is a function of the stored run. Runs from before that record get the built-in catalog.
    sizes = {}
    for name, gb in (run.get("memory_sizes") or memory_sizes(include_user=False)).items():
        sizes.setdefault(gb, name)
    for t in run["targets"]:
        sizes[t["memory_gb"]] = t["name"]
    figures = [("Quality against speed", plots.quality_vs_speed(configs, t, margin)) for t in targets]
    figures += [("What fits where", plots.memory_fit(configs, {v: k for k, v in sizes.items()})),
                ("Latency distribution", plots.latency_distribution(configs)),
                ("Throughput against batch size", plots.throughput_vs_batch(configs)),
                ("Serving under load", plots.serving_curve(configs)),
                ("Against the hardware's limit", plots.bandwidth_ceiling(configs))]
    return [{"title": title, "figure": fig} for title, fig in figures if fig]


def _scope(c: dict) -> str:
    hs, ppl = c["metrics"]["hellaswag"], c["metrics"]["perplexity"]
    order = hs.get("order") or {}
    subset = (f'the first {hs["items"]:,} in the seeded order (seed {order.get("seed")}; items: {order.get("mode")}; '
              f'stopped: {order.get("stopped")})' if hs["items"] < hs["of"] else "the whole validation set")
    defs = "; ".join(f'{k}: {v["definition"]}' for k, v in ppl.items())
    origin = reuse.reused_from(c)
    taken = (f'; the answers of the first {origin["items"]:,} items and their windows were reused from run '
             f'{origin["run_id"]} (measured {origin["started_at"]}: the same model bytes, backend files, evaluator code, '
             'data, options and machine; --rescore measures them again)' if origin else "")
    return (f'{c["backend"]} · {c["variant"]} · {c["target"]["name"]}: HellaSwag {hs["items"]:,} of {hs["of"]:,} items '
            f'({subset}); perplexity {defs}{taken}')


def render(run: dict, cells: list[dict], constraints: guide.Constraints | None = None, inline_js: bool = True) -> str:
    constraints = constraints or guide.Constraints(**run.get("guide", {}))
    configs = configs_mod.group(cells)
    targets = [t["name"] for t in run["targets"]]
    scenario_names = [s["name"] for s in run.get("scenarios", [])] or sorted({c["scenario"]["name"] for c in cells})
    reference = run.get("reference")
    no_energy = sorted({f'{c.target_name}: {(c.cell("latency").get("energy") or {}).get("unavailable")}'
                        for c in configs if c.cell("latency") and (c.cell("latency").get("energy") or {}).get("unavailable")})
    engines, settings = _engines(configs)
    decisions = [dict(d, asked=_asked(d)) for d in (guide.decide(configs, t, reference, constraints) for t in run["targets"])]
    return _environment().get_template("report.html.j2").render(
        run=run, model=run["model"], host=run["host"], targets=targets, reference=reference,
        objectives="|".join(guide.OBJECTIVES), decisions=decisions,
        comparisons=[{"target": t, "columns": [(h, u) for h, _, u in tables.columns(configs)],
                      "rows": tables.comparison(configs, t, reference, constraints.margin)} for t in targets],
        no_energy="; ".join(no_energy), figures=_figures(run, configs, targets, constraints.margin),
        matrix=tables.status_matrix(configs, targets, scenario_names, constraints.margin), scenarios=scenario_names,
        light_load=light_load.rows(configs), metric_blocks=metric_blocks(cells, targets), technique_sections=techniques_mod.sections(cells),
        scopes=[_scope(c) for c in cells if c["scenario"]["name"] == "quality" and c.get("status") == "ok"],
        texts=[c for c in cells if c.get("status") == "ok" and c.get("check")],
        reused=[f'{c["cell_id"]}: {o["items"]:,} items from run {o["run_id"]}' for c in cells if (o := reuse.reused_from(c))],
        missing=[cid for cid in run.get("planned_cells", []) if cid not in {c["cell_id"] for c in cells}],
        failed=[c for c in cells if c["status"] in store.FAILED],
        definitions=DEFINITIONS, engines=engines, settings=settings,
        css=(TEMPLATES / "report.css").read_text(), plotly_js=plotly_js() if inline_js else "")


def build(path: Path, constraints: guide.Constraints | None = None) -> Path:
    run, cells = store.load_run(path)
    out = path / "index.html"
    store.write_atomic(out, render(run, cells, constraints))
    return out

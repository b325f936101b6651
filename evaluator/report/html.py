"""The run's HTML page: self-contained, no network, every text escaped.

A pure function of reports/<run-id>/run.json and cells/*.json, so `just report RUN_ID`
rebuilds it at any time.
"""
from html import escape
from pathlib import Path

from evaluator import store

# (title, scenario, how to read the number from a cell, unit, better)
METRICS = [
    ("End-to-end latency, p50", "latency", lambda c: c["metrics"]["e2e_ms"]["p50"], "ms", "lower"),
    ("End-to-end latency, p99", "latency", lambda c: c["metrics"]["e2e_ms"]["p99"], "ms", "lower"),
    ("Time to first token, p50", "latency", lambda c: c["metrics"]["ttft_ms"]["p50"], "ms", "lower"),
    ("Inter-token latency, p50", "latency", lambda c: c["metrics"]["itl_ms"]["p50"], "ms", "lower"),
    ("Time per output token, mean", "latency", lambda c: c["metrics"]["tpot_ms"]["mean"], "ms", "lower"),
    ("Prefill speed, mean", "latency", lambda c: c["metrics"]["prefill_tokens_per_s"]["mean"], "tokens/s", "higher"),
    ("Decode speed, mean", "latency", lambda c: c["metrics"]["decode_tokens_per_s"]["mean"], "tokens/s", "higher"),
    ("Coefficient of variation of latency", "latency", lambda c: 100 * c["metrics"]["e2e_ms"]["cv"], "%", "lower"),
    ("Best throughput over batch sizes", "throughput", lambda c: c["metrics"]["best_tokens_per_s"], "tokens/s", "higher"),
    ("HellaSwag acc_norm", "quality", lambda c: c["metrics"]["hellaswag"]["acc_norm"]["value"], "share", "higher"),
    ("HellaSwag acc", "quality", lambda c: c["metrics"]["hellaswag"]["acc"]["value"], "share", "higher"),
    ("WikiText-2 token perplexity (rolling)", "quality", lambda c: c["metrics"]["perplexity"]["rolling"]["token_perplexity"], "", "lower"),
    ("WikiText-2 word perplexity", "quality", lambda c: c["metrics"]["perplexity"]["rolling"]["word_perplexity"], "", "lower"),
    ("WikiText-2 bits per byte", "quality", lambda c: c["metrics"]["perplexity"]["rolling"]["bits_per_byte"], "bits", "lower"),
    ("WikiText-2 perplexity, llama-perplexity compatible", "quality", lambda c: c["metrics"]["perplexity"]["llamacpp"]["token_perplexity"], "", "lower"),
    ("KL divergence from the reference, mean", "quality", lambda c: c["fidelity"]["kl_mean"], "nats", "lower"),
    ("KL divergence from the reference, p99", "quality", lambda c: c["fidelity"]["kl_p99"], "nats", "lower"),
    ("Top-1 agreement with the reference", "quality", lambda c: c["fidelity"]["top1_agreement"], "share", "higher"),
    ("Mean |Δp| of the correct token vs the reference", "quality", lambda c: c["fidelity"]["mean_abs_dp_correct"], "probability", "lower"),
    ("Peak RSS", None, lambda c: c["memory"]["peak_rss_bytes"] / 2**20, "MiB", "lower"),
    ("Peak device memory", None, lambda c: c["memory"]["peak_device_bytes"] / 2**20, "MiB", "lower"),
    ("Load time", None, lambda c: c["load"]["load_s"], "s", "lower"),
    ("of which compile time (torch.compile)", None, lambda c: c["load"]["compile_s"], "s", "lower"),
    ("Model size on disk (the artifact the engine loads)", None,
     lambda c: (c["load"].get("artifact") or {}).get("size_bytes", c["model"]["size_bytes"]) / 2**20, "MiB", "lower"),
]

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#1a1a1a;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}.ok{color:#17692b}.unsupported{color:#777}
.bad{color:#b00020;font-weight:600}.best{font-weight:700;background:#eef7ee}
pre{background:#f7f7f7;padding:.5em;white-space:pre-wrap;max-height:12em;overflow:auto;font-size:12px}
dl{display:grid;grid-template-columns:max-content auto;gap:.1em 1em}dt{font-weight:600}
"""


def _fmt(x) -> str:
    if x is None:
        return "–"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}" if abs(x) < 1 else f"{x:.2f}"


def _value(cell, read):
    if cell.get("status") != "ok":
        return None
    try:
        return read(cell)
    except (KeyError, TypeError):
        return None


def _status_class(status: str) -> str:
    return {"ok": "ok", "unsupported": "unsupported"}.get(status, "bad")


def _metric_table(title, scenario, read, unit, better, cells, targets) -> str:
    rows = {}
    for c in cells:
        if scenario and c["scenario"]["name"] != scenario:
            continue
        if not scenario and c["scenario"]["name"] != "latency":  # one row per configuration
            continue
        v = _value(c, read)
        rows.setdefault(f'{c["backend"]} · {c["variant"]}', {})[c["target"]["name"]] = v
    values = [v for r in rows.values() for v in r.values() if v is not None]
    if not values:
        return ""
    best = min(values) if better == "lower" else max(values)
    head = "".join(f"<th>{escape(t)}</th>" for t in targets)
    body = ""
    for name, by_target in rows.items():
        tds = ""
        for t in targets:
            v = by_target.get(t)
            tds += f'<td class="{"best" if v is not None and v == best else ""}">{_fmt(v)}</td>'
        body += f'<tr><td class="l">{escape(name)}</td>{tds}</tr>'
    return (f"<h3>{escape(title)} <small>({escape(unit)}, {better} is better)</small></h3>"
            f'<table><tr><th class="l">backend · variant</th>{head}</tr>{body}</table>')


def render(run: dict, cells: list[dict]) -> str:
    targets = [t["name"] for t in run["targets"]]
    model = run["model"]
    host = run["host"]
    status_rows = ""
    for c in cells:
        reason = escape(c.get("reason") or "")
        tail = f"<pre>{escape(c['log_tail'])}</pre>" if c.get("log_tail") else ""
        check = c.get("check") or {}
        match = {True: "✔ matches", False: f"✘ differs at char {check.get('first_divergence_char')}"}.get(
            check.get("matches_reference"), "")
        gate = c.get("quality_gate")
        if gate and not gate["passed"]:
            reason = escape("GATED for quality: " + "; ".join(gate["reasons"])) + (" " + reason if reason else "")
        status_rows += (f'<tr><td class="l">{escape(c["cell_id"])}</td>'
                        f'<td class="l {_status_class(c["status"])}">{escape(c["status"])}</td>'
                        f'<td class="l">{escape(match)}</td><td class="l">{reason}{tail}</td></tr>')
    tables = "".join(_metric_table(*m, cells, targets) for m in METRICS)
    scopes = ""
    for c in cells:
        if c["scenario"]["name"] != "quality" or c.get("status") != "ok":
            continue
        hs, ppl = c["metrics"]["hellaswag"], c["metrics"]["perplexity"]
        subset = (f'seeded subset: limit {hs["subset"]["limit"]}, seed {hs["subset"]["seed"]}' if hs.get("subset")
                  else "the whole validation set")
        defs = "; ".join(f'{escape(k)}: {escape(v["definition"])}' for k, v in ppl.items())
        scopes += (f'<li>{escape(c["backend"])} · {escape(c["variant"])} · {escape(c["target"]["name"])}: HellaSwag '
                   f'{hs["items"]:,} of {hs["of"]:,} items ({escape(subset)}); perplexity {defs}</li>')
    if scopes:
        tables += f"<h3>What the quality numbers cover</h3><ul>{scopes}</ul>"
    texts = "".join(
        f'<h3>{escape(c["backend"])} · {escape(c["variant"])} · {escape(c["target"]["name"])}</h3>'
        f'<pre>{escape(c["check"]["text"])}</pre>'
        for c in cells if c.get("status") == "ok" and c.get("check"))
    synthetic_html = ('<p class="bad">Synthetic model: a real architecture with seeded random weights, for speed and '
                      'memory only. Its greedy text is gibberish and its quality numbers mean nothing.</p>'
                      if model.get("synthetic") else "")
    missing = [cid for cid in run.get("planned_cells", []) if cid not in {c["cell_id"] for c in cells}]
    missing_html = (f'<p class="bad">{len(missing)} planned cells have no result (the run was interrupted): '
                    f'{escape(", ".join(missing))}</p>') if missing else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>deploy-eval · {escape(model["name"])} · {escape(run["run_id"])}</title>
<style>{CSS}</style></head><body>
<h1>deploy-eval: {escape(model["name"])}</h1>
<dl>
<dt>run</dt><dd>{escape(run["run_id"])} (started {escape(run["started_at"])})</dd>
<dt>model</dt><dd>{escape(model["source"])}, {model["size_bytes"] / 2**20:.2f} MiB of weights, sha256 {escape(model["sha256"][:16])}…</dd>
<dt>host</dt><dd>{escape(host["cpu"])}, {host["cpus"]} CPUs, {host["memory_gb"]} GB, {escape(host["os"])}, Python {escape(host["python"])}</dd>
<dt>git</dt><dd>{escape(host["git_revision"])}</dd>
<dt>targets</dt><dd>{escape(", ".join(targets))}</dd>
</dl>
{synthetic_html}{missing_html}
<h2>Cells</h2>
<table><tr><th class="l">cell</th><th class="l">status</th><th class="l">greedy check vs reference</th><th class="l">reason</th></tr>{status_rows}</table>
<h2>Metrics</h2>
<p>All durations come from the runner's own clock around the engine call. TTFT: request start to first token
(includes prefill). Inter-token latency: gap between consecutive tokens. Decode speed excludes the first token.
HellaSwag acc_norm: the ending with the highest log-probability per character. Rolling perplexity: every WikiText-2
token scored once with at least half a window of context; word perplexity and bits per byte normalize the same
log-likelihood by words and bytes. KL: over the tokens in both top-k lists plus one bucket for the rest (a lower
bound of the full KL). Definitions in full: README.md.</p>
{tables}
<h2>Greedy output from BOS (the check run before timing)</h2>
{texts}
</body></html>
"""


def build(path: Path) -> Path:
    run, cells = store.load_run(path)
    out = path / "index.html"
    store.write_atomic(out, render(run, cells))
    return out

"""A run's results as one tidy table: one row per configuration x metric x statistic.

Columns: run_id, model, backend, variant, target, scenario, metric, statistic, value, ci_low,
ci_high, unit, n, valid. `ci_low`/`ci_high` are the 95% interval of that statistic where one
was measured (empty otherwise); `n` the samples, items or windows behind it; `valid` the timing
verdict (VALID/INVALID) of the loop it came from, empty for quality. Read only from the stored
cells, so it is a function of the run, like the report:

    just export RUN_ID --format csv|parquet|md  [--out FILE]

pandas reads it as it is: pd.read_csv(path) or pd.read_parquet(path).
"""
import csv
import io
from dataclasses import dataclass
from pathlib import Path

from evaluator import store

COLUMNS = ("run_id", "model", "backend", "variant", "target", "scenario", "metric", "statistic", "value",
           "ci_low", "ci_high", "unit", "n", "valid")
FORMATS = ("csv", "parquet", "md")
TIMED = ("e2e_ms", "ttft_ms", "tpot_ms", "itl_ms", "prefill_tokens_per_s", "decode_tokens_per_s")

# What the report calls each metric, and which way is better ("lower"/"higher"); its "All
# metrics" section is this table, one block per metric and statistic.
DESCRIBED = {
    "e2e_ms": ("End-to-end latency", "lower"), "ttft_ms": ("Time to first token", "lower"),
    "tpot_ms": ("Time per output token", "lower"), "itl_ms": ("Inter-token latency", "lower"),
    "prefill_tokens_per_s": ("Prefill speed", "higher"), "decode_tokens_per_s": ("Decode speed", "higher"),
    "timed_requests": ("Timed requests", "higher"), "tokens_per_s_best_batch": ("Throughput, best batch size", "higher"),
    "hellaswag_acc": ("HellaSwag acc", "higher"), "hellaswag_acc_norm": ("HellaSwag acc_norm", "higher"),
    "wikitext2_token_perplexity": ("WikiText-2 token perplexity", "lower"),
    "wikitext2_word_perplexity": ("WikiText-2 word perplexity", "lower"),
    "wikitext2_bits_per_byte": ("WikiText-2 bits per byte", "lower"),
    "llamacpp_perplexity": ("WikiText-2 perplexity, llama-perplexity compatible", "lower"),
    "kl": ("KL divergence from the reference", "lower"), "top1_agreement": ("Top-1 agreement with the reference", "higher"),
    "mean_abs_dp_correct": ("Mean |Δp| of the correct token vs the reference", "lower"),
    "reference_mass_covered": ("Reference's probability mass in the KL's own buckets (1: exact KL)", "higher"),
    "quality_loss_acc_norm": ("Quality loss vs the reference, acc_norm", "lower"),
    "quality_loss_perplexity": ("Quality loss vs the reference, perplexity", "lower"),
    "rss_after_load": ("Resident memory after load", "lower"), "peak_rss": ("Peak RSS", "lower"),
    "peak_device_allocator": ("Peak device memory, allocator (live tensors)", "lower"),
    "device_held_nvml": ("Device memory held, NVML per process (CUDA context included)", "lower"),
    "energy_per_token": ("Energy per token", "lower"),
    "load_time": ("Load time", "lower"), "compile_time": ("of which compile time", "lower"),
    "model_file": ("Model size on disk (the artifact the engine loads)", "lower"),
}


def describe(metric: str) -> tuple[str, str]:
    """(title, better) of a metric name of this table."""
    if metric.startswith("tokens_per_s@batch"):
        return f"Throughput at batch {metric.removeprefix('tokens_per_s@batch')}", "higher"
    return DESCRIBED.get(metric, (metric, "lower"))


def _ci(summary: dict, key: str) -> tuple:
    ci = summary.get(f"{key}_ci")
    return (ci[0], ci[1]) if ci else (None, None)


def _timed(summary: dict, metric: str, valid) -> list[dict]:
    rows = []
    for stat in ("p50", "mean", "p95", "p99"):
        if summary.get(stat) is not None:
            lo, hi = _ci(summary, stat)
            rows.append({"metric": metric, "statistic": "median" if stat == "p50" else stat, "value": summary[stat],
                         "ci_low": lo, "ci_high": hi, "unit": summary.get("unit"), "n": summary.get("n"), "valid": valid})
    return rows


def _verdict(cell: dict):
    validity = cell.get("validity")
    return None if not validity else ("VALID" if validity["valid"] else "INVALID")


def _energy_rows(e: dict) -> list[dict]:
    """Energy per token (the counters', with the interval they allow; above idle; an external
    meter's), each statistic naming its method."""
    rows, tokens = [], e.get("tokens")
    if e.get("joules_per_token") is not None:
        half = e.get("joules_ci95")
        per, methods = e["joules_per_token"], "; ".join(sorted(set((e.get("methods") or {}).values())))
        rows.append({"metric": "energy_per_token", "statistic": f"total: {methods}", "value": per,
                     "ci_low": per - half / tokens if half is not None else None,
                     "ci_high": per + half / tokens if half is not None else None, "unit": "J/token", "n": tokens})
        if e.get("joules_per_token_above_idle") is not None:
            rows.append({"metric": "energy_per_token", "statistic": f"above idle ({fmt_watts(e['idle_watts'])} idle)",
                         "value": e["joules_per_token_above_idle"], "unit": "J/token", "n": tokens})
    meter = e.get("meter") or {}
    if meter.get("joules_per_token") is not None:
        half = meter["joules_ci95"]
        rows.append({"metric": "energy_per_token", "statistic": meter["method"], "value": meter["joules_per_token"],
                     "ci_low": meter["joules_per_token"] - half / tokens, "ci_high": meter["joules_per_token"] + half / tokens,
                     "unit": "J/token", "n": tokens})
    return rows


def _serving_rows(m: dict) -> list[dict]:
    """Per rate: the latency distributions (from each request's scheduled arrival), the rates
    achieved over the run, goodput under the SLO; then the heaviest rate within the SLO."""
    rows = []
    for r in m.get("per_rate", []):
        valid, at = "VALID" if r["valid"] else "INVALID", f"@{r['rate']:g}/s" if "rate" in r else f"@{r['concurrency']}users"
        for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "queued_ms"):
            if key in r:  # queued_ms: where the engine counts its queueing time (vLLM)
                rows += _timed(r[key], f"serving_{key.removesuffix('_ms')}{at}", valid)
        for key, unit in (("requests_per_s", "requests/s"), ("output_tokens_per_s", "tokens/s"), ("goodput_per_s", "requests/s")):
            if r.get(key) is not None:
                rows.append({"metric": f"serving_{key}{at}", "statistic": "over the run", "value": r[key], "unit": unit,
                             "n": r["requests"], "valid": valid})
        if r.get("slo_verdict"):  # with its Wilson interval: "within" only when all of it is above the share (runs since 12-04)
            rows.append({"metric": f"serving_slo_share{at}", "statistic": f"share meeting the SLO: {r['slo_verdict']}",
                         "value": r["slo_share"], "ci_low": r["slo_share_ci"][0], "ci_high": r["slo_share_ci"][1],
                         "unit": "share", "n": r["requests"], "valid": valid})
    if m.get("max_rate_within_slo") is not None:
        slo = ", ".join(f"{k} <= {v:g} ms" for k, v in m["slo"].items())
        rows.append({"metric": "serving_max_rate_within_slo", "statistic": f"{m['slo_share']:.0%} of requests: {slo}",
                     "value": m["max_rate_within_slo"], "unit": "requests/s"})
    return rows


def fmt_watts(w: float) -> str:
    return f"{w:.3g} W"


def cell_rows(cell: dict) -> list[dict]:
    """The tidy rows of one stored cell (none for a cell that did not end ok)."""
    if cell.get("status") != "ok":
        return []
    m, rows = cell.get("metrics") or {}, []
    scenario = cell["scenario"]["name"]
    if scenario == "latency":
        for metric in TIMED:
            if metric in m:
                rows += _timed(m[metric], metric, _verdict(cell))
    elif scenario == "throughput":
        for b in m.get("per_batch", []):
            if "tokens_per_s" in b:
                valid = "VALID" if b["validity"]["valid"] else "INVALID"
                rows += _timed(b["tokens_per_s"], f"tokens_per_s@batch{b['batch_size']}", valid)
    elif scenario == "serving":
        rows += _serving_rows(m)
    elif scenario == "quality":
        hs = m.get("hellaswag") or {}
        for name in ("acc", "acc_norm"):
            if name in hs:
                lo, hi = hs[name].get("wilson95") or (None, None)
                rows.append({"metric": f"hellaswag_{name}", "statistic": "share", "value": hs[name]["value"],
                             "ci_low": lo, "ci_high": hi, "unit": "share", "n": hs["items"]})
        rolling = (m.get("perplexity") or {}).get("rolling") or {}
        for name, unit in (("token_perplexity", ""), ("word_perplexity", ""), ("bits_per_byte", "bits")):
            if name in rolling:
                lo, hi = rolling.get(f"{name}_ci") or (None, None)
                rows.append({"metric": f"wikitext2_{name}", "statistic": "value", "value": rolling[name],
                             "ci_low": lo, "ci_high": hi, "unit": unit, "n": rolling.get("windows")})
        llamacpp = (m.get("perplexity") or {}).get("llamacpp") or {}
        if "token_perplexity" in llamacpp:
            rows.append({"metric": "llamacpp_perplexity", "statistic": "value", "value": llamacpp["token_perplexity"],
                         "unit": "", "n": llamacpp.get("chunks")})
        fid = cell.get("fidelity") or {}
        for name, stat, unit in (("kl_mean", "mean", "nats"), ("kl_median", "median", "nats"), ("kl_p99", "p99", "nats"),
                                 ("top1_agreement", "mean", "share"), ("mean_abs_dp_correct", "mean", "probability"),
                                 ("reference_mass_covered", "mean", "share")):
            if name in fid:
                lo, hi = fid.get(f"{name}_ci") or (None, None)
                rows.append({"metric": name.removesuffix("_mean").removesuffix("_median").removesuffix("_p99"),
                             "statistic": stat, "value": fid[name], "ci_low": lo, "ci_high": hi, "unit": unit,
                             "n": fid.get("positions")})
        gate = cell.get("quality_gate") or {}
        for name, part in (("acc_norm", (gate.get("hellaswag") or {}).get("acc_norm")), ("perplexity", gate.get("perplexity"))):
            if part:
                rows.append({"metric": f"quality_loss_{name}", "statistic": part["verdict"], "value": part["loss"],
                             "ci_low": part["loss_ci"][0], "ci_high": part["loss_ci"][1], "unit": "share of reference",
                             "n": part.get("items") or part.get("windows")})
    if scenario == "latency":
        rows.append({"metric": "timed_requests", "statistic": "count", "value": cell.get("iterations"), "unit": "requests"})
        rows += _energy_rows(cell.get("energy") or {})
    if scenario == "throughput" and "best_tokens_per_s" in m:
        lo, hi = m.get("best_tokens_per_s_ci") or (None, None)
        rows.append({"metric": "tokens_per_s_best_batch", "statistic": f"median, at batch {m.get('best_batch_size')}",
                     "value": m["best_tokens_per_s"], "ci_low": lo, "ci_high": hi, "unit": "tokens/s"})
    memory = cell.get("memory") or {}
    since = f"peak since {memory.get('peak_since', 'process start')}"
    for key, metric, stat in (("peak_rss_bytes", "peak_rss", since), ("peak_device_bytes", "peak_device_allocator", since),
                              ("process_device_bytes", "device_held_nvml", "after the timed requests")):
        if memory.get(key) is not None:
            rows.append({"metric": metric, "statistic": stat, "value": memory[key], "unit": "bytes"})
    load = cell.get("load") or {}
    for key, metric in (("rss_bytes", "rss_after_load"), ("process_device_bytes", "device_held_nvml")):
        if load.get(key) is not None and scenario == "latency":  # one reading per configuration
            rows.append({"metric": metric, "statistic": "after load", "value": load[key], "unit": "bytes"})
    for key, metric in (("load_s", "load_time"), ("compile_s", "compile_time")):
        if load.get(key) is not None:
            rows.append({"metric": metric, "statistic": "one reading", "value": load[key], "unit": "s"})
    size = (load.get("artifact") or {}).get("size_bytes") or (cell.get("model") or {}).get("size_bytes")
    if size and load:
        rows.append({"metric": "model_file", "statistic": "size", "value": size, "unit": "bytes"})
    base = {"run_id": cell.get("run_id"), "model": (cell.get("model") or {}).get("name"), "backend": cell.get("backend"),
            "variant": cell.get("variant"), "target": (cell.get("target") or {}).get("name"), "scenario": scenario}
    return [{c: {**base, **r}.get(c) for c in COLUMNS} for r in rows]


@dataclass(frozen=True)
class Rows:
    """Some rows of the table (one configuration's), looked up by metric and statistic."""
    rows: list[dict]

    def all(self, metric: str, statistic: str = "") -> list[dict]:
        """The rows of `metric` whose statistic starts with `statistic`."""
        return [r for r in self.rows if r["metric"] == metric and r["statistic"].startswith(statistic)]

    def first(self, metric: str, statistic: str = "") -> dict | None:
        found = self.all(metric, statistic)
        return found[0] if found else None

    def value(self, metric: str, statistic: str = ""):
        r = self.first(metric, statistic)
        return None if r is None else r["value"]

    def peak_memory(self, cuda: bool):
        """What must fit on the target, the most any scenario needed: on a GPU NVML's per-process
        figure (CUDA context included) where it was read, else the allocator's peak; on a CPU the
        resident set's peak."""
        if not cuda:
            need = {r["scenario"]: r["value"] for r in self.all("peak_rss")}
        else:
            need = {r["scenario"]: r["value"] for r in self.all("peak_device_allocator")}
            need.update({r["scenario"]: r["value"] for r in self.all("device_held_nvml", "after the timed requests")})
        return max(need.values(), default=None)


def table(run_path: Path) -> list[dict]:
    _, cells = store.load_run(run_path)
    return [row for cell in cells for row in cell_rows(cell)]


def write(rows: list[dict], fmt: str, out: Path) -> None:
    """The table to `out` in `fmt`, written atomically (nothing half-written on failure)."""
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        tmp = out.with_name(f".{out.name}.tmp")
        pq.write_table(pa.Table.from_pylist(rows, schema=_schema(pa)), tmp)
        tmp.replace(out)
        return
    store.write_atomic(out, _csv(rows) if fmt == "csv" else _markdown(rows))


def _schema(pa):
    number = {"value", "ci_low", "ci_high"}
    return pa.schema([(c, pa.float64() if c in number else pa.int64() if c == "n" else pa.string()) for c in COLUMNS])


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _markdown(rows: list[dict]) -> str:
    def cell(v):
        return "" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v).replace("|", "\\|")
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"

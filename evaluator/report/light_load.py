"""Serving at its lightest load against the latency scenario, per configuration: do the two
scenarios see the same engine? The median TTFT and TPOT of each, and their ratio with its 95%
interval (two independent samples: stats.intervals.ratio_interval); "agree" where that interval
holds 1, "within ±2%" where it does not but lies inside the precision the latency loop was asked
for and reached (`--precision`, a valid cell only: a difference it was not measured finely enough
to claim).

Where they differ, the reason is usually the load itself, not the harness: at an open load
requests arrive after idle gaps and an engine pays its wake-up (benchmarks/idle_wake.py), and an
engine may serve through another path than the one it answers a single request with (llama.cpp's
llama-server, transformers' continuous-batching manager: each row says what served it, as its
runner's load said). One user at a time (`--concurrency 1`) is the latency scenario's own regime.
The two are separate cells measured minutes apart, so the intervals hold each cell's scatter and
not the machine's drift between them.
"""
from evaluator.measure import serving
from evaluator.report.configs import Config
from evaluator.report.tables import fmt
from evaluator.stats.intervals import ratio_interval

METRICS = (("ttft_ms", "time to first token"), ("tpot_ms", "time per output token"))


def _same_requests(latency: dict, served: dict) -> str | None:
    """Why the two scenarios' requests differ in length, or None where they do not."""
    a, b = latency["scenario"]["options"], served["scenario"]["options"]
    differ = [f"{k} {a.get(k)} against {b.get(k)}" for k in ("prompt_tokens", "new_tokens") if a.get(k) != b.get(k)]
    return "; ".join(differ) or None


def _verdict(ratio: dict | None, precision: float) -> tuple[str, str]:
    """(text, css class) of serving / latency."""
    if ratio is None:
        return "no interval", ""
    lo, hi = ratio["ci"]
    if not ratio["excludes_one"]:
        return f"agree ({ratio['ratio']:.2f}x [{lo:.2f}, {hi:.2f}])", "ok"
    if precision and 1 - precision <= lo and hi <= 1 + precision:
        return f"within ±{100 * precision:g}% ({ratio['ratio']:.3f}x [{lo:.3f}, {hi:.3f}])", "ok"
    word = "slower" if ratio["ratio"] > 1 else "faster"
    return f"serving {word}: {ratio['ratio']:.2f}x [{lo:.2f}, {hi:.2f}]", "gated"


def rows(configs: list[Config]) -> list[dict]:
    out = []
    for c in configs:
        latency, served = c.cell("latency"), c.cell("serving")
        loads = [r for r in ((served or {}).get("metrics") or {}).get("per_rate", []) if r.get("valid")]
        if not (latency and loads):
            continue
        light = loads[0]
        row = {"label": c.label, "target": c.target_name, "load": serving.load_label(light), "metrics": [],
               # what served it, as its runner said: the latency scenario's engine, or another path
               "path": ((served.get("load") or {}).get("settings") or {}).get("serves_through")}
        differ = _same_requests(latency, served)
        validity = latency.get("validity") or {}
        precision = validity.get("precision") if validity.get("valid") else None  # an INVALID loop claims none
        for key, name in METRICS:
            a, b = latency["metrics"].get(key) or {}, light.get(key) or {}
            if a.get("p50") is None or b.get("p50") is None:  # e.g. TPOT with one new token
                continue
            text, css = (f"not comparable: {differ}", "") if differ else _verdict(
                ratio_interval(b["p50"], b.get("p50_ci"), a["p50"], a.get("p50_ci")), precision)
            row["metrics"].append({"name": name, "latency": _ms(a), "serving": _ms(b), "verdict": text, "css": css})
        if row["metrics"]:
            out.append(row)
    return out


def _ms(summary: dict) -> str:
    ci = summary.get("p50_ci")
    return f"{fmt(summary['p50'])} ms" + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "")

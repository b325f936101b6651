"""Is llama.cpp at its native speed through deploy-eval? Its decode and prefill speed in a
deploy-eval latency cell, next to llama.cpp's own `llama-bench`, built from the same source with
the same flags (llama_tools.py), on the same GGUF file, with the same engine settings (threads,
flash attention and f16 K/V as the runner sets them for a quantized model, batch 512).

Definitions, as close as the two tools allow: decode = llama-bench's tg`new` (tokens generated
one at a time after an empty context, median of its 5 repetitions) against deploy-eval's median
decode speed (1 / time per output token after a `prompt`-token prefill); prefill = pp`prompt`
against deploy-eval's median prefill speed (prompt tokens / time to first token). This
machine's memory bandwidth moves with host load, so the two are measured alternately,
`--rounds` times, and the ratio is the median of the per-round ratios.

    .venvs/host/bin/python benchmarks/llama_bench.py [--model synthetic-llama3.2-1b] [--quant q4_k_m] [--rounds 3]

The deploy-eval side is backend_overhead.harness: 10 timed requests of 64 tokens after a 32-token prompt.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import backend_overhead  # noqa: E402
import llama_tools  # noqa: E402


def deploy_eval(model: str, quant: str, reports: Path) -> dict:
    """One latency cell through the harness (backend_overhead's), its medians and settings."""
    cell = backend_overhead.harness(model, "llamacpp", quant, reports, repeats=10)
    m, load = cell["metrics"], cell["load"]
    return {"decode": m["decode_tokens_per_s"]["p50"], "prefill": m["prefill_tokens_per_s"]["p50"],
            "gguf": load["artifact"]["path"], "threads": load["threads"], "flash_attn": load["flash_attn"],
            "kv": load["kv_cache_type"]}


def llama_bench(bin_dir: Path, gguf: str, threads: int, flash_attn: bool, kv: str, prompt: int, new: int) -> dict:
    common = ["-m", gguf, "-t", str(threads), "-fa", "on" if flash_attn else "off", "-ctk", kv, "-ctv", kv,
              "-b", "512", "-ub", "512", "-r", "5", "-o", "json"]
    speeds = {}
    for name, shape in (("prefill", ["-p", str(prompt), "-n", "0"]), ("decode", ["-p", "0", "-n", str(new)])):
        done = subprocess.run([str(bin_dir / "llama-bench"), *common, *shape], capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            sys.exit(f"llama-bench failed: {done.stderr.strip()[-600:]}")
        speeds[name] = statistics.median(json.loads(done.stdout)[0]["samples_ts"])  # the median, as deploy-eval's
    return speeds


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="synthetic-llama3.2-1b")
    p.add_argument("--quant", default="q4_k_m")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    bin_dir = llama_tools.build(log=lambda m: print(m, file=sys.stderr))
    ratios = {"decode": [], "prefill": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            ours = deploy_eval(args.model, args.quant, Path(tmp) / f"round{r}")
            theirs = llama_bench(bin_dir, ours["gguf"], ours["threads"], ours["flash_attn"], ours["kv"],
                                 backend_overhead.PROMPT_TOKENS, backend_overhead.NEW_TOKENS)
            for k in ratios:
                ratios[k].append(ours[k] / theirs[k])
                print(f"round {r + 1}: {k:7s} deploy-eval {ours[k]:10.1f} tok/s  llama-bench {theirs[k]:10.1f} tok/s  "
                      f"ratio {ours[k] / theirs[k]:.3f}", flush=True)
    print(f"{args.model} {args.quant}, {os.cpu_count()} threads, {args.rounds} rounds: " + ", ".join(
        f"{k} deploy-eval / llama-bench = {statistics.median(v):.3f} ({', '.join(f'{x:.3f}' for x in v)})" for k, v in ratios.items()))


if __name__ == "__main__":
    main()

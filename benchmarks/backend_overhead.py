"""Does deploy-eval slow the engines it measures? Each backend's decode speed through the
harness, next to the same engine driven by a bare loop (benchmarks/bare/bare_<backend>.py, which
imports nothing of deploy-eval), in the same run, on a synthetic model of at least 1 B
parameters.

Both sides decode the same prompt (the harness's token ids) for the same number of new tokens
with the same engine settings; speed is new tokens / end-to-end seconds of one request (the
prefill of a 32-token prompt included on both sides). This machine's memory bandwidth moves
with host load, so the two are measured alternately, harness then bare, `--rounds` times, and
the overhead is the median of the per-round ratios.

Run: just bench-backends [--model synthetic-llama3.2-1b] [--backends a,b] [--rounds 3]
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from evaluator import envs  # noqa: E402
from evaluator.catalog import backends, models  # noqa: E402

# backend -> (its variant compared, does the bare loop need the harness's artifact)
COMPARED = {"pytorch_eager": ("fp32-sdpa-kv", False), "pytorch_compile": ("fp32-default", False), "onnxruntime": ("fp32", True),
            "llamacpp": ("f32", True), "vllm": ("fp32", False)}
NEW_TOKENS, PROMPT_TOKENS = 64, 32


def harness(model: str, backend: str, variant: str, reports: Path, repeats: int) -> dict:
    args = [sys.executable, "-m", "evaluator", "eval", model, "--backends", backend, "--variants", variant,
            "--scenarios", "latency", "--prompt-tokens", str(PROMPT_TOKENS), "--new-tokens", str(NEW_TOKENS),
            "--warmup", "1", "--min-iterations", str(repeats), "--min-duration", "0", "--check-tokens", "8", "--precision", "1e9",
            "--reports", str(reports)]
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    cells = sorted(reports.glob("*/cells/*.json"), key=lambda p: p.stat().st_mtime)
    if done.returncode != 0 or not cells:
        sys.exit(f"harness run of {backend} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(cells[-1].read_text())


def bare(backend: str, model_path: Path, artifact: str | None, prompt: list[int], repeats: int) -> dict:
    python = envs.python_for(backends.select([backend])[0])
    args = [str(python), str(REPO / "benchmarks" / "bare" / f"bare_{backend}.py"), "--model", str(model_path),
            "--prompt", json.dumps(prompt), "--new-tokens", str(NEW_TOKENS), "--repeats", str(repeats)]
    if artifact:
        args += ["--artifact", artifact]
    done = subprocess.run(args, capture_output=True, text=True, cwd=REPO / "benchmarks" / "bare")
    if done.returncode != 0:
        sys.exit(f"bare loop of {backend} failed: {done.stderr.strip()[-600:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="synthetic-llama3.2-1b")
    p.add_argument("--backends", default=",".join(COMPARED))
    p.add_argument("--rounds", type=int, default=3, help="harness/bare alternations per backend")
    p.add_argument("--repeats", type=int, default=3, help="timed requests per side per round")
    args = p.parse_args()
    model = models.resolve(args.model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.backends.split(","):
            variant, needs_artifact = COMPARED[name]
            ratios, h_speeds, b_speeds = [], [], []
            for r in range(args.rounds):
                cell = harness(args.model, name, variant, Path(tmp) / f"{name}-{r}", args.repeats)
                if cell["status"] != "ok":
                    sys.exit(f"{name}: harness cell {cell['status']}: {cell.get('reason')}")
                h = NEW_TOKENS / (cell["metrics"]["e2e_ms"]["p50"] / 1e3)
                artifact = cell["load"]["artifact"]["path"] if needs_artifact else None
                b_out = bare(name, model.hf_path, artifact, cell["prompt_tokens"], args.repeats)
                b = NEW_TOKENS / statistics.median(b_out["e2e_s"])
                h_speeds.append(h), b_speeds.append(b), ratios.append(h / b)
                print(f"{name} round {r + 1}: harness {h:.2f} tok/s, bare {b:.2f} tok/s, ratio {h / b:.3f}", flush=True)
            rows.append({"backend": name, "variant": variant, "harness_tok_s": statistics.median(h_speeds),
                         "bare_tok_s": statistics.median(b_speeds), "ratio_median": statistics.median(ratios),
                         "ratios": ratios})
    print(f"\nmodel {args.model} ({model.source}), {NEW_TOKENS} new tokens after a {PROMPT_TOKENS}-token prompt, "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"{'backend':<16}{'variant':<14}{'harness tok/s':>14}{'bare tok/s':>12}{'harness/bare':>14}")
    for row in rows:
        print(f"{row['backend']:<16}{row['variant']:<14}{row['harness_tok_s']:>14.2f}{row['bare_tok_s']:>12.2f}"
              f"{row['ratio_median']:>14.3f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()

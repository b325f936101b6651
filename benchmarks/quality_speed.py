"""How long full quality scoring takes: all 10,042 HellaSwag items plus WikiText-2 perplexity
(rolling and llama.cpp-compatible) for one variant, end to end through the evaluator.

Run: .venvs/host/bin/python benchmarks/quality_speed.py [--variant fp32-sdpa-kv] [--backend pytorch_eager]
Prints the cell's wall time and the rate of each part, measured here, in this run.
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="pytorch_eager")
    p.add_argument("--variant", default="fp32-sdpa-kv")
    p.add_argument("--model", default="stories260k")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "evaluator", "eval", args.model, "--backends", args.backend,
                               "--variants", args.variant, "--scenarios", "quality", "--ppl-llamacpp", "--reports", tmp],
                              cwd=REPO, capture_output=True, text=True)
        wall = time.monotonic() - t0
        if proc.returncode != 0:
            sys.exit(proc.stderr)
        for path in Path(tmp).glob("*/cells/*.json"):
            cell = json.loads(path.read_text())
            m = cell["metrics"]
            print(f"{cell['backend']}.{cell['variant']}: cell {cell['wall_s']:.1f} s (whole command {wall:.1f} s): "
                  f"HellaSwag {m['hellaswag']['items']} items, acc_norm {m['hellaswag']['acc_norm']['value']:.4f}; "
                  f"perplexity {m['perplexity']['rolling']['tokens']} tokens rolling "
                  f"({m['perplexity']['rolling']['token_perplexity']:.3f}) + {m['perplexity']['llamacpp']['tokens']} llama.cpp-style "
                  f"({m['perplexity']['llamacpp']['token_perplexity']:.3f})")


if __name__ == "__main__":
    main()

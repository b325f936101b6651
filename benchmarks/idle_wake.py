"""Does an engine answer slower after it has been idle? The serving scenario's light rates leave
an engine idle between arrivals (a second on average at 1 request/s); the latency scenario sends
its requests back to back. If time to first token grows with the idle gap before a request, the
light-load TTFT gap between the two is the machine waking up (a halted vCPU, cold caches), not
the harness.

One runner, one request of `--prompt` tokens and `--new` new tokens at a time, each after an
idle gap drawn in a shuffled order from `--gaps` (seconds), `--rounds` per gap; TTFT is the
runner's own (first token - start), as in the latency scenario. Per gap: median TTFT and time per
output token with their 95% intervals.

    .venvs/host/bin/python benchmarks/idle_wake.py [--backend vllm] [--variant fp32] [--model synthetic-tiny]
"""
import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from evaluator import envs, store  # noqa: E402
from evaluator.catalog import backends, models  # noqa: E402
from evaluator.launch import local  # noqa: E402
from evaluator.stats.intervals import summarize  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="vllm")
    p.add_argument("--variant", default="fp32")
    p.add_argument("--model", default="synthetic-tiny")
    p.add_argument("--gaps", default="0,0.01,0.1,1", help="idle seconds before a request, comma-separated")
    p.add_argument("--rounds", type=int, default=25)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new", type=int, default=32)
    args = p.parse_args()
    backend = backends.discover()[0][args.backend]
    model = models.resolve(args.model)
    fmt = next(f for f in backend.formats if model.artifact(f))
    gaps = [float(g) for g in args.gaps.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        runner = local.start(backend, envs.python_for(backend), Path(tmp) / "runner.log", 300)
        try:
            spec = {"path": str(model.artifact(fmt)), "format": fmt, "sha256": model.content_hash(),
                    "artifact_cache": str(store.ARTIFACTS), "context_tokens": args.prompt + args.new}
            runner.request("load", 600, model=spec, options=dict(backend.variant(args.variant).options))
            prompt = [1] + [7 + i % 200 for i in range(args.prompt - 1)]
            for _ in range(3):  # warm: the first requests build kernels and caches
                runner.request("generate", 60, prompts=[prompt], max_new_tokens=args.new)
            ttft, tpot = {g: [] for g in gaps}, {g: [] for g in gaps}
            order = [g for g in gaps for _ in range(args.rounds)]
            random.Random(0).shuffle(order)
            for gap in order:
                time.sleep(gap)
                out = runner.request("generate", 60, prompts=[prompt], max_new_tokens=args.new)
                ttft[gap].append((out["token_ns"][0] - out["start_ns"]) / 1e6)
                tpot[gap].append((out["token_ns"][-1] - out["token_ns"][0]) / 1e6 / (args.new - 1))
        finally:
            runner.close()
    print(f"{args.backend} {args.variant} on {args.model}: {args.prompt}-token prompt, {args.new} new tokens, "
          f"{args.rounds} requests per gap")
    for gap in gaps:
        t, d = summarize(ttft[gap], "ms"), summarize(tpot[gap], "ms")
        print(f"  idle {gap:>6g} s before: TTFT {t['p50']:7.3f} ms [{t['p50_ci'][0]:.3f}, {t['p50_ci'][1]:.3f}]   "
              f"TPOT {d['p50']:6.3f} ms [{d['p50_ci'][0]:.3f}, {d['p50_ci'][1]:.3f}]")


if __name__ == "__main__":
    main()

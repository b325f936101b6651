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
import time

import one_engine  # noqa: E402  (beside this file)
from evaluator.stats.intervals import summarize  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    one_engine.add_arguments(p)
    p.add_argument("--gaps", default="0,0.01,0.1,1", help="idle seconds before a request, comma-separated")
    p.add_argument("--rounds", type=int, default=25)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new", type=int, default=32)
    args = p.parse_args()
    gaps = [float(g) for g in args.gaps.split(",")]
    with one_engine.loaded(args, args.prompt + args.new) as runner:
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
    print(f"{args.backend} {args.variant} on {args.model}: {args.prompt}-token prompt, {args.new} new tokens, "
          f"{args.rounds} requests per gap")
    for gap in gaps:
        t, d = summarize(ttft[gap], "ms"), summarize(tpot[gap], "ms")
        print(f"  idle {gap:>6g} s before: TTFT {one_engine.median(t)}   TPOT {one_engine.median(d)}")


if __name__ == "__main__":
    main()

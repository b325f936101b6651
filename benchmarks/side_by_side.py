"""One engine, one runner, the same prompts, requests timed three ways in alternating rounds:

- round trip: each request its own `generate`, a pipe round trip through this process between
  them (the latency loop before it ran back to back);
- back to back: one `generate` of `batches` the runner runs back to back, after an untimed lead
  (the latency scenario's loop, evaluator/measure/back_to_back.py);
- served (`--served`): the serving scenario's closed load of one user (`serving`, concurrency 1),
  for an engine that answers `generate` and `serving` in one load (vLLM, null); llama.cpp serves
  through llama-server and transformers' manager is stopped by every `generate`, so theirs are
  compared across cells, in the report's light-load table.

Alternating rounds put the host's drift into every regime alike, so their medians compare side by
side (the report's light-load table compares two cells measured minutes apart). Per regime:
median TTFT and time per output token with their 95% intervals.

    .venvs/host/bin/python benchmarks/side_by_side.py [--backend vllm] [--variant fp32] [--model synthetic-tiny] [--served]
"""
import argparse
import random
import sys

import one_engine  # noqa: E402  (beside this file)
from evaluator.launch.process import RunnerFailure  # noqa: E402
from evaluator.stats.intervals import summarize  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    one_engine.add_arguments(p)
    p.add_argument("--served", action="store_true", help="also serve each round to one user (a serving load)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--per-round", type=int, default=30, help="requests per regime in each round")
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new", type=int, default=64)
    args = p.parse_args()
    rng = random.Random(0)
    prompts = [[1] + [rng.randrange(3, 500) for _ in range(args.prompt - 1)] for _ in range(8)]
    turn = [prompts[i % len(prompts)] for i in range(args.per_round)]
    times = {"round trip": [], "back to back": [], **({"served to 1 user": []} if args.served else {})}

    def keep(regime, start_ns, token_ns):
        times[regime].append(((token_ns[0] - start_ns) / 1e6, (token_ns[-1] - token_ns[0]) / 1e6 / (args.new - 1)))

    try:
        with one_engine.loaded(args, args.prompt + args.new, "serving" if args.served else None) as runner:
            for _ in range(3):  # warm: the first requests build kernels and caches
                runner.request("generate", 60, prompts=[prompts[0]], max_new_tokens=args.new)
            for _ in range(args.rounds):
                for prompt in turn:
                    out = runner.request("generate", 60, prompts=[prompt], max_new_tokens=args.new)
                    keep("round trip", out["start_ns"], out["token_ns"])
                answers = runner.request("generate", 600, batches=[[prompts[-1]], *[[q] for q in turn]],
                                         max_new_tokens=args.new)["answers"]
                for out in answers[1:]:  # after the untimed lead
                    keep("back to back", out["start_ns"], out["token_ns"])
                if args.served:
                    served = runner.request("serving", 600, requests=[{"prompt": q, "new_tokens": args.new} for q in turn],
                                            concurrency=1)
                    for out in served["requests"]:
                        keep("served to 1 user", out["submitted_ns"], out["token_ns"])
    except RunnerFailure as exc:  # e.g. --served on an engine that serves through another path
        sys.exit(f"side_by_side: {args.backend} {args.variant}: {exc}")
    print(f"{args.backend} {args.variant} on {args.model}: {args.prompt}-token prompts, {args.new} new tokens, "
          f"{args.rounds} rounds of {args.per_round} requests per regime, alternating")
    for regime, got in times.items():
        t, d = summarize([x[0] for x in got], "ms"), summarize([x[1] for x in got], "ms")
        print(f"  {regime:>16}: TTFT {one_engine.median(t)}   TPOT {one_engine.median(d)}")


if __name__ == "__main__":
    main()

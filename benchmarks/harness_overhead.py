"""The harness's own overhead per request, measured against the instant null runner.

What it prints, from N generate requests of 1 token and of 64 tokens:
- round trip on the host (write request, read answer) minus the runner-side duration:
  the pipe + JSON cost, which never enters a reported latency (durations are runner-side);
- the runner-side duration of a null request: the serve loop's own cost inside every
  reported latency (argument checks, one clock read per token).
Run: just bench [--requests N]
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluator.catalog import backends  # noqa: E402
from evaluator.envs import python_for  # noqa: E402
from evaluator.launch import local  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=2000)
    args = p.parse_args()
    null = backends.select(["null"])[0]
    with tempfile.TemporaryDirectory() as tmp:
        runner = local.start(null, python_for(null), Path(tmp) / "null.log", 60)
        runner.request("load", 30, model={"path": tmp, "format": "hf"}, options={})
        for tokens in (1, 64):
            host_us, runner_us = [], []
            for _ in range(args.requests):
                t0 = time.perf_counter_ns()
                r = runner.request("generate", 30, prompts=[[1] * 32], max_new_tokens=tokens)
                host_us.append((time.perf_counter_ns() - t0) / 1e3)
                runner_us.append((r["end_ns"] - r["start_ns"]) / 1e3)
            transport = [h - r for h, r in zip(host_us, runner_us)]
            q = statistics.quantiles(transport, n=100)
            print(f"{tokens:>3} tokens/request, {args.requests} requests: "
                  f"transport+JSON (outside reported latency) median {statistics.median(transport):.1f} us, p99 {q[98]:.1f} us; "
                  f"inside reported latency (null engine + serve loop) median {statistics.median(runner_us):.2f} us "
                  f"= {statistics.median(runner_us) / tokens:.3f} us/token")
        runner.close()


if __name__ == "__main__":
    main()

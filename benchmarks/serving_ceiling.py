"""The serving load generator's own ceiling: against the null runner (an engine that costs
nothing), how fast can the runner library offer requests, and how late is each one?

For each rate, `--requests` Poisson arrivals (seed 0), `--tokens` new tokens each, one
`serving` request to the null runner: the achieved arrival rate (requests after the first /
the time from the first submission to the last) against the rate asked, and each request's
lateness (submitted - its scheduled time) at the median, p99 and worst. A serving cell whose
achieved rate falls short of its asked rate measures the harness, not the engine.

    .venvs/host/bin/python benchmarks/serving_ceiling.py [--rates 100,1000,10000,100000] [--requests 5000]
"""
import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from evaluator import envs  # noqa: E402
from evaluator.catalog import backends  # noqa: E402
from evaluator.launch import local  # noqa: E402
from evaluator.measure import arrivals  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="100,1000,10000,100000", help="requests per second, comma-separated")
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--tokens", type=int, default=4, help="new tokens per request")
    args = p.parse_args()
    null = backends.discover()[0]["null"]
    with tempfile.TemporaryDirectory() as tmp:
        runner = local.start(null, envs.python_for(null), Path(tmp) / "null.log", 60)
        try:
            runner.request("load", 60, model={"path": tmp, "format": "hf"}, options={})
            for rate in (float(r) for r in args.rates.split(",")):
                at = arrivals.offsets(rate, args.requests, seed=0)
                out = runner.request("serving", 600, requests=[{"at_s": a, "prompt": [1], "new_tokens": args.tokens}
                                                               for a in at])
                sent = [r["submitted_ns"] - out["start_ns"] for r in out["requests"]]
                late_us = sorted((s - a * 1e9) / 1e3 for s, a in zip(sent, at))
                achieved = (len(sent) - 1) / ((sent[-1] - sent[0]) / 1e9)
                print(f"asked {rate:>9.0f}/s  achieved {achieved:>9.0f}/s ({achieved / (len(at) - 1) * at[-1]:.3f} of the "
                      f"schedule's own)  lateness p50 {statistics.median(late_us):8.1f} us  p99 "
                      f"{late_us[int(0.99 * len(late_us))]:9.1f} us  max {late_us[-1]:9.1f} us", flush=True)
        finally:
            runner.close()


if __name__ == "__main__":
    main()

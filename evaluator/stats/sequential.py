"""The quality budget and the gate: score HellaSwag in a seeded random order, look at the
paired difference after planned blocks, and stop once the verdict is known.

Looks. With `--quality-items auto`, after 500, 1,000, 2,000, ... items (doubling) and at the
whole set; with a fixed N (or `all`), once, at N.

Repeated looks. Looking after every block and stopping at the first decisive interval would
make a 95% interval wrong more than 5% of the time. The intervals use one constant boundary
z_K for all K planned looks (Pocock's design), chosen so that the chance that *any* look's
interval misses is 5%: the standardised differences at the looks behave like a Brownian
motion observed at the looks' information fractions, and z_K is the 95th percentile of the
largest |Z| over the looks, simulated (200,000 paths, fixed seed). One look gives 1.96.

The verdict (non-inferiority with a margin, as in clinical trials). The quality loss is the
reference's score minus the variant's, relative to the reference's (acc_norm), or the
perplexity ratio minus 1. With the allowed loss m (`--max-quality-loss`):
  PASS          the whole interval of the loss is at most m;
  FAIL          the whole interval is beyond m;
  INCONCLUSIVE  otherwise, with the items that would likely decide it: the interval's
                half-width shrinks as 1/sqrt(n), so it clears the margin at about
                n * (z_K * se / |distance to the margin|)^2 items.
Stopping for futility: when that estimate exceeds the whole set, more items would likely not
decide it, so scoring stops (stopping early for futility never makes an interval wrong). The
estimate rests on the items where the two sides disagree, so it is trusted only from
FUTILITY_MIN_DISAGREEMENTS of them on: with two or three, nothing is known yet.
"""
import math
from functools import lru_cache

import numpy as np

from evaluator.stats.intervals import Z95

FIRST_LOOK = 500
FUTILITY_MIN_DISAGREEMENTS = 20
PATHS = 200_000
VERDICTS = ("PASS", "FAIL", "INCONCLUSIVE")


def looks(total: int, sequential: bool) -> tuple[int, ...]:
    if not sequential or total <= FIRST_LOOK:
        return (total,)
    out, n = [], FIRST_LOOK
    while n < total:
        out.append(n)
        n *= 2
    return (*out, total)


@lru_cache(maxsize=32)
def boundary(planned: tuple[int, ...], alpha: float = 0.05) -> float:
    """The constant |Z| boundary for these looks with overall two-sided error alpha."""
    if len(planned) == 1:
        return Z95
    t = np.asarray(planned, dtype=float) / planned[-1]
    steps = np.sqrt(np.diff(np.concatenate([[0.0], t])))
    paths = np.cumsum(np.random.default_rng(0).standard_normal((PATHS, len(t))) * steps, axis=1)
    return float(np.quantile(np.abs(paths / np.sqrt(t)).max(axis=1), 1 - alpha))


def design(total: int, sequential: bool) -> dict:
    planned = looks(total, sequential)
    method = ("one look: the usual 95% interval" if len(planned) == 1 else
              f"group-sequential: one constant boundary over {len(planned)} planned looks (Pocock), "
              f"simulated ({PATHS:,} paths, seed 0)")
    return {"looks": list(planned), "z": boundary(planned), "method": method}


def verdict(loss_ci: list[float], margin: float) -> str:
    if loss_ci[1] <= margin:
        return "PASS"
    if loss_ci[0] > margin:
        return "FAIL"
    return "INCONCLUSIVE"


def items_to_decide(distance: float, se: float, z: float, n: int) -> int | None:
    """Items at which an interval of half-width z*se (at n items) would clear `distance`."""
    if distance <= 0 or se <= 0:
        return None
    return math.ceil(n * (z * se / distance) ** 2)


def futile(need: int | None, total: int, disagreements: int) -> bool:
    return disagreements >= FUTILITY_MIN_DISAGREEMENTS and (need is None or need > total)


def combine(verdicts: list[str]) -> str:
    if "FAIL" in verdicts:
        return "FAIL"
    return "PASS" if verdicts and all(v == "PASS" for v in verdicts) else "INCONCLUSIVE"

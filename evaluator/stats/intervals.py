"""Intervals for timed samples: the precision of every number the report prints.

- A quantile (the median, p95, p99) gets a distribution-free 95% interval from order
  statistics: of n independent samples, the count below the true q-quantile is
  Binomial(n, q), so [X_(l), X_(u)] covers it with probability P(l <= B < u); the ranks are
  the narrowest that leave at most 2.5% in each tail. Exact for any continuous distribution,
  no resampling, the same answer every time.
- A tail quantile is reported only when the sample can bound it: its upper rank must exist,
  1 - q^n >= 97.5%, which takes 72 samples for p95 and 368 for p99 (`samples_needed`). This is
  LoadGen's early-stopping idea: a percentile is claimed only when the sample supports it.
- The mean gets a percentile bootstrap interval (2,000 resamples, fixed seed); past 50,000
  samples the normal interval, which the bootstrap approaches there anyway.
- Precision is the interval's half-width relative to its estimate, (hi - lo) / 2 / estimate.
- Two estimates (two engines, two runs) compare by the ratio of their medians: each interval
  is read on a log scale as an estimate +- 1.96 standard errors, and the ratio's interval
  combines the two (independent samples).

Samples are kept beside every summary, so any statistic can be recomputed later.
"""
import math

import numpy as np

CONFIDENCE = 0.95
Z95 = 1.959963984540054
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
BOOTSTRAP_MAX_N = 50_000
TAILS = (95, 99)


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    if not sorted_values:
        raise ValueError("percentile of no samples")
    pos = (len(sorted_values) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def binomial_cdf(n: int, p: float) -> np.ndarray:
    """cdf[k] = P(B <= k) for B ~ Binomial(n, p), k = 0..n (log-space pmf, then normalised)."""
    k = np.arange(n + 1)
    log_choose = np.concatenate([[0.0], np.cumsum(np.log(n - k[1:] + 1) - np.log(k[1:]))])
    log_pmf = log_choose + k * math.log(p) + (n - k) * math.log1p(-p)
    pmf = np.exp(log_pmf - log_pmf.max())
    return np.cumsum(pmf / pmf.sum())


def quantile_ranks(n: int, q: float, confidence: float = CONFIDENCE) -> tuple[int | None, int | None]:
    """1-based ranks (l, u) with P(X_(l) <= xi_q <= X_(u)) >= confidence; None where the sample
    is too small to have that rank (the bound does not exist)."""
    if n < 1:
        return None, None
    tail = (1 - confidence) / 2
    cdf = binomial_cdf(n, q)
    below = np.nonzero(cdf <= tail)[0]            # cdf[l-1] <= tail
    lower = int(below[-1]) + 1 if below.size else None
    above = np.nonzero(cdf >= 1 - tail)[0]        # cdf[u-1] >= 1 - tail
    upper = int(above[0]) + 1 if above.size and above[0] + 1 <= n else None
    return lower, upper


def samples_needed(q: float, confidence: float = CONFIDENCE) -> int:
    """The fewest samples whose order statistics can bound the q-quantile from above."""
    return math.ceil(math.log((1 - confidence) / 2) / math.log(q))


def quantile_interval(sorted_values, q: float) -> list[float] | None:
    lower, upper = quantile_ranks(len(sorted_values), q)
    if lower is None or upper is None:
        return None
    return [float(sorted_values[lower - 1]), float(sorted_values[upper - 1])]


def mean_interval(values: np.ndarray) -> tuple[list[float], str]:
    n = len(values)
    if n < 2:
        return [float(values[0])] * 2 if n else None, "one sample"
    if n > BOOTSTRAP_MAX_N:
        half = Z95 * float(np.std(values, ddof=1)) / math.sqrt(n)
        return [float(values.mean()) - half, float(values.mean()) + half], f"normal (n > {BOOTSTRAP_MAX_N:,})"
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = np.empty(BOOTSTRAP_RESAMPLES)
    chunk = max(1, 2_000_000 // n)
    for start in range(0, BOOTSTRAP_RESAMPLES, chunk):
        rows = min(chunk, BOOTSTRAP_RESAMPLES - start)
        means[start:start + rows] = values[rng.integers(0, n, size=(rows, n))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return [float(lo), float(hi)], f"percentile bootstrap, {BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}"


def relative_half_width(estimate: float | None, interval: list[float] | None) -> float:
    """(hi - lo) / 2 / |estimate|; infinite where there is no interval."""
    if interval is None or not estimate:
        return math.inf
    return (interval[1] - interval[0]) / 2 / abs(estimate)


def median_precision(samples) -> float:
    s = np.sort(np.asarray(samples, dtype=float))
    return relative_half_width(float(np.median(s)) if len(s) else None, quantile_interval(s, 0.5))


def summarize(samples: list[float], unit: str) -> dict:
    """Median and mean with their 95% intervals, tail percentiles where the sample supports
    them (else how many samples they need), spread, and the samples themselves."""
    if not samples:
        return {"unit": unit, "n": 0, "samples": []}
    s = np.sort(np.asarray(samples, dtype=float))
    n = len(s)
    mean = float(s.mean())
    std = float(np.std(s, ddof=1)) if n > 1 else 0.0
    mean_ci, mean_method = mean_interval(s)
    p50 = float(np.median(s))
    out = {"unit": unit, "n": n, "p50": p50, "p50_ci": quantile_interval(s, 0.5),
           "mean": mean, "mean_ci": mean_ci,
           "methods": {"p50_ci": "order statistics (exact binomial, distribution-free)", "mean_ci": mean_method}}
    out["precision"] = relative_half_width(p50, out["p50_ci"])
    for q in TAILS:
        need = samples_needed(q / 100)
        if n >= need:
            out[f"p{q}"] = percentile(s.tolist(), q)
            out[f"p{q}_ci"] = quantile_interval(s, q / 100)
        else:
            out[f"p{q}"] = None
            out[f"p{q}_needs"] = need
    out.update({"min": float(s[0]), "max": float(s[-1]), "std": std, "cv": std / mean if mean else 0.0,
                "samples": list(samples)})
    return out


def log_se(estimate: float, interval: list[float] | None) -> float | None:
    """A positive estimate's 95% interval read as estimate * exp(+-1.96 se) on a log scale."""
    if interval is None or estimate <= 0 or interval[0] <= 0:
        return None
    return max(math.log(interval[1] / estimate), math.log(estimate / interval[0])) / Z95


def ratio_interval(a: float, a_ci: list[float] | None, b: float, b_ci: list[float] | None) -> dict | None:
    """a / b with a 95% interval, from two independent estimates' intervals; None where
    either has none. `excludes_one` is the test: the two differ beyond their noise."""
    se_a, se_b = log_se(a, a_ci), log_se(b, b_ci)
    if se_a is None or se_b is None or b <= 0:
        return None
    ratio = a / b
    half = Z95 * math.hypot(se_a, se_b)
    lo, hi = ratio * math.exp(-half), ratio * math.exp(half)
    return {"ratio": ratio, "ci": [lo, hi], "excludes_one": lo > 1 or hi < 1}


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion: sound near 0, 1 and small n."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def binomial_stderr(successes: int, n: int) -> float:
    """Standard error of a mean of 0/1 outcomes with the sample variance (lm-evaluation-harness's)."""
    if n < 2:
        return 0.0
    p = successes / n
    return math.sqrt(p * (1 - p) / (n - 1))

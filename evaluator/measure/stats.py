"""Summary statistics that keep their raw samples: any statistic can be recomputed later."""
import math


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    if not sorted_values:
        raise ValueError("percentile of no samples")
    pos = (len(sorted_values) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(samples: list[float], unit: str) -> dict:
    """mean, p50/p95/p99, sample standard deviation and coefficient of variation, plus the samples."""
    if not samples:
        return {"unit": unit, "n": 0, "samples": []}
    s = sorted(samples)
    n = len(s)
    mean = sum(s) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in s) / (n - 1)) if n > 1 else 0.0
    return {
        "unit": unit, "n": n, "mean": mean, "p50": percentile(s, 50), "p95": percentile(s, 95),
        "p99": percentile(s, 99), "min": s[0], "max": s[-1], "std": std,
        "cv": std / mean if mean else 0.0, "samples": list(samples),
    }


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
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

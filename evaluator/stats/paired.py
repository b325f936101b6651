"""Quality compared item by item: both sides scored the same items, so only the items where
they disagree carry information about the difference.

- HellaSwag: b = items the variant gets right and the reference wrong, c = the reverse, of n
  paired items. The change in accuracy is (b - c) / n. Its interval is Agresti and Min's
  (Statistics in Medicine, 2005): the Wald interval for matched proportions after adding 1/2
  to each of the four cells, sound down to zero disagreements; `z` widens it for repeated
  looks (sequential.py). McNemar's exact test: under "no difference" each disagreement goes
  either way with probability 1/2, so p = min(1, 2 P(X <= min(b, c))), X ~ Binomial(b + c, 1/2).
- Perplexity: per window, both sides' summed NLL over the same tokens. The log of the
  perplexity ratio is sum(d_w) / sum(t_w) for d_w the windows' NLL differences; its standard
  error is the ratio estimator's over windows (windows are the independent units).
- A mean over a few windows (KL): Student's t interval.
"""
import math

from evaluator.stats.intervals import Z95, binomial_cdf

# Student's t 97.5% quantiles for 1..30 degrees of freedom; beyond, a Cornish-Fisher step from z.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t975(df: int) -> float:
    if df < 1:
        return math.inf
    if df <= len(_T975):
        return _T975[df - 1]
    return Z95 + (Z95 ** 3 + Z95) / (4 * df)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant pairs."""
    if b + c == 0:
        return 1.0
    return min(1.0, 2 * float(binomial_cdf(b + c, 0.5)[min(b, c)]))


def matched_difference(b: int, c: int, n: int, z: float = Z95) -> dict:
    """Δ = (b - c) / n with the Agresti-Min interval (1/2 added to each cell)."""
    if n < 1:
        raise ValueError("no paired items")
    b2, c2, n2 = b + 0.5, c + 0.5, n + 2
    centre = (b2 - c2) / n2
    se = math.sqrt(max((b2 + c2) - (b2 - c2) ** 2 / n2, 0.0)) / n2
    return {"delta": (b - c) / n, "ci": [max(-1.0, centre - z * se), min(1.0, centre + z * se)], "se": se,
            "gained": b, "lost": c, "items": n, "mcnemar_p": mcnemar_exact(b, c)}


def discordance(ref_correct: list[bool], var_correct: list[bool]) -> tuple[int, int]:
    """(b, c): items only the variant gets right, items only the reference gets right."""
    b = sum(v and not r for r, v in zip(ref_correct, var_correct, strict=True))
    c = sum(r and not v for r, v in zip(ref_correct, var_correct, strict=True))
    return b, c


def log_rate(nll: list[float], tokens: list[int]) -> tuple[float, float]:
    """sum(nll) / sum(tokens) over windows, with the ratio estimator's standard error (windows
    are the units; the log of a perplexity, or of a perplexity ratio when nll holds differences)."""
    m, total = len(tokens), sum(tokens)
    if m < 2 or not total:
        raise ValueError("a perplexity interval needs at least two windows")
    rate = sum(nll) / total
    resid = sum((d - rate * t) ** 2 for d, t in zip(nll, tokens, strict=True))
    return rate, math.sqrt(m / (m - 1) * resid) / total


def perplexity_ratio(ref_nll: list[float], var_nll: list[float], tokens: list[int], z: float = Z95) -> dict:
    """variant / reference perplexity over the same windows, with its interval."""
    log_ratio, se = log_rate([v - r for r, v in zip(ref_nll, var_nll, strict=True)], tokens)
    return {"ratio": math.exp(log_ratio), "ci": [math.exp(log_ratio - z * se), math.exp(log_ratio + z * se)],
            "log_se": se, "windows": len(tokens), "tokens": sum(tokens)}


def mean_interval(values: list[float]) -> dict:
    """Mean with a Student's t 95% interval (values are independent units, e.g. windows)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "ci": None, "n": n}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "ci": [mean - half, mean + half], "n": n}

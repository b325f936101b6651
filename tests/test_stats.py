"""The statistics every verdict rests on, checked against independent implementations (scipy)
on fixed data, and by simulation."""
import math
import statistics

import numpy as np
import pytest
from scipy import stats as sp

from evaluator.measure import sampling
from evaluator.stats import intervals, paired, sequential
from evaluator.stats.intervals import percentile, summarize


def test_percentiles_interpolate_like_numpy():
    values = [1.0, 2.0, 3.0, 4.0, 10.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 95) == pytest.approx(np.percentile(values, 95))
    assert percentile(values, 99) == pytest.approx(np.percentile(values, 99))
    assert percentile([7.0], 99) == 7.0


def test_summary_keeps_samples_and_matches_the_standard_library():
    samples = [10.0, 12.0, 11.0, 13.0, 9.0, 30.0]
    s = summarize(samples, "ms")
    assert s["samples"] == samples and s["unit"] == "ms" and s["n"] == 6
    assert s["mean"] == pytest.approx(statistics.mean(samples))
    assert s["std"] == pytest.approx(statistics.stdev(samples))
    assert s["p50"] == pytest.approx(statistics.median(samples))


def test_empty_samples_have_no_numbers():
    assert summarize([], "ms") == {"unit": "ms", "n": 0, "samples": []}


@pytest.mark.parametrize("n,q", [(10, 0.5), (37, 0.5), (200, 0.5), (1000, 0.5), (400, 0.95), (2000, 0.99)])
def test_order_statistic_interval_equals_scipys_quantile_test(n, q):
    x = np.sort(np.random.default_rng(n).lognormal(0, 0.5, n))
    ci = sp.quantile_test(x, q=float(np.quantile(x, q)), p=q).confidence_interval(0.95)
    assert intervals.quantile_interval(x, q) == pytest.approx([ci.low, ci.high])


def test_tail_percentiles_need_enough_samples_to_be_bounded():
    assert intervals.samples_needed(0.95) == 72 and intervals.samples_needed(0.99) == 368
    few = summarize(list(range(1, 72)), "ms")
    assert few["p95"] is None and few["p95_needs"] == 72 and few["p99"] is None and few["p99_needs"] == 368
    enough = summarize(list(range(1, 73)), "ms")
    assert enough["p95"] is not None and enough["p95_ci"][1] == 72.0 and enough["p99"] is None


def test_bootstrap_mean_interval_agrees_with_scipys_bootstrap():
    x = np.random.default_rng(3).gamma(2.0, 1.5, 300)
    mine, method = intervals.mean_interval(x)
    ref = sp.bootstrap((x,), np.mean, method="percentile", n_resamples=20000, random_state=1).confidence_interval
    assert "bootstrap" in method
    assert mine == pytest.approx([ref.low, ref.high], rel=0.02)


@pytest.mark.parametrize("b,c", [(0, 0), (0, 5), (3, 9), (25, 25), (93, 120), (78, 84), (200, 140)])
def test_mcnemar_exact_equals_scipys_binomial_test(b, c):
    expected = 1.0 if b + c == 0 else sp.binomtest(b, b + c, 0.5).pvalue
    assert paired.mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9)


def test_the_issues_numbers_are_reproduced():
    """llama.cpp q8_0 vs fp32 on all 10,042 items: 25 each way, ±0.14 points; q4_k_m: p = 0.075."""
    d = paired.matched_difference(25, 25, 10042)
    assert (d["ci"][1] - d["ci"][0]) / 2 == pytest.approx(0.0014, abs=0.0001)
    assert paired.mcnemar_exact(93, 120) == pytest.approx(0.075, abs=0.001)


def test_matched_difference_interval_covers_by_simulation():
    """Agresti-Min: 95% coverage for matched proportions, even with few disagreements."""
    rng = np.random.default_rng(5)
    n, p_b, p_c, reps = 500, 0.01, 0.02, 2000
    counts = rng.multinomial(n, [p_b, p_c, 1 - p_b - p_c], size=reps)
    covered = sum(lo <= p_b - p_c <= hi for lo, hi in
                  (paired.matched_difference(int(b), int(c), n)["ci"] for b, c, _ in counts))
    assert covered / reps >= 0.93


def test_zero_disagreements_still_leave_an_interval():
    d = paired.matched_difference(0, 0, 500)
    assert d["delta"] == 0 and d["ci"][0] < -0.003 and d["ci"][1] > 0.003


def test_perplexity_ratio_interval_agrees_with_a_bootstrap_over_windows():
    rng = np.random.default_rng(7)
    tokens = rng.integers(200, 257, 120)
    ref = tokens * rng.normal(2.0, 0.3, 120)
    var = ref + tokens * rng.normal(0.01, 0.02, 120)
    mine = paired.perplexity_ratio(ref.tolist(), var.tolist(), tokens.tolist())
    idx = np.arange(120)
    boot = sp.bootstrap((idx,), lambda i: np.exp((var[i] - ref[i]).sum() / tokens[i].sum()), method="percentile",
                        n_resamples=5000, random_state=2).confidence_interval
    assert mine["ratio"] == pytest.approx(math.exp((var - ref).sum() / tokens.sum()))
    assert mine["ci"] == pytest.approx([boot.low, boot.high], rel=2e-3)


def test_t_interval_equals_scipys():
    values = [0.012, 0.015, 0.009, 0.02, 0.011, 0.013, 0.017, 0.01]
    lo, hi = sp.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=sp.sem(values))
    assert paired.mean_interval(values)["ci"] == pytest.approx([lo, hi], rel=1e-3)


@pytest.mark.parametrize("k,pocock", [(2, 2.178), (3, 2.289), (4, 2.361), (5, 2.413)])
def test_group_sequential_boundary_equals_pococks_table(k, pocock):
    """Pocock (1977), equally spaced looks, two-sided 5%."""
    assert sequential.boundary(tuple(range(1, k + 1))) == pytest.approx(pocock, abs=0.012)


def test_one_look_is_the_usual_interval_and_auto_plans_doubling_looks():
    assert sequential.boundary((500,)) == pytest.approx(1.96, abs=1e-3)
    assert sequential.looks(10042, True) == (500, 1000, 2000, 4000, 8000, 10042)
    assert sequential.looks(10042, False) == (10042,)


@pytest.mark.parametrize("ci,verdict", [([-0.01, 0.005], "PASS"), ([0.011, 0.03], "FAIL"), ([-0.002, 0.02], "INCONCLUSIVE")])
def test_the_three_way_verdict(ci, verdict):
    assert sequential.verdict(ci, 0.01) == verdict


def test_ratio_interval_says_tied_when_it_includes_one():
    tied = intervals.ratio_interval(102.0, [99.0, 105.0], 100.0, [97.0, 103.0])
    apart = intervals.ratio_interval(120.0, [118.0, 122.0], 100.0, [98.0, 102.0])
    assert not tied["excludes_one"] and apart["excludes_one"] and apart["ci"][0] > 1


# -- adaptive sampling, by simulation: a null engine with heavy-tailed jitter on a simulated clock

BASE_MS = 5.0


def heavy_tailed(rng, n):
    """5 ms with 3% noise, plus a Pareto(1.2) delay on one request in ten (the scheduler)."""
    body = BASE_MS * (1 + 0.03 * rng.standard_normal(n))
    spikes = (rng.random(n) < 0.1) * BASE_MS * (rng.pareto(1.2, n))
    return body + spikes


TRUE_MEDIAN = float(np.median(heavy_tailed(np.random.default_rng(0), 4_000_000)))


def simulate(seed, scale=1.0, max_time_s=60.0):
    rng, clock = np.random.default_rng(seed), [0.0]

    def step(room):
        ms = float(BASE_MS + scale * (heavy_tailed(rng, 1)[0] - BASE_MS))
        clock[0] += ms / 1000
        return [{"e2e_ms": ms}]

    budget = sampling.Budget(min_iterations=10, min_duration_s=0.5, precision=0.02, max_time_s=max_time_s,
                             max_iterations=100_000)
    runs, validity = sampling.sample(step, ("e2e_ms",), budget, clock=lambda: clock[0])
    return [r["e2e_ms"] for r in runs], validity


def test_the_adaptive_interval_covers_the_true_median_in_95_percent_of_repetitions():
    covered = valid = 0
    reps = 400
    for seed in range(reps):
        samples, validity = simulate(seed + 1)
        valid += validity["valid"]
        lo, hi = intervals.quantile_interval(np.sort(samples), 0.5)
        covered += lo <= TRUE_MEDIAN <= hi
    assert valid == reps, "this jitter is within reach of 2% in a minute"
    assert covered / reps >= 0.93, covered / reps


def test_jitter_too_large_for_the_cap_ends_invalid_with_the_precision_reached():
    _, validity = simulate(1, scale=40.0, max_time_s=3.0)
    assert not validity["valid"] and validity["stopped_by"] == "time cap"
    rule = next(r for r in validity["rules"] if r["rule"].startswith("e2e_ms median"))
    assert not rule["met"] and rule["value"].startswith("±")
    assert "e2e_ms median within ±2% (95% interval): No (±" in sampling.explain(validity)
    assert sampling.print_rules(validity)[0] == "Result is : INVALID"

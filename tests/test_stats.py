"""Statistics over raw samples."""
import statistics

import pytest

from evaluator.measure.stats import percentile, summarize


def test_percentiles_interpolate_like_numpy():
    values = [1.0, 2.0, 3.0, 4.0, 10.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 95) == pytest.approx(8.8)   # numpy.percentile(values, 95)
    assert percentile(values, 99) == pytest.approx(9.76)
    assert percentile([7.0], 99) == 7.0


def test_summary_keeps_samples_and_matches_the_standard_library():
    samples = [10.0, 12.0, 11.0, 13.0, 9.0, 30.0]
    s = summarize(samples, "ms")
    assert s["samples"] == samples and s["unit"] == "ms" and s["n"] == 6
    assert s["mean"] == pytest.approx(statistics.mean(samples))
    assert s["std"] == pytest.approx(statistics.stdev(samples))
    assert s["cv"] == pytest.approx(statistics.stdev(samples) / statistics.mean(samples))
    assert s["p50"] == pytest.approx(statistics.median(samples))


def test_empty_samples_have_no_numbers():
    assert summarize([], "ms") == {"unit": "ms", "n": 0, "samples": []}

"""When each request of a serving load arrives: a seeded schedule the harness makes, never the
engine (MLPerf LoadGen's principle), so every engine is offered the same load.

Gaps between arrivals are gamma-distributed with mean 1 / rate and shape `burstiness`, vLLM's
`bench serve` definition: 1 is a Poisson process (exponential gaps: independent users, MLPerf's
Server scenario), below 1 burstier, above 1 more regular. The first request arrives at 0.
"""
import random


def offsets(rate: float, count: int, seed: int, burstiness: float = 1.0) -> list[float]:
    """Arrival times in seconds from the start, non-decreasing."""
    if not rate > 0 or count < 1 or not burstiness > 0:
        raise ValueError(f"rate {rate} and burstiness {burstiness} must be > 0, count {count} >= 1")
    rng, scale = random.Random(seed), 1.0 / (rate * burstiness)
    at, times = 0.0, []
    for _ in range(count):
        times.append(at)
        at += rng.gammavariate(burstiness, scale)
    return times

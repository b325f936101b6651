"""Timed requests run back to back inside the runner, in chunks.

The latency and throughput loops send their timed requests to the runner a chunk at a time, and
the runner starts each the moment the one before it returned (generate's `batches`), as a
single user's next request, MLPerf's single stream and a closed serving load of one user do.
Between chunks the evaluator's round trip leaves the engine idle for a moment, a long one over
SSH to a board: long enough for llama.cpp's worker threads to stop spinning and sleep
(benchmarks/idle_wake.py: 0.89 ms to the first token back to back, 5.6 ms after 10 ms idle). So
each chunk is led by one untimed request, which takes that wake-up, and only the requests after
it are timed.

A chunk holds about CHUNK_S of requests, at least MIN_CHUNK (the lead's cost stays a fraction
of the chunk on a slow engine) and at most MAX_CHUNK, and never more than a quarter of the
request timeout at the slowest request seen so far (a chunk is one request to the runner, under
one timeout).
"""
from evaluator.launch.process import RunnerProcess

CHUNK_S = 1.0
MIN_CHUNK = 4
MAX_CHUNK = 256


def chunk_size(e2e_ms: list[float], timeout_s: float) -> int:
    """How many timed requests the next chunk holds, from the last ones' end-to-end times."""
    median, slowest = sorted(e2e_ms)[len(e2e_ms) // 2], max(e2e_ms)
    size = max(MIN_CHUNK, min(MAX_CHUNK, int(CHUNK_S * 1e3 / max(median, 1e-3))))
    return max(1, min(size, int(timeout_s * 1e3 / 4 / max(slowest, 1e-3)) - 1))


class Chunks:
    """One loop's chunks: their size, adapted as it goes, and how many requests ran in all."""

    def __init__(self, runner: RunnerProcess, new_tokens: int, timeout_s: float, warmup_e2e_ms: list[float]):
        self.runner, self.new_tokens, self.timeout_s = runner, new_tokens, timeout_s
        self.size = chunk_size(warmup_e2e_ms, timeout_s) if warmup_e2e_ms else 1
        self.issued = 0  # leads included: the energy the loop spent went into all of them

    def run(self, lead: list[list[int]], batches: list[list[list[int]]], accounted) -> tuple[dict, list[dict]]:
        """`lead` untimed, then each of `batches` back to back: (the lead's answer, the timed
        answers), each through accounted(answer, prompts)."""
        answers = self.runner.request("generate", self.timeout_s, batches=[lead, *batches],
                                      max_new_tokens=self.new_tokens)["answers"]
        answers = [accounted(a, len(b)) for a, b in zip(answers, [lead, *batches])]
        self.issued += len(answers)
        timed = answers[1:]
        self.size = chunk_size([(a["end_ns"] - a["start_ns"]) / 1e6 for a in timed], self.timeout_s)
        return answers[0], timed

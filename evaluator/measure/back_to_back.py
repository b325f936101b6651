"""Timed requests run back to back inside the runner, in chunks.

The latency and throughput loops send their timed requests to the runner a chunk at a time, and
the runner starts each the moment the one before it returned (generate's `batches`), as a
single user's next request, MLPerf's single stream and a closed serving load of one user do.
Between chunks the evaluator's round trip leaves the engine idle for a moment, a long one over
SSH to a board: long enough for llama.cpp's worker threads to stop spinning and sleep
(benchmarks/idle_wake.py: 0.89 ms to the first token back to back, 5.6 ms after 10 ms idle). So
each chunk is led by one untimed request, which takes that wake-up, and only the requests after
it are timed.

A chunk holds about CHUNK_S of requests, at least MIN_CHUNK (a slow engine's leads stay a
fraction of its time) and at most MAX_CHUNK; the first holds at least the loop's minimum number
of requests, so a slow device's minimum costs one lead, not one per request. A chunk is one
request to the runner: its deadline is the request timeout plus twice the median request of the
chunk before for each request in it, so a slow engine gets each request's time and a hung one
is found about one timeout after it stopped. With nothing timed yet (no warmup) the first
chunk is one request after its lead.
"""
from evaluator.launch.process import RunnerProcess

CHUNK_S = 1.0
MIN_CHUNK = 4
MAX_CHUNK = 256


class Chunks:
    """One loop's chunks: their size, adapted as it goes, and how many requests ran in all."""

    def __init__(self, runner: RunnerProcess, new_tokens: int, timeout_s: float, min_timed: int,
                 warmup_e2e_ms: list[float]):
        self.runner, self.new_tokens, self.timeout_s, self.min_timed = runner, new_tokens, timeout_s, min_timed
        self.timed = 0    # timed requests so far
        self.issued = 0   # every request run, leads included: the loop's energy went into all of them
        self.median_ms = _median(warmup_e2e_ms) if warmup_e2e_ms else None
        self.size = self._size()

    def _size(self) -> int:
        if self.median_ms is None:
            return 1
        by_time = max(MIN_CHUNK, min(MAX_CHUNK, int(CHUNK_S * 1e3 / max(self.median_ms, 1e-3))))
        return max(by_time, self.min_timed - self.timed)

    def run(self, lead: list[list[int]], batches: list[list[list[int]]], accounted) -> tuple[dict, list[dict]]:
        """`lead` untimed, then each of `batches` back to back: (the lead's answer, the timed
        answers), each through accounted(answer, prompts)."""
        each_s = self.timeout_s / 2 if self.median_ms is None else 2 * self.median_ms / 1e3
        deadline = self.timeout_s + (len(batches) + 1) * each_s
        answers = self.runner.request("generate", deadline, batches=[lead, *batches],
                                      max_new_tokens=self.new_tokens)["answers"]
        answers = [accounted(a, len(b)) for a, b in zip(answers, [lead, *batches])]
        self.median_ms = _median([(a["end_ns"] - a["start_ns"]) / 1e6 for a in answers[1:]])
        self.issued += len(answers)
        self.timed += len(batches)
        self.size = self._size()
        return answers[0], answers[1:]


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]

"""Timed requests vary their prompts the same way for every engine: a prefix cache cannot answer
a repeated prompt, and the greedy-determinism check compares each prompt with itself."""
import pytest

from evaluator.launch.process import RunnerFailure
from evaluator.measure import back_to_back, scenarios


class Recording:
    """A runner that answers generate with tokens derived from the prompt (or, when `drift`, a
    request's own count), each request taking `request_ms` (or, when `jitter`, 1-10 times its
    tokens' count in ms), and remembers every prompt it was sent, every back-to-back chunk and
    every deadline."""

    def __init__(self, drift=False, request_ms=None, jitter=False):
        self.sent, self.drift, self.request_ms, self.jitter = [], drift, request_ms, jitter
        self.chunks, self.deadlines = [], []  # chunks: the batches of each back-to-back request

    def request(self, op, timeout, **kw):
        if op == "energy":
            return {"joules": {}}
        if "batches" in kw:  # back to back: answered as one request per batch
            self.chunks.append(kw["batches"])
            self.deadlines.append(timeout)
            return {"answers": [self.request(op, timeout, prompts=b, max_new_tokens=kw["max_new_tokens"])
                                for b in kw["batches"]]}
        prompts, n = kw["prompts"], kw["max_new_tokens"]
        self.sent.append(prompts)
        salt = len(self.sent) if self.drift else 0
        tokens = [[(p[-1] + salt + i) % 50 for i in range(n)] for p in prompts]
        ms = self.request_ms or (n + 1) * (1 + len(self.sent) * 37 % 10 if self.jitter else 1)
        return {"tokens": tokens, "start_ns": 0, "token_ns": [round(1e6 * ms * (i + 1) / (n + 1)) for i in range(n)],
                "end_ns": round(1e6 * ms)}


PROMPTS = [[1, 10 + i, 20 + i] for i in range(8)]


def test_latency_requests_take_the_prompts_in_turn_and_each_is_checked_against_itself():
    runner = Recording()
    sc = scenarios.Latency(new_tokens=4, warmup=1, min_iterations=16, min_duration_s=0, max_time_s=0.5)
    out = scenarios.run_latency(runner, PROMPTS, sc, 10)
    # 5 ms a request: chunks of CHUNK_S, run back to back, each led by an untimed request on the
    # prompt before its first timed one
    (chunk,) = runner.chunks
    assert len(chunk) == 1 + round(back_to_back.CHUNK_S * 1000 / 5) and out["iterations"] == len(chunk) - 1
    assert chunk[0] == [PROMPTS[-1]] and [b[0] for b in chunk[1:17]] == [PROMPTS[i % 8] for i in range(16)]
    # Different prompts give different tokens: not a determinism failure. prompts[0]'s are kept.
    assert out["output_tokens"] == runner.request("generate", 1, prompts=[PROMPTS[0]], max_new_tokens=4)["tokens"][0]
    assert out["distinct_prompts"] == 8


def test_a_chunk_gives_each_request_its_time_and_a_slow_devices_minimum_costs_one_lead():
    fast = Recording()
    scenarios.run_latency(fast, PROMPTS, scenarios.Latency(new_tokens=4, warmup=1, min_iterations=16, min_duration_s=0,
                                                           max_time_s=0.5), 10)
    # 200 requests of 5 ms and their lead: the timeout, plus twice the slowest request for each
    assert fast.deadlines == [pytest.approx(10 + 201 * 2 * 0.005)]
    slow = Recording(request_ms=2000)
    out = scenarios.run_latency(slow, PROMPTS, scenarios.Latency(new_tokens=4, warmup=1, min_iterations=10,
                                                                 min_duration_s=0, max_time_s=0), 10)
    assert [len(c) for c in slow.chunks] == [1 + 10] and out["iterations"] == 10
    assert slow.deadlines == [pytest.approx(10 + 11 * 2 * 2.0)]
    # nothing timed before the loop (no warmup): one request after its lead first, then by time
    cold = Recording()
    scenarios.run_latency(cold, PROMPTS, scenarios.Latency(new_tokens=4, warmup=0, min_iterations=16, min_duration_s=0,
                                                           max_time_s=0.5), 10)
    assert [len(c) for c in cold.chunks][:2] == [2, 201] and cold.deadlines[0] == pytest.approx(2 * 10)


def test_no_request_run_is_dropped_at_the_sample_cap():
    runner = Recording(jitter=True)  # too scattered for any precision: only the cap stops it
    sc = scenarios.Latency(new_tokens=4, warmup=1, min_iterations=250, min_duration_s=0, max_time_s=60, precision=0,
                           max_iterations=300)
    out = scenarios.run_latency(runner, PROMPTS, sc, 10)
    assert len(runner.chunks) > 2 and out["iterations"] == 300 == sum(len(c) - 1 for c in runner.chunks)


def test_a_prompt_that_answers_differently_the_second_time_is_invalid():
    sc = scenarios.Latency(new_tokens=4, warmup=0, min_iterations=16, min_duration_s=0, max_time_s=0.5)
    # no warmup: the first chunk is one request (prompt 1) after its lead; the second chunk's lead
    # takes prompt 1 again
    with pytest.raises(RunnerFailure, match=r"the untimed lead before timed request 2 returned other tokens than the "
                                            r"first request on the same prompt \(1 of 8\)") as err:
        scenarios.run_latency(Recording(drift=True), PROMPTS, sc, 10)
    assert err.value.status == "invalid"


def test_throughput_steps_rotate_through_distinct_batches():
    runner = Recording()
    pool = [[1, i] for i in range(16)]
    sc = scenarios.Throughput(new_tokens=3, batch_sizes=(1, 4), min_iterations=6, max_time_s=0.2, distinct_batches=4)
    scenarios.run_throughput(runner, pool, sc, 10)
    slices = [tuple(map(tuple, pool[i * 4:(i + 1) * 4])) for i in range(4)]
    (chunk4,) = [[tuple(map(tuple, b)) for b in c] for c in runner.chunks if len(c[0]) == 4]
    assert chunk4[0] == slices[-1], "led by the slice before the first timed one"
    assert chunk4[1:6] == [*slices, slices[0]], "every slice of four distinct prompts is used, in turn"
    (chunk1,) = [c for c in runner.chunks if len(c[0]) == 1]
    assert len({b[0][1] for b in chunk1[1:]}) == 4

"""Timed requests vary their prompts the same way for every engine: a prefix cache cannot answer
a repeated prompt, and the greedy-determinism check compares each prompt with itself."""
import pytest

from evaluator.launch.process import RunnerFailure
from evaluator.measure import scenarios


class Recording:
    """A runner that answers generate with tokens derived from the prompt (or, when `drift`, a
    request's own count) and remembers every prompt it was sent."""

    def __init__(self, drift=False):
        self.sent, self.drift, self.chunks = [], drift, []

    def request(self, op, timeout, **kw):
        if op == "energy":
            return {"joules": {}}
        if "batches" in kw:  # back to back: answered as one request per batch
            self.chunks.append(len(kw["batches"]))
            return {"answers": [self.request(op, timeout, prompts=b, max_new_tokens=kw["max_new_tokens"])
                                for b in kw["batches"]]}
        prompts, n = kw["prompts"], kw["max_new_tokens"]
        self.sent.append(prompts)
        salt = len(self.sent) if self.drift else 0
        tokens = [[(p[-1] + salt + i) % 50 for i in range(n)] for p in prompts]
        return {"tokens": tokens, "start_ns": 0, "token_ns": [1_000_000 * (i + 1) for i in range(n)],
                "end_ns": 1_000_000 * (n + 1)}


PROMPTS = [[1, 10 + i, 20 + i] for i in range(8)]


def test_latency_requests_take_the_prompts_in_turn_and_each_is_checked_against_itself():
    runner = Recording()
    sc = scenarios.Latency(new_tokens=4, warmup=1, min_iterations=16, min_duration_s=0, max_time_s=0.5)
    out = scenarios.run_latency(runner, PROMPTS, sc, 10)
    timed = [p[0] for p in runner.sent[1:]]  # after the warmup
    assert timed[:16] == [PROMPTS[i % 8] for i in range(16)]
    # Different prompts give different tokens: not a determinism failure. prompts[0]'s are kept.
    assert out["output_tokens"] == runner.request("generate", 1, prompts=[PROMPTS[0]], max_new_tokens=4)["tokens"][0]
    assert out["distinct_prompts"] == 8
    # 5 ms a request: the runner gets them in chunks of CHUNK_S to run back to back
    assert set(runner.chunks) == {round(scenarios.CHUNK_S * 1000 / 5)}


def test_a_prompt_that_answers_differently_the_second_time_is_invalid():
    sc = scenarios.Latency(new_tokens=4, warmup=0, min_iterations=16, min_duration_s=0, max_time_s=0.5)
    with pytest.raises(RunnerFailure, match="same prompt") as err:
        scenarios.run_latency(Recording(drift=True), PROMPTS, sc, 10)
    assert err.value.status == "invalid"


def test_throughput_steps_rotate_through_distinct_batches():
    runner = Recording()
    pool = [[1, i] for i in range(16)]
    sc = scenarios.Throughput(new_tokens=3, batch_sizes=(1, 4), min_iterations=6, max_time_s=0.2, distinct_batches=4)
    scenarios.run_throughput(runner, pool, sc, 10)
    batch4 = [tuple(map(tuple, p)) for p in runner.sent if len(p) == 4]
    assert len(set(batch4)) == 4, "every slice of four distinct prompts is used"
    assert batch4[1:5] == [tuple(map(tuple, pool[i * 4:(i + 1) * 4])) for i in range(4)]  # after the warmup
    assert len({p[0][1] for p in runner.sent if len(p) == 1}) == 4

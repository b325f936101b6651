"""null: an instant fake engine for testing the evaluator, and failing on command.

It reads no weights. Generation is a fixed function of the previous token, scoring is a
uniform distribution, and the load option `fault` makes it misbehave in exactly one way, so
every failure path of the evaluator can be driven for real. Its speed is the harness's
own overhead: nothing else happens in it.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.environ.get("DEPLOY_EVAL_RUNNER_LIB", os.path.join(os.path.dirname(__file__), "..", "..")))

from evaluator.runner import Engine, RunnerError, serve  # noqa: E402

FAULTS = {
    "none": "behave",
    "crash_on_load": "exit(3) while loading, without answering",
    "crash_on_generate": "exit(3) in the middle of a generate request",
    "hang_on_generate": "never answer a generate request",
    "oom_on_load": "answer load with an out_of_memory error",
    "garbage_on_generate": "answer generate with a line that is not JSON",
    "wrong_token_count": "return one token fewer than asked",
    "slow_tokens": "sleep 20 ms per generated token",
    "slow_intake": "spend 20 ms taking each request in (generate's before its first step, serving's in submit), "
                   "then sleep 20 ms per generated token",
    "malformed_score": "answer score with log-probabilities that are not a list",
    "truncated_on_generate": "write half an answer to generate, then exit",
    "noisy_latency": "sleep 2 ms x Pareto(1.5) per generate request (heavy-tailed: one in 32 over 20 ms): too "
                     "scattered for a precise median within a short cap",
    "alloc_beyond_limit": "really allocate 1 GiB under a 256 MiB address-space limit while loading",
    "inconsistent_tokens": "generate tokens that its own scoring ranks last",
}
OPTIONS = {"fault", "vocab_size", "device", "threads", "dtype"}


class NullEngine(Engine):
    def __init__(self):
        self.fault = "none"
        self.vocab_size = 512
        self.in_flight = {}  # serving: rid -> [last token, tokens still to make]

    def describe(self):
        return {
            "engine": "null", "engine_version": "1", "versions": {}, "device": "cpu",
            "available": True, "unavailable_reason": None,
            "supports": {"score": True, "batch": True}, "build": {}, "faults": FAULTS,
        }

    def load(self, model, options):
        unknown = set(options) - OPTIONS
        if unknown:
            raise RunnerError("bad_request", f"unknown load options {sorted(unknown)}; valid: {sorted(OPTIONS)}")
        self.fault = options.get("fault", "none")
        if self.fault not in FAULTS:
            raise RunnerError("bad_request", f"unknown fault {self.fault!r}; valid: {', '.join(FAULTS)}")
        config = os.path.join(model["path"], "config.json")
        self.vocab_size = int(options.get("vocab_size") or (json.load(open(config))["vocab_size"] if os.path.exists(config) else 512))
        if self.fault == "crash_on_load":
            os._exit(3)
        if self.fault == "oom_on_load":
            raise MemoryError("null backend: simulated out of memory while loading")
        if self.fault == "alloc_beyond_limit":
            import resource
            used = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            resource.setrlimit(resource.RLIMIT_AS, (used + 256 * 2**20, resource.RLIM_INFINITY))
            try:
                self.ballast = bytearray(2**30)
            except MemoryError:  # the kernel refused the mapping: a real allocation failure
                raise MemoryError("null backend: 1 GiB refused under a 256 MiB address-space limit") from None
        serving = {"serves_through": "the same engine as every other scenario"} if model.get("scenario") == "serving" else {}
        return {"parameters": 0, "vocab_size": self.vocab_size, "device": "cpu", "settings": serving}

    def generate(self, prompts, max_new_tokens, on_token):
        if self.fault == "crash_on_generate":
            os._exit(3)
        if self.fault == "hang_on_generate":
            while True:
                time.sleep(3600)
        if self.fault == "garbage_on_generate":
            self.protocol_stream.write("{this is not json\n")
        if self.fault == "truncated_on_generate":
            self.protocol_stream.write('{"id": 99, "ok": tr')
            self.protocol_stream.flush()
            os._exit(4)
        if self.fault == "noisy_latency":
            import random
            time.sleep(min(0.002 * random.paretovariate(1.5), 0.2))
        if self.fault == "slow_intake":
            time.sleep(0.02)
        steps = max_new_tokens - 1 if self.fault == "wrong_token_count" else max_new_tokens
        last = [p[-1] for p in prompts]
        out = [[] for _ in prompts]
        for _ in range(steps):
            if self.fault in ("slow_tokens", "slow_intake"):
                time.sleep(0.02)
            last = [self._next(t) for t in last]
            if self.fault == "inconsistent_tokens":
                last = [self.vocab_size - 1 for _ in last]
            for row, t in zip(out, last):
                row.append(t)
            on_token()
        return out

    def _next(self, token):
        """The token generate and step make after `token`: a fixed function, no model."""
        return (token * 31 + 7) % self.vocab_size

    def submit(self, rid, prompt, max_new_tokens):
        if self.fault == "slow_intake":
            time.sleep(0.02)
        self.in_flight[rid] = [prompt[-1], max_new_tokens]

    def step(self, wait_s=None):
        """One token for every request in flight, as generate makes them (continuous batching
        with no cost: the harness's own ceiling)."""
        if self.fault in ("slow_tokens", "slow_intake"):
            time.sleep(0.02)
        out = []
        for rid, state in list(self.in_flight.items()):
            state[0] = self._next(state[0])
            state[1] -= 1
            out.append((rid, [state[0]]))
            if state[1] == 0:
                del self.in_flight[rid]
        return out

    def score(self, sequences, start, top_k, want=None):
        import math
        if self.fault == "malformed_score":
            return [{"logprobs": None, "top": None} for _ in sequences]
        if self.fault == "inconsistent_tokens":  # token 0 is certain; everything else is impossible
            return [{"logprobs": [0.0 if t == 0 else -30.0 for t in s[start:]],
                     "top": [[[0, 0.0]][:top_k] for _ in range(len(s) - start)]} for s in sequences]
        lp = -math.log(self.vocab_size)  # uniform: every id, chosen or not, has this log-probability
        return [{"logprobs": [lp] * (len(s) - start), "top": [[[i, lp] for i in range(top_k)] for _ in range(len(s) - start)],
                 **({"wanted": [[lp] * len(ids) for ids in want[n]]} if want else {})} for n, s in enumerate(sequences)]


if __name__ == "__main__":
    serve(NullEngine())

"""Serving through transformers' own continuous batching (the `serving` request's engine API).

transformers 5 serves a stream of requests with a ContinuousBatchingManager: a paged KV cache,
a scheduler that admits requests between forward passes, and a background thread that runs
them; requests go in with add_request and their tokens stream out of a queue. The runner
submits each request as its scheduled time comes and drains the queue in step(); every token
carries the time the manager's thread produced it (record_timestamps, the same perf_counter
clock as the harness), so waiting for the queue never enters a latency. Each request's time
pending in the manager's queue (created to scheduled, its own clock) is handed back with it.

Settings are set, not inferred from free memory: the KV cache holds KV_CACHE_BYTES (as the
vLLM runner's) or MAX_CACHED_TOKENS, whichever is less, a forward takes at most
MAX_BATCH_TOKENS, prefix sharing is off (every request pays its own prefill, as in the other
engines' runs) and the attention is the variant's in its paged form (no switch to flash
attention: 5.24 is told so, 5.17 is given `paged|<attn>` first, which it keeps). The manager is
made on the first request of a load and stopped, its thread at once, before any other use of
the model, at the next load and at shutdown. transformers without continuous batching (before
5.x's ContinuousBatchingConfig) answers `unsupported` for serving and runs everything else.
"""
import inspect

from evaluator.runner import RunnerError

KV_CACHE_BYTES = 2 * 1024 ** 3
MAX_CACHED_TOKENS = 131_072  # a small model's 2 GiB would be millions of tokens: allocating them took seconds
MAX_BATCH_TOKENS = 512
PAGE_TOKENS = 64
WAIT_S = 0.05  # the longest step() waits for a token when no arrival is due sooner


def _api():
    try:
        from transformers import ContinuousBatchingConfig, GenerationConfig
    except ImportError as exc:
        raise RunnerError("unsupported", f"this transformers has no continuous batching to serve with ({exc})") from None
    return ContinuousBatchingConfig, GenerationConfig


def settings(model) -> dict:
    """The manager's configuration for this model (pages that fill KV_CACHE_BYTES), in the
    names this transformers takes (5.17 calls a page a block and has no auto_switch_to_flash)."""
    ContinuousBatchingConfig, _ = _api()
    config = model.config.get_text_config()
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_token = 2 * config.num_hidden_layers * heads * head_dim * model.dtype.itemsize
    taken = inspect.signature(ContinuousBatchingConfig).parameters
    wanted = {"num_blocks": max(1, min(KV_CACHE_BYTES // per_token, MAX_CACHED_TOKENS) // PAGE_TOKENS),
              "page_size" if "page_size" in taken else "block_size": PAGE_TOKENS,
              "max_batch_tokens": MAX_BATCH_TOKENS, "allow_block_sharing": False, "auto_switch_to_flash": False}
    return {k: v for k, v in wanted.items() if k in taken}


class ContinuousBatching:
    def __init__(self, model):
        ContinuousBatchingConfig, GenerationConfig = _api()
        self.model, self.attention = model, model.config._attn_implementation
        self.settings = settings(model)
        if "auto_switch_to_flash" not in self.settings and not self.attention.startswith("paged|"):
            model.set_attn_implementation(f"paged|{self.attention}")  # 5.17: else it may switch to flash
        generation = GenerationConfig(do_sample=False, eos_token_id=-1, pad_token_id=0)
        self.manager = model.init_continuous_batching(generation_config=generation,
                                                      continuous_batching_config=ContinuousBatchingConfig(**self.settings))
        self.manager.start()
        self.settings = dict(self.settings, attention=model.config._attn_implementation)  # what it serves with
        self.rid = {}    # the manager's request id -> the harness's
        self.seen = {}   # the harness's id -> tokens already handed back
        self.submitted = 0  # the manager's ids stay unique across schedules (the harness's restart at 0)
        self.queued_ns = {}  # the harness's id -> how long the manager kept it pending before scheduling it

    def submit(self, rid: int, prompt: list[int], max_new_tokens: int) -> None:
        key, self.submitted = f"r{self.submitted}", self.submitted + 1
        if self.manager.add_request(list(prompt), request_id=key, max_new_tokens=max_new_tokens, streaming=True,
                                    record_timestamps=True, eos_token_id=-1) is None:
            raise RuntimeError("transformers' continuous batching refused the request (its queue is closed)")
        self.rid[key], self.seen[rid] = rid, 0

    def step(self, wait_s: float | None) -> list[tuple[int, list[int], list]]:
        """Every token produced since the last step, with the time it was produced (None where
        the manager kept none); waits for the first one at most until the next arrival is due."""
        wait = WAIT_S if wait_s is None else min(WAIT_S, max(0.0, wait_s))
        made, result = {}, self.manager.get_result(timeout=wait)
        if result is None and not self.manager.is_running():  # else the schedule would wait for ever
            why = getattr(getattr(self.manager, "background_thread_status", None), "fatal_error", None)
            raise RuntimeError(f"transformers' continuous batching stopped: {why or 'its thread is not running'}")
        while result is not None:
            if result.error:
                raise RuntimeError(f"transformers' continuous batching failed request {result.request_id}: {result.error}")
            rid = self.rid[result.request_id]
            new = result.generated_tokens[self.seen[rid]:]
            # from the end: a request the manager restarted keeps its tokens but times anew
            stamps = result.timestamps[len(result.timestamps) - len(new):] if result.timestamps and new else []
            self.seen[rid] += len(new)
            tokens, ns = made.setdefault(rid, ([], []))
            tokens += new
            ns += [int(t * 1e9) for t in stamps] if len(stamps) == len(new) else [None] * len(new)
            if result.is_finished():
                del self.rid[result.request_id]
                # the manager's own clock: created, and no longer pending (lifespan[0]; 5.24, not 5.17)
                began, created = (getattr(result, "lifespan", None) or (-1,))[0], getattr(result, "created_time", None)
                if created is not None and began >= created:
                    self.queued_ns[rid] = round((began - created) * 1e9)
            result = self.manager.get_result(timeout=0)
        return [(rid, tokens, ns) for rid, (tokens, ns) in made.items()]

    def request_stats(self, rid: int) -> dict:
        queued = self.queued_ns.pop(rid, None)
        return {} if queued is None else {"queued_ns": queued}

    def stop(self) -> None:
        """Stop the thread at once (requests still in flight are dropped: the schedule that
        wanted them has ended) and put the variant's attention back."""
        self.manager.stop(block=True, timeout=30, hard_stop=True)
        if self.manager.is_running():
            raise RunnerError("internal", "transformers' continuous batching thread did not stop within 30 s")
        if self.model.config._attn_implementation != self.attention:
            self.model.set_attn_implementation(self.attention)

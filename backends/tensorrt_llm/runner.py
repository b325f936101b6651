"""tensorrt_llm: NVIDIA TensorRT-LLM through its LLM API (tensorrt_llm.LLM), on NVIDIA GPUs.

Two ways to run a model, one variant axis (`engine`): TensorRT-LLM's PyTorch backend (its
default LLM class, no build step), or a TensorRT engine compiled at load
(tensorrt_llm._tensorrt_engine.LLM), whose build time is reported apart as compile_s, the way
torch.compile's is.

- Generation: greedy, exactly max_new_tokens (ignore_eos), prompts given as token ids; each
  request streams (generate_async(..., streaming=True)) and step i is stamped when every
  prompt of the batch has its i-th token on the host.
- Scoring: the prompt's context logits (return_context_logits) with the log-softmax taken here
  on the GPU; only the numbers asked for go back. Prefix reuse (KV block reuse) is off, so
  every position's logits are computed and timed requests never hit a cache.
- Serving: each request goes to generate_async(streaming=True) the moment the schedule offers
  it, so TensorRT-LLM's in-flight batching admits it between iterations; a thread per request
  reads its stream and stamps each token as it arrives (evaluator/runner/streams.py).
- Memory: the KV cache reservation is a fraction of the free GPU memory, set (kv_fraction,
  default 0.5) and recorded. The executor runs in this process (TLLM_WORKER_USE_SINGLE_PROCESS),
  so NVML's per-process figure is the whole engine's.

Where TensorRT-LLM cannot be imported (no NVIDIA driver, no CUDA: every CPU machine), describe
says so and load answers `unsupported` with the import error: never a fake result.
"""
import os
import sys
import time

os.environ.setdefault("TLLM_WORKER_USE_SINGLE_PROCESS", "1")  # before the import: the executor in this process
sys.path.insert(0, os.environ.get("DEPLOY_EVAL_RUNNER_LIB", os.path.join(os.path.dirname(__file__), "..", "..")))

from evaluator.runner import Engine, RunnerError, check_options, choice, serve  # noqa: E402
from evaluator.runner.streams import Streams  # noqa: E402

try:
    import torch
    from tensorrt_llm import LLM, SamplingParams
    from tensorrt_llm.llmapi import KvCacheConfig
    WHY_NOT = None if torch.cuda.is_available() else "TensorRT-LLM imported, but torch sees no CUDA device here"
except Exception as exc:  # noqa: BLE001  missing libcuda/libnvinfer/MPI surface as ImportError or OSError
    WHY_NOT = f"TensorRT-LLM cannot be imported here ({type(exc).__name__}: {str(exc)[:300]}); it needs an NVIDIA GPU"

OPTIONS = {"dtype", "engine", "device", "threads", "kv_fraction", "max_batch_size"}
DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


class TensorRTLLMEngine(Engine):
    def __init__(self):
        self.llm = None
        self.streams = Streams("TensorRT-LLM")

    def describe(self):
        version = getattr(sys.modules.get("tensorrt_llm"), "__version__", None)  # imported above, where it can be
        cuda = WHY_NOT is None
        return {
            "engine": "tensorrt_llm", "engine_version": version,
            "versions": {"tensorrt_llm": version, "torch": getattr(sys.modules.get("torch"), "__version__", None)},
            "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "devices_available": ["cuda"] if cuda else [],
            "available": cuda, "unavailable_reason": WHY_NOT,
            "supports": {"score": True, "batch": True},
        }

    def load(self, model, options):
        check_options(options, OPTIONS, model, ("hf",), "tensorrt_llm")
        if WHY_NOT:
            raise RunnerError("unsupported", WHY_NOT)
        dtype = choice(options, "dtype", DTYPES, "bf16")
        engine = choice(options, "engine", ("pytorch", "engine"), "pytorch")
        fraction = float(options.get("kv_fraction") or 0.5)
        max_batch = int(options.get("max_batch_size") or 16)
        context = int(model.get("context_tokens") or 2048)
        kv = KvCacheConfig(free_gpu_memory_fraction=fraction, enable_block_reuse=False)
        common = dict(model=model["path"], dtype=DTYPES[dtype], tensor_parallel_size=1, kv_cache_config=kv,
                      max_batch_size=max_batch, max_seq_len=context)
        t0 = time.perf_counter()
        try:
            if engine == "engine":
                from tensorrt_llm import BuildConfig
                from tensorrt_llm._tensorrt_engine import LLM as EngineLLM
                # context logits are gathered only where the engine was built to keep them
                self.llm = EngineLLM(build_config=BuildConfig(max_batch_size=max_batch, max_seq_len=context,
                                                              gather_context_logits=True), **common)
            else:
                self.llm = LLM(**common)
        except Exception as exc:  # noqa: BLE001
            if self.is_out_of_memory(exc):
                raise
            raise RunnerError("unsupported", f"TensorRT-LLM cannot load {model['path']}: {type(exc).__name__}: {exc}"[:600]) from None
        built = time.perf_counter() - t0
        settings = {"threads": torch.get_num_threads(), "dtype": dtype, "engine": engine, "kv_cache_free_fraction": fraction,
                    "kv_block_reuse": False, "max_batch_size": max_batch, "max_seq_len": context,
                    "executor": "in process (TLLM_WORKER_USE_SINGLE_PROCESS=1)",
                    **({"serves_through": "the LLM API's generate_async (in-flight batching), the engine every "
                                          "scenario runs"} if model.get("scenario") == "serving" else {})}
        result = {"vocab_size": self._vocab(model["path"]), "device": "cuda", "settings": settings,
                  "parameters": None}
        if engine == "engine":
            result["compile_s"] = built  # the TensorRT engine build, apart like torch.compile's
        return result

    @staticmethod
    def _vocab(path: str) -> int:
        import json
        with open(os.path.join(path, "config.json")) as f:
            return int(json.load(f)["vocab_size"])

    def generate(self, prompts, max_new_tokens, on_token):
        params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0, top_k=1, ignore_eos=True, detokenize=False)
        streams = [self.llm.generate_async(list(p), params, streaming=True) for p in prompts]
        steps = [iter(s) for s in streams]
        for i in range(max_new_tokens):
            for s, it in zip(streams, steps):
                while len(s.outputs[0].token_ids) <= i:  # several tokens may arrive in one update
                    next(it)
            on_token()
        tokens = [list(s.outputs[0].token_ids) for s in streams]
        if any(len(t) != max_new_tokens for t in tokens):
            raise RunnerError("internal", f"TensorRT-LLM stopped early: {[len(t) for t in tokens]} of {max_new_tokens} tokens")
        return tokens

    def score(self, sequences, start, top_k, want=None):
        params = SamplingParams(max_tokens=1, temperature=0.0, return_context_logits=True, detokenize=False)
        results = []
        for i, (seq, out) in enumerate(zip(sequences, self.llm.generate([list(s) for s in sequences], params))):
            logits = out.context_logits.float()  # [len(seq), vocab]: row j predicts token j + 1
            rows = torch.log_softmax(logits[start - 1: len(seq) - 1], dim=-1)
            ids = torch.tensor(seq[start:], device=rows.device)
            entry = {"logprobs": rows.gather(1, ids[:, None])[:, 0].tolist(), "top": [[] for _ in seq[start:]]}
            if top_k:
                values, indices = rows.topk(top_k, dim=-1)
                entry["top"] = [list(zip(ix, v)) for ix, v in zip(indices.tolist(), values.tolist())]
            if want:
                entry["wanted"] = rows.gather(1, torch.tensor(want[i], device=rows.device)).tolist()
            results.append(entry)
        return results

    def submit(self, rid, prompt, max_new_tokens):
        params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0, top_k=1, ignore_eos=True, detokenize=False)
        stream = self.llm.generate_async(list(prompt), params, streaming=True)

        def read(emit):
            seen = 0
            for update in stream:  # one update per iteration that gave this request tokens
                ids = update.outputs[0].token_ids
                if len(ids) > seen:
                    emit(ids[seen:])
                    seen = len(ids)
            if seen != max_new_tokens:
                raise RuntimeError(f"TensorRT-LLM stopped after {seen} of {max_new_tokens} tokens")
        self.streams.start(rid, read)

    def step(self, wait_s=None):
        return self.streams.step(wait_s)

    def device_memory(self):
        return torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated()

    def is_out_of_memory(self, exc):
        return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


if __name__ == "__main__":
    serve(TensorRTLLMEngine())

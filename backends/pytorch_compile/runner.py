"""pytorch_compile: pytorch_eager's engine with the model's forward under torch.compile.

Compilation happens inside load, on the shapes the protocol will use (a prefill, one decode
step, a scoring pass; dynamic shapes so other lengths reuse the graphs), and its duration is
reported as `compile_s` beside `load_s`, never inside a timed request. The shared-context
scoring graphs (HellaSwag) compile on their first, untimed use, so timing cells do not pay for
them. A later shape that still triggers a recompile is counted (`engine_stats.recompiles_after_load` in memory answers) rather than hidden.
"""
import importlib.util
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.environ.get("DEPLOY_EVAL_RUNNER_LIB", os.path.join(HERE, "..", "..")))

# The eager engine is reused as is: one implementation of greedy decoding and scoring.
_spec = importlib.util.spec_from_file_location("pytorch_eager_runner", os.path.join(HERE, "..", "pytorch_eager", "runner.py"))
eager = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(eager)

import torch  # noqa: E402
from torch._inductor.runtime.cache_dir_utils import cache_dir  # noqa: E402  (honours TORCHINDUCTOR_CACHE_DIR)

from evaluator.runner import RunnerError, serve  # noqa: E402

MODES = ("default", "reduce-overhead", "max-autotune")
GRAPHED = ("reduce-overhead", "max-autotune")  # the modes that replay CUDA graphs on a GPU


def _owned(output, cache_name: str):
    """The forward's output moved out of CUDA-graph memory. Under CUDA graphs every compiled call
    starts a new iteration that reuses the previous one's output buffers, but the KV cache built
    by one step is read by the next (and a scoring context's cache by every ending batch): seen on
    an H200, "accessing tensor output of CUDAGraphs that has been overwritten by a subsequent
    run". PyTorch's remedy is to clone what must outlive the call, outside the compiled code."""
    output.logits = output.logits.clone()
    for layer in getattr(output.get(cache_name), "layers", ()):
        for name in ("keys", "values"):
            if isinstance(getattr(layer, name, None), torch.Tensor):
                setattr(layer, name, getattr(layer, name).clone())
    return output


def _graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


class CompiledEngine(eager.TorchEngine):
    graphs_after_compile = 0  # until a load compiles

    def describe(self):
        info = super().describe()
        info.update(engine="pytorch_compile", modes=list(MODES))
        return info

    def load(self, model, options):
        options = dict(options)
        mode = options.pop("mode", "default")
        if mode not in MODES:
            raise RunnerError("bad_request", f"mode {mode!r}; valid: {', '.join(MODES)}")
        result = super().load(model, dict(options, attn="sdpa", kv_cache="kv"))
        torch._dynamo.reset()
        compiled = torch.compile(self.model.forward, mode=mode, dynamic=True)
        graphed = mode in GRAPHED and self.device == "cuda"
        self.model.forward = (lambda *a, **k: _owned(compiled(*a, **k), self.cache_name)) if graphed else compiled
        t0 = time.perf_counter()
        try:
            self.generate([[1, 2, 3, 4]], 3, lambda: None)  # prefill and decode graphs
            self.score([[1, 2, 3, 4, 5]], 1, 1)              # the scoring graph
        except Exception as exc:  # an inductor failure is this backend failing to load, said plainly
            raise RunnerError("unsupported", f"torch.compile(mode={mode}) failed: {type(exc).__name__}: {exc}"[:500]) from None
        result["compile_s"] = time.perf_counter() - t0
        result["mode"] = mode
        # compile_s is with the kernels this cache already holds: a warm cache compiles less
        result["settings"] = dict(result["settings"], compile_mode=mode, dynamic=True, inductor_cache=cache_dir(),
                                  outputs_cloned=graphed)
        self.graphs_after_compile = _graphs()
        return result

    def submit(self, rid, prompt, max_new_tokens):  # backend.toml's serving_unsupported says why
        raise RunnerError("unsupported", "no asynchronous API of its own (pytorch_eager serves through transformers' "
                          "continuous batching)")

    def stats(self):
        return {"recompiles_after_load": _graphs() - self.graphs_after_compile}


if __name__ == "__main__":
    serve(CompiledEngine())

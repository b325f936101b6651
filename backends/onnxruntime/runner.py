"""onnxruntime: the model exported to ONNX (export.py) and run by ONNX Runtime.

Generation keeps the KV cache in ONNX Runtime's own tensors (OrtValues) from step to step, so
nothing is copied through numpy between steps; scoring reads the full logits of one pass. On a
GPU provider generation goes through IOBinding: the KV cache is bound to the device and stays
there, and only the logits come to the host (where the argmax runs), so decode measures the GPU,
not PCIe copies of the whole cache. `io_binding` (auto: on for a GPU provider) is recorded, and
can be switched on with the CPU provider, where it must give exactly the same tokens (a test).
The same file serves backends/onnxruntime_gpu (package onnxruntime-gpu, CUDA and TensorRT
execution providers): which providers exist is a property of the installed package, asked at
run time, and a provider that is missing or fails to start is `unsupported`, never a silent
fallback to the CPU.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.environ.get("DEPLOY_EVAL_RUNNER_LIB", os.path.join(HERE, "..", "..")))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

import export  # noqa: E402
from evaluator.runner import Engine, RunnerError, artifact_home, check_options, choice, serve  # noqa: E402

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
PRECISIONS = ("fp32", "int8", "fp16")
OPTIONS = {"precision", "provider", "device", "threads", "io_binding"}
DEVICE_TYPE = {"cpu": "cpu", "cuda": "cuda", "tensorrt": "cuda"}  # where a provider's tensors live


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float32)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


class OrtEngine(Engine):
    name = "onnxruntime"

    def __init__(self):
        self.session = None
        self.provider = "cpu"
        self.io_binding = False

    def describe(self):
        available = ort.get_available_providers()
        return {
            "engine": self.name, "engine_version": ort.__version__,
            "versions": {"onnxruntime": ort.__version__, "numpy": np.__version__},
            "device": ort.get_device().lower(), "available": True, "unavailable_reason": None,
            "supports": {"score": True, "batch": True},
            "build": {"providers": available, "device": ort.get_device()},
        }

    def _check_provider(self, provider: str):
        if provider not in PROVIDERS:
            raise RunnerError("bad_request", f"provider {provider!r}; valid: {', '.join(PROVIDERS)}")
        if PROVIDERS[provider] not in ort.get_available_providers():
            raise RunnerError("unsupported", f"this onnxruntime {ort.__version__} package has no {PROVIDERS[provider]} "
                              f"(it has {', '.join(ort.get_available_providers())}); the GPU providers are in "
                              f"onnxruntime-gpu, i.e. backends/onnxruntime_gpu")

    def load(self, model, options):
        check_options(options, OPTIONS, model, ("hf",), self.name)
        precision = choice(options, "precision", PRECISIONS, "fp32")
        self.provider = options.get("provider", "cpu")
        self._check_provider(self.provider)
        if precision == "int8" and self.provider != "cpu":
            raise RunnerError("unsupported", "int8 dynamic quantization uses CPU-only operators (DynamicQuantizeMatMul)")
        if not os.path.isdir(model["path"]):
            raise RunnerError("bad_request", f"model folder {model['path']} does not exist")
        artifact_home(model)
        art = export.artifact(model, precision, log=lambda m: print(m, file=sys.stderr, flush=True))

        threads = int(options.get("threads") or os.cpu_count() or 1)
        self.session = None
        if self.provider != "cpu" and hasattr(ort, "preload_dlls"):
            # CUDA and cuDNN from the nvidia-* pip packages (PyPI's CUDA torch brings them), so
            # the image needs no CUDA base; libraries already loaded or on the system path win.
            ort.preload_dlls()
        chain = self._providers(art["path"], precision, model)
        path = os.path.join(art["path"], "model.onnx")
        cpu_fallback = "none: the CPU provider runs everything" if self.provider == "cpu" else None
        if self.provider != "cpu":  # first with CPU fallback forbidden: a node that cannot run on the GPU is named
            try:
                self.session = ort.InferenceSession(path, self._options(threads, strict=True), providers=chain)
                cpu_fallback = "none: every node runs on the GPU providers"
            except Exception as exc:  # noqa: BLE001  ORT's message names the nodes
                cpu_fallback = f"the GPU providers alone could not take the graph, so the CPU runs part of it: {str(exc).strip()[:400]}"
                print(f"onnxruntime: {cpu_fallback}", file=sys.stderr, flush=True)
        if self.session is None:
            self.session = ort.InferenceSession(path, self._options(threads), providers=chain)
        if self.session.get_providers()[0] != PROVIDERS[self.provider]:
            raise RunnerError("unsupported", f"{PROVIDERS[self.provider]} did not start (onnxruntime fell back to "
                              f"{self.session.get_providers()[0]}; its log on stderr says why)")
        so = self._options(threads)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        past = next(i for i in self.session.get_inputs() if i.name.startswith("past."))
        self.kv_heads, self.head_dim = past.shape[1], past.shape[3]
        self.kv_dtype = np.float16 if "float16" in past.type else np.float32
        self.vocab = self.session.get_outputs()[0].shape[2]
        binding = choice(options, "io_binding", ("auto", "on", "off"), "auto")
        self.io_binding = binding == "on" or (binding == "auto" and self.provider != "cpu")
        return {"parameters": None, "vocab_size": self.vocab, "device": self.provider, "threads": so.intra_op_num_threads,
                "precision": precision, "artifact": art, "providers": self.session.get_providers(),
                "settings": {"threads": so.intra_op_num_threads, "inter_op_threads": so.inter_op_num_threads,
                             "graph_optimization": "ORT_ENABLE_ALL", "execution_mode": str(so.execution_mode),
                             "providers": self.session.get_providers(), "io_binding": self.io_binding,
                             "cpu_fallback": cpu_fallback}}

    @staticmethod
    def _options(threads: int, strict: bool = False):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if strict:
            so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        return so

    def _providers(self, art_path: str, precision: str, model: dict) -> list:
        """The provider chain: TensorRT, then CUDA for what TensorRT does not take, then the CPU;
        TensorRT with optimization profiles over batch, new tokens and cached tokens (without
        them it would build an engine for every cache length: once per generated token)."""
        if self.provider == "cpu":
            return ["CPUExecutionProvider"]
        if self.provider == "cuda":
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        import json
        import types

        with open(os.path.join(model["path"], "config.json")) as f:
            config = types.SimpleNamespace(**json.load(f))
        layers, kv_heads, head_dim = export.layout(config)
        context, batch = int(model.get("context_tokens") or 2048), 16

        def shapes(b: int, new: int, cached: int) -> str:
            past = [f"past.{i}.{kv}:{b}x{kv_heads}x{cached}x{head_dim}" for i in range(layers) for kv in ("key", "value")]
            return ",".join([f"input_ids:{b}x{new}", *past])
        trt = {"trt_engine_cache_enable": True, "trt_engine_cache_path": art_path + "-trt-engines",
               "trt_fp16_enable": precision == "fp16", "trt_profile_min_shapes": shapes(1, 1, 0),
               "trt_profile_opt_shapes": shapes(1, 1, context // 2), "trt_profile_max_shapes": shapes(batch, context, context)}
        return [("TensorrtExecutionProvider", trt), "CUDAExecutionProvider", "CPUExecutionProvider"]

    def _ort(self, array: np.ndarray):
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))

    def _run(self, ids: np.ndarray, past: list | None):
        """One pass: (logits OrtValue, presents as OrtValues). `past` None means empty."""
        if past is None:
            empty = np.zeros((ids.shape[0], self.kv_heads, 0, self.head_dim), self.kv_dtype)
            past = [self._ort(empty)] * (len(self.inputs) - 1)
        feed = {"input_ids": self._ort(ids.astype(np.int64))}
        feed.update(zip(self.inputs[1:], past))
        out = self.session.run_with_ort_values(self.outputs, feed)
        return out[0], out[1:]

    def _run_bound(self, ids: np.ndarray, past: list | None):
        """One pass through IOBinding: the KV cache in and out on the provider's device, the
        logits bound to the host."""
        device = DEVICE_TYPE[self.provider]
        if past is None:
            empty = np.zeros((ids.shape[0], self.kv_heads, 0, self.head_dim), self.kv_dtype)
            past = [ort.OrtValue.ortvalue_from_numpy(empty, device, 0) for _ in self.inputs[1:]]
        binding = self.session.io_binding()
        binding.bind_ortvalue_input("input_ids", ort.OrtValue.ortvalue_from_numpy(ids.astype(np.int64), device, 0))
        for name, value in zip(self.inputs[1:], past):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output(self.outputs[0], "cpu")
        for name in self.outputs[1:]:
            binding.bind_output(name, device, 0)
        self.session.run_with_iobinding(binding)
        out = binding.get_outputs()
        return out[0], out[1:]

    def generate(self, prompts, max_new_tokens, on_token):
        ids, past, out = np.array(prompts, dtype=np.int64), None, []
        run = self._run_bound if self.io_binding else self._run
        for _ in range(max_new_tokens):
            logits, past = run(ids, past)
            next_ids = logits.numpy()[:, -1, :].argmax(axis=-1)
            out.append(next_ids.tolist())
            on_token()
            ids = next_ids[:, None]
        return [list(row) for row in zip(*out)]

    @staticmethod
    def _entry(rows: np.ndarray, targets: list[int], top_k: int, want=None) -> dict:
        logprobs = _log_softmax(rows)
        entry = {"logprobs": logprobs[np.arange(len(targets)), targets].astype(float).tolist(), "top": [[] for _ in targets]}
        if want:
            entry["wanted"] = np.take_along_axis(logprobs, np.array(want), axis=-1).astype(float).tolist()
        if top_k:
            idx = np.argpartition(-logprobs, top_k - 1, axis=-1)[:, :top_k]
            vals = np.take_along_axis(logprobs, idx, axis=-1)
            order = np.argsort(-vals, axis=-1, kind="stable")
            idx, vals = np.take_along_axis(idx, order, -1), np.take_along_axis(vals, order, -1)
            entry["top"] = [list(zip(i, v)) for i, v in zip(idx.tolist(), vals.astype(float).tolist())]
        return entry

    def score(self, sequences, start, top_k, want=None):
        width = max(len(s) for s in sequences)
        batch = np.array([s + [0] * (width - len(s)) for s in sequences], dtype=np.int64)
        logits = self._run(batch, None)[0].numpy()
        return [self._entry(logits[i, start - 1: len(s) - 1], s[start:], top_k, want[i] if want else None)
                for i, s in enumerate(sequences)]

    def score_continuations(self, prefix, continuations, top_k):
        # The prefix once, its cache repeated for each continuation, the continuations as a batch.
        logits, past = self._run(np.array([prefix]), None)
        first = logits.numpy()[0, -1:]
        n = len(continuations)
        past = [self._ort(np.repeat(p.numpy(), n, axis=0)) for p in past]
        width = max(len(c) for c in continuations)
        batch = np.array([c + [0] * (width - len(c)) for c in continuations], dtype=np.int64)
        rows = self._run(batch, past)[0].numpy()
        return [self._entry(np.concatenate([first, rows[i, : len(c) - 1]]), c, top_k) for i, c in enumerate(continuations)]

    def is_out_of_memory(self, exc):
        text = str(exc)
        return "Failed to allocate memory" in text or "bad_alloc" in text or "out of memory" in text.lower()


if __name__ == "__main__":
    serve(OrtEngine())

"""llamacpp: GGUF models through llama-cpp-python, f32 or quantized, on the CPU.

Quantized files are artifacts: built once with llama.cpp's own quantizer
(llama_cpp.llama_model_quantize; the wheel ships no llama-quantize binary) and cached under
a key of (source sha256, llama-cpp-python version, quantization type).

Decoding is a hand-written greedy loop over Llama.eval, so each step's token is seen the
moment it exists. A serving cell's load starts llama.cpp's own server instead (server.py), built
from this engine's sources, and its requests stream from there. Scoring reads every position's logits (logits_all) and takes the log-softmax
in float64 here; the shared-prefix form evaluates the prefix once and rewinds the KV cache to
it before each continuation.
"""
import ctypes
import hashlib
import os
import subprocess
import sys
import time

sys.path.insert(0, os.environ.get("DEPLOY_EVAL_RUNNER_LIB", os.path.join(os.path.dirname(__file__), "..", "..")))

import llama_cpp  # noqa: E402
import numpy as np  # noqa: E402

from evaluator.runner import Engine, RunnerError, artifact_home, check_options, child, choice, serve  # noqa: E402

import server  # noqa: E402  (beside this file)

CONVERTER_DIR = os.path.join(sys.prefix, "share", "llama.cpp-convert")
CONVERTER = os.path.join(CONVERTER_DIR, "convert_hf_to_gguf.py")

QUANT_TYPES = {
    "f32": llama_cpp.LLAMA_FTYPE_ALL_F32,
    "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
    "q6_k": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K,
    "q5_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M,
    "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
}
OPTIONS = {"quant", "threads", "device", "n_ctx", "kv_type"}


def _system_flags() -> dict:
    """The engine's build, as llama.cpp reports it: which SIMD paths this binary has."""
    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    flags = {}
    for part in info.replace("|", "\n").splitlines():
        if "=" in part:
            key, value = (x.strip() for x in part.split("=", 1))
            if key:
                flags[key] = value
    return {"system_info": info.strip(), "flags": flags}


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


class LlamaCppEngine(Engine):
    def __init__(self):
        self.llm = None
        self.artifact = None
        self.server = None

    def describe(self):
        return {
            "engine": "llama.cpp", "engine_version": llama_cpp.__version__,
            "versions": {"llama-cpp-python": llama_cpp.__version__, "numpy": np.__version__},
            "device": "cpu", "available": True, "unavailable_reason": None,
            "supports": {"score": True, "batch": False}, "build": _system_flags(),
        }

    @staticmethod
    def _cache(model: dict) -> str:
        cache = artifact_home(model)[1]
        os.makedirs(cache, exist_ok=True)
        return cache

    def _converted(self, model: dict) -> dict:
        """A Hugging Face folder as an f32 GGUF, by llama.cpp's own convert_hf_to_gguf.py (from the
        sdist of this engine's version, fetched into the environment by post_install.py)."""
        if not os.path.isfile(CONVERTER):
            raise RunnerError("unsupported", f"llama.cpp's converter is missing from this environment ({CONVERTER}); "
                              "rebuild it: rm -r .venvs/llamacpp")
        tool = open(os.path.join(CONVERTER_DIR, "VERSION")).read().strip()
        key = hashlib.sha256(f"{model['sha256']}|{tool} convert_hf_to_gguf|f32".encode()).hexdigest()[:24]
        path = os.path.join(self._cache(model), f"llamacpp-converted-f32-{key}.gguf")
        info = {"path": path, "key": key, "kind": "gguf f32 (converted)", "tool": f"convert_hf_to_gguf.py ({tool})"}
        if os.path.exists(path):
            return dict(info, reused=True, build_s=None, size_bytes=os.path.getsize(path))
        tmp = f"{path}.{os.getpid()}.tmp"
        env = dict(os.environ, PYTHONPATH=os.path.join(CONVERTER_DIR, "gguf-py"))
        t0 = time.perf_counter()
        try:
            done = child.run([sys.executable, CONVERTER, model["path"], "--outfile", tmp, "--outtype", "f32"],
                             "convert_hf_to_gguf.py", stdout=sys.stderr, stderr=subprocess.PIPE, text=True, env=env)
        except RunnerError:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        if done.returncode != 0 or not os.path.exists(tmp):
            if os.path.exists(tmp):
                os.unlink(tmp)
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RunnerError("unsupported", f"convert_hf_to_gguf.py cannot convert {model['path']}: {last}"[:500])
        os.replace(tmp, path)
        return dict(info, reused=False, build_s=time.perf_counter() - t0, size_bytes=os.path.getsize(path))

    def _quantized(self, source: str, source_sha: str, cache: str, quant: str, threads: int) -> dict:
        """The GGUF for this quantization: the cached artifact, or built now and cached."""
        key = hashlib.sha256(f"{source_sha}|llama-cpp-python {llama_cpp.__version__}|{quant}".encode()).hexdigest()[:24]
        path = os.path.join(cache, f"llamacpp-{quant}-{key}.gguf")
        info = {"path": path, "key": key, "kind": f"gguf {quant}",
                "tool": f"llama_model_quantize (llama-cpp-python {llama_cpp.__version__})"}
        if os.path.exists(path):
            return dict(info, reused=True, build_s=None, size_bytes=os.path.getsize(path))
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = QUANT_TYPES[quant]
        params.nthread = threads
        tmp = f"{path}.{os.getpid()}.tmp"
        t0 = time.perf_counter()
        rc = llama_cpp.llama_model_quantize(source.encode(), tmp.encode(), ctypes.byref(params))
        if rc != 0 or not os.path.exists(tmp):
            if os.path.exists(tmp):
                os.unlink(tmp)  # nothing half-written stays in the cache
            raise RunnerError("internal", f"llama_model_quantize to {quant} failed with code {rc}: "
                              f"is {source} a complete GGUF file? (llama.cpp's log says more)")
        os.replace(tmp, path)  # atomic: a half-written artifact is never reused
        return dict(info, reused=False, build_s=time.perf_counter() - t0, size_bytes=os.path.getsize(path))

    def load(self, model, options):
        check_options(options, OPTIONS, model, ("gguf", "hf"), "llamacpp")
        if options.get("device", "cpu") != "cpu":
            raise RunnerError("unsupported", "this llama-cpp-python build runs on the CPU only")
        quant = choice(options, "quant", QUANT_TYPES, "f32")
        if not os.path.exists(model["path"]):
            raise RunnerError("bad_request", f"model {model['path']} does not exist")
        threads = int(options.get("threads") or os.cpu_count() or 1)
        cache = self._cache(model)
        if model["format"] == "hf":  # convert once to f32; every quantization starts from that file
            converted = self._converted(model)
            if quant == "f32":
                self.artifact = converted
            else:
                self.artifact = dict(self._quantized(converted["path"], converted["key"], cache, quant, threads),
                                     built_from=[converted])
        else:
            self.artifact = self._quantized(model["path"], model["sha256"], cache, quant, threads)
        self.llm = None
        self.close()
        # llama.cpp keeps K and V in f16 and its CPU flash attention rounds to f16; the f32 variant
        # turns both off so that it is f32 end to end (with either, log-probabilities move by
        # ~1e-2 nats on stories260K). Quantized variants run as llama.cpp runs by default.
        # kv_type f32 also makes a quantized variant's attention exact: then, and only then, its
        # log-probabilities do not depend on how tokens are grouped into decode calls (with f16
        # K/V and flash attention they move by up to ~0.2 nats on stories260K).
        kv = choice(options, "kv_type", ("f16", "f32"), "f32" if quant == "f32" else "f16")
        exact = kv == "f32"
        kv_type = llama_cpp.GGML_TYPE_F32 if exact else llama_cpp.GGML_TYPE_F16
        # The context (KV cache, logits rows) is sized for what this session sends, not for the
        # model's training context: n_ctx=0 would mean 131,072 tokens on Llama 3.1.
        n_ctx = int(options.get("n_ctx") or model.get("context_tokens") or 0)
        if model.get("scenario") == "serving":
            return self._start_server(model, threads, n_ctx or 512, "f32" if exact else "f16", not exact)
        try:
            self.llm = llama_cpp.Llama(model_path=self.artifact["path"], n_ctx=n_ctx,
                                       n_batch=512, n_threads=threads, n_threads_batch=threads,
                                       type_k=kv_type, type_v=kv_type, flash_attn=not exact,
                                       logits_all=True, verbose=False)
        except ValueError as exc:  # llama-cpp-python's word for "llama.cpp could not load it"
            raise RunnerError("unsupported", f"llama.cpp cannot load {self.artifact['path']}: {exc}") from None
        settings = {"n_ctx": self.llm.n_ctx(), "n_batch": 512, "threads": threads, "kv_cache_type": "f32" if exact else "f16",
                    "flash_attn": not exact, "logits": "last position when generating, every position when scoring"}
        return {
            "parameters": int(llama_cpp.llama_model_n_params(self.llm.model)),
            "vocab_size": self.llm.n_vocab(), "device": "cpu", "threads": threads,
            "n_ctx": self.llm.n_ctx(), "artifact": self.artifact, "kv_cache_type": settings["kv_cache_type"],
            "flash_attn": not exact, "settings": settings,
        }

    def _start_server(self, model: dict, threads: int, n_ctx: int, kv_type: str, flash_attn: bool) -> dict:
        exe = server.binary(self._cache(model))
        self.server = server.Server(exe["path"], self.artifact["path"], threads, n_ctx, kv_type, flash_attn)
        meta = self.server.meta
        if not meta.get("n_vocab"):
            raise RunnerError("internal", f"llama-server's /v1/models names no vocabulary size: {meta}")
        return {"parameters": meta.get("n_params"), "vocab_size": int(meta["n_vocab"]), "device": "cpu", "threads": threads,
                "n_ctx": n_ctx, "artifact": self.artifact, "server_binary": exe, "kv_cache_type": kv_type,
                "flash_attn": flash_attn, "settings": dict(self.server.settings, server_build=exe["flags"])}

    def submit(self, rid, prompt, max_new_tokens):
        if self.server is None:
            raise RunnerError("unsupported", "llama.cpp's asynchronous API is llama-server's, started by a load for the "
                              "serving scenario (model.scenario = serving)")
        self.server.submit(rid, prompt, max_new_tokens)

    def step(self, wait_s=None):
        return self.server.step(wait_s)

    def processes(self):
        return [self.server.proc.pid] if self.server else []

    def close(self):
        if self.server:
            self.server.close()
            self.server = None

    def _check_fits(self, n: int):
        if self.llm is None:
            raise RunnerError("unsupported", "this load serves through llama-server (a serving cell): it scores and "
                              "generates nothing else")
        if n > self.llm.n_ctx():
            raise RunnerError("bad_request", f"{n} tokens exceed the context of {self.llm.n_ctx()}")

    def generate(self, prompts, max_new_tokens, on_token):
        if len(prompts) > 1:  # decoding them one after another and calling it a batch would be a lie
            raise RunnerError("unsupported", "llama-cpp-python's high-level API decodes one sequence at a time (batch 1 only)")
        prompt = prompts[0]
        self._check_fits(len(prompt) + max_new_tokens)
        self.llm.reset()
        self._all_logits(False)  # llama.cpp's own fast path: the output layer for the last position only
        try:
            self.llm.eval(prompt)
            tokens = []
            for step in range(max_new_tokens):
                token = int(np.argmax(self._last_logits()))
                tokens.append(token)
                on_token()
                if step + 1 < max_new_tokens:
                    self.llm.eval([token])
        finally:
            self._all_logits(True)
        return [tokens]

    def _all_logits(self, on: bool):
        # llama-cpp-python reads this flag at every eval() (pinned 0.3.x): it marks which
        # positions of a batch get logits. Scoring needs every position; generation the last.
        self.llm._logits_all = on

    def _last_logits(self) -> np.ndarray:
        ptr = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.llm.n_vocab(),))

    def _entries(self, rows: np.ndarray, targets: list[int], top_k: int, want=None) -> dict:
        logprobs = _log_softmax(rows)
        entry = {"logprobs": logprobs[np.arange(len(targets)), targets].tolist(), "top": [[] for _ in targets]}
        if want:
            entry["wanted"] = np.take_along_axis(logprobs, np.array(want), axis=-1).astype(float).tolist()
        if top_k:
            idx = np.argsort(-logprobs, axis=-1, kind="stable")[:, :top_k]
            entry["top"] = [[[int(i), float(row[i])] for i in ids] for row, ids in zip(logprobs, idx)]
        return entry

    def score(self, sequences, start, top_k, want=None):
        results = []
        for i, seq in enumerate(sequences):
            self._check_fits(len(seq))
            self.llm.reset()
            self.llm.eval(seq)
            results.append(self._entries(self.llm.scores[start - 1: len(seq) - 1], seq[start:], top_k,
                                         want[i] if want else None))
        return results

    def score_continuations(self, prefix, continuations, top_k):
        self._check_fits(len(prefix) + max(len(c) for c in continuations))
        self.llm.reset()
        self.llm.eval(prefix)
        results = []
        for cont in continuations:
            self.llm.n_tokens = len(prefix)  # rewind: eval() drops the KV cache past n_tokens
            self.llm.eval(cont)
            rows = self.llm.scores[len(prefix) - 1: len(prefix) + len(cont) - 1]
            results.append(self._entries(rows, cont, top_k))
        return results

if __name__ == "__main__":
    serve(LlamaCppEngine())

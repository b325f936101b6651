"""llama.cpp's own server (llama-server) for the serving scenario: its parallel slots and
continuous batching, the way llama.cpp serves users.

llama-cpp-python decodes one request at a time, so a serving cell runs llama-server built from
the very source of this environment's engine (the sdist post_install.py kept in
<venv>/share/llama.cpp-src/) with the very flags it was compiled with (BUILD_FLAGS.json), once per
(source, flags): a cached artifact like a quantized GGUF, its build time reported. The build
needs cmake, make and a C and C++ compiler where the runner runs; without them the cell is `unsupported`
and says so. The binary is linked statically (no second libllama beside the binding's), without
its web UI, curl or OpenSSL: nothing in it reaches a network.

The server runs as a child of the runner (it dies with it) on a loopback port, with the
variant's GGUF, threads, KV cache type and flash-attention setting, SLOTS slots each with a KV
cache of its own (in one unified cache every token attends to every slot's cells: 32 requests
at once on synthetic-tiny here made 593 output tokens/s unified, 6,675 per slot), and prompt
caching off (every request pays its own prefill, as in the other engines' runs). Each request
is one streamed /completion of token ids (greedy, `ignore_eos`, exactly n_predict tokens) on a
thread of its own, every token stamped as its chunk arrives (evaluator/runner/streams.py).
The server holds back a token that ends inside a UTF-8 character and streams only the id of
the token completing it; the chunk's count of tokens predicted says how many came, so each is
counted and stamped when the user would see it, and a held-back token's id is -1 (the final
chunk of a stream repeats none).
"""
import glob
import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from evaluator.runner import RunnerError, child
from evaluator.runner.streams import Streams

import source_build  # noqa: E402  (beside this file)

SOURCES = os.path.join(sys.prefix, "share", "llama.cpp-src")
# Requests decoded together; more wait in the server's queue. On synthetic-tiny here 64 slots
# gave no more throughput than 32 (7,525 against 7,583 output tokens/s at the knee) and twice
# the time per output token (8.4 against 3.9 ms).
SLOTS = 32
STARTUP_S = 120     # model load and the server's warm-up
# llama-server alone, linked statically (no second libllama beside the binding's).
OPTIONS = ["-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_COMMON=ON", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=ON",
           "-DLLAMA_BUILD_APP=OFF"]


def binary(cache: str) -> dict:
    """llama-server for this engine: the cached build, or built now (minutes) and cached."""
    sdists = sorted(glob.glob(os.path.join(SOURCES, "llama_cpp_python-*.tar.gz")))
    flags_file = os.path.join(SOURCES, "BUILD_FLAGS.json")
    if len(sdists) != 1 or not os.path.isfile(flags_file):
        raise RunnerError("unsupported", f"this environment keeps no llama.cpp sources to build llama-server from ({SOURCES}: "
                          "made before deploy-eval kept them); rebuild it: rm -r .venvs/llamacpp")
    missing = [tool for tool in ("cmake", "make", "cc", "c++") if not shutil.which(tool)]
    if missing:
        raise RunnerError("unsupported", f"llama-server is built on first use from the engine's sources and needs "
                          f"{', '.join(missing)} on this machine (apt-get install cmake make gcc g++)")
    sdist, flags = sdists[0], source_build.engine_flags(flags_file)
    recipe = [*source_build.QUIET, *OPTIONS]
    key = hashlib.sha256(f"{os.path.basename(sdist)}|{' '.join(flags)}|{' '.join(recipe)}".encode()).hexdigest()[:16]
    home = os.path.join(cache, f"llama-server-{key}")
    info = {"path": os.path.join(home, "llama-server"), "key": key, "kind": "llama-server",
            "tool": f"cmake, from {os.path.basename(sdist)}", "flags": " ".join(flags)}
    if os.path.isfile(os.path.join(home, "artifact.json")):
        return dict(info, reused=True, build_s=None, size_bytes=os.path.getsize(info["path"]))
    t0 = time.perf_counter()
    child.build_folder(home, lambda tmp: _build(sdist, flags, tmp, info))
    return dict(info, reused=False, build_s=time.perf_counter() - t0, size_bytes=os.path.getsize(info["path"]))


def _build(sdist: str, flags: list[str], out: str, info: dict) -> None:
    print(f"building llama-server from {os.path.basename(sdist)} with {' '.join(flags)} (once)", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=out) as work:
        bin_dir = source_build.build(sdist, flags, OPTIONS, ["llama-server"], work, child.run_step)
        shutil.copy2(os.path.join(bin_dir, "llama-server"), os.path.join(out, "llama-server"))
    with open(os.path.join(out, "artifact.json"), "w") as f:
        json.dump({k: info[k] for k in ("key", "kind", "tool", "flags")}, f)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One llama-server process and the requests streaming from it."""

    def __init__(self, exe: str, gguf: str, threads: int, context_tokens: int, kv_type: str, flash_attn: bool):
        self.port = _free_port()
        self.settings = {"server": "llama-server", "slots": SLOTS, "ctx_per_slot": context_tokens,
                         "kv_unified": False, "cont_batching": True, "cache_prompt": False, "threads": threads,
                         "kv_cache_type": kv_type, "flash_attn": flash_attn, "batch": 512,
                         "serves_through": "llama-server (HTTP stream, parallel slots), not the binding the other "
                                           "scenarios run"}
        argv = [exe, "--host", "127.0.0.1", "--port", str(self.port), "-m", gguf, "-t", str(threads), "-tb", str(threads),
                "-c", str(SLOTS * context_tokens), "-np", str(SLOTS), "-no-kvu", "-cb", "-b", "512", "-ub", "512",
                "-ctk", kv_type, "-ctv", kv_type, "-fa", "on" if flash_attn else "off", "--cache-ram", "0",
                "--no-webui"]
        self.log = tempfile.NamedTemporaryFile("w+", prefix="llama-server-", suffix=".log")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=child.die_with_parent)
        # as many connections as its HTTP threads take at once (llama.cpp: slots + 4); later ones queue
        self.streams = Streams("llama-server", workers=SLOTS + 4)
        self.meta = self._wait_ready()
        self.settings["ctx_per_slot"] = self.meta.get("n_ctx", context_tokens)  # as the server sized it

    def _log_tail(self, lines: int = 3, sep: str = " | ") -> str:
        self.log.flush()
        self.log.seek(0)
        return sep.join(self.log.read().strip().splitlines()[-lines:])

    def _get(self, path: str) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"{}")
        finally:
            conn.close()

    def _wait_ready(self) -> dict:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            self._alive()
            try:
                if self._get("/health")[0] == 200:
                    models = self._get("/v1/models")[1].get("data") or [{}]
                    return models[0].get("meta") or {}
            except (OSError, http.client.HTTPException, ValueError):
                pass
            time.sleep(0.05)
        tail = self._log_tail()
        self.close()
        raise RunnerError("internal", f"llama-server did not answer /health within {STARTUP_S} s: {tail}")

    def submit(self, rid: int, prompt: list[int], max_new_tokens: int) -> None:
        self.streams.start(rid, lambda emit: self._stream(prompt, max_new_tokens, emit))

    def _stream(self, prompt: list[int], wanted: int, emit) -> None:
        body = {"prompt": prompt, "n_predict": wanted, "ignore_eos": True, "stream": True, "return_tokens": True,
                "cache_prompt": False, "temperature": 0.0, "top_k": 1, "n_probs": 0}
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        try:
            conn.request("POST", "/completion", json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
            got = 0
            for line in resp:
                if not line.startswith(b"data: "):
                    continue
                chunk = json.loads(line[6:])
                n = min(int(chunk.get("tokens_predicted") or 0), wanted) - got
                if n > 0:  # a token ending inside a UTF-8 character is held back, its id never streamed: -1
                    known = (chunk.get("tokens") or [])[-n:]
                    emit([-1] * (n - len(known)) + known)
                    got += n
                if chunk.get("stop") or got >= wanted:
                    break
            if got < wanted:
                raise RuntimeError(f"the stream ended after {got} of {wanted} tokens")
        finally:
            conn.close()

    def step(self, wait_s: float | None) -> list[tuple[int, list[int], list]]:
        return self.streams.step(wait_s, self._alive)

    def _alive(self) -> None:
        if self.proc.poll() is not None:
            raise RunnerError("internal", f"llama-server exited with code {self.proc.returncode}: {self._log_tail()}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        print("llama-server's log, its end:\n" + self._log_tail(40, "\n"), file=sys.stderr)  # into the cell's log
        self.log.close()

"""The serve loop: speaks protocol.py over stdin/stdout and owns every timestamp.

A backend's runner.py builds its Engine and calls serve(engine). Argument checking lives here,
once, so every backend refuses bad requests the same way.
"""
import inspect
import json
import os
import platform
import resource
import sys
import time
import traceback

from evaluator.runner import energy, nvml
from evaluator.runner.protocol import PROTOCOL_VERSION, Engine, RunnerError


def _protocol_stream():
    """Keep the real stdout for protocol lines and point fd 1 at stderr, so prints from the
    engine (or a C library under it) land in the log instead of corrupting the channel."""
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def rss_bytes(pids: list[int] = ()) -> tuple[int, int]:
    """(current, peak) resident set size of this process, and of the engine's own processes
    `pids` (a server it started), from the kernel. The peak is VmHWM, the high-water mark of a
    program's own address space: ru_maxrss would also count the parent's resident memory at
    fork (Linux carries it across execve), so a runner started by a large evaluator would report
    the evaluator's size as its own. Peaks of several processes are summed: an upper bound."""
    current = peak = 0
    try:
        for who in ["self", *pids]:
            with open(f"/proc/{who}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        current += int(line.split()[1]) * 1024
                    elif line.startswith("VmHWM:"):
                        peak += int(line.split()[1]) * 1024
    except OSError:  # not Linux: the rusage peak is all there is
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = peak if platform.system() == "Darwin" else peak * 1024
    return current, max(peak, current)


def reset_peak_rss(pids: list[int] = ()) -> bool:
    """Start the high-water mark afresh (Linux: 5 to /proc/self/clear_refs sets VmHWM to the
    current RSS), so a peak read later is the measurement's, not the load's: an ONNX export or
    a quantization done inside the runner on a first run must not make its peak differ from a
    cached run's."""
    try:
        for who in ["self", *pids]:
            with open(f"/proc/{who}/clear_refs", "w") as f:
                f.write("5")
        return True
    except OSError:
        return False


def _ids(value, name: str, vocab_size: int | None) -> list[list[int]]:
    if not isinstance(value, list) or not value:
        raise RunnerError("bad_request", f"{name} must be a non-empty list of token-id lists")
    for seq in value:
        if not isinstance(seq, list) or not seq:
            raise RunnerError("bad_request", f"every entry of {name} must be a non-empty list of token ids")
        for t in seq:
            if type(t) is not int or t < 0 or (vocab_size is not None and t >= vocab_size):
                raise RunnerError("bad_request", f"token id {t!r} in {name} is outside the vocabulary [0, {vocab_size})")
    return value


def _int(req: dict, key: str, lo: int, default=None) -> int:
    value = req.get(key, default)
    if type(value) is not int or value < lo:
        raise RunnerError("bad_request", f"{key} must be an integer >= {lo}, got {value!r}")
    return value


class _Server:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.vocab_size = None  # set by a successful load; None means "nothing loaded"
        self.device = None

    def describe(self, req):
        info = {"arch": platform.machine(), "python": platform.python_version()}
        info.update(self.engine.describe())
        info["protocol"] = PROTOCOL_VERSION
        try:  # what the host checks the engine's CUDA runtime against, before anything loads
            info["driver"] = nvml.driver(nvml.library())
        except nvml.Unavailable as exc:
            info["driver"] = {"unavailable": str(exc)}
        return info

    def load(self, req):
        model, options = req.get("model"), req.get("options", {})
        if not isinstance(model, dict) or not isinstance(model.get("path"), str):
            raise RunnerError("bad_request", "load needs model: {path, format}")
        if not isinstance(options, dict):
            raise RunnerError("bad_request", "load options must be an object")
        self.vocab_size = None
        t0 = time.perf_counter()
        result = dict(self.engine.load(model, options))
        result["load_s"] = time.perf_counter() - t0
        self.vocab_size = int(result["vocab_size"])
        self.device = result.get("device")  # an engine without an allocator view (ONNX Runtime) still gets NVML's
        result["rss_bytes"], result["load_peak_rss_bytes"] = rss_bytes(self.engine.processes())
        result["device_bytes"] = self.engine.device_memory()[0]
        result["process_device_bytes"] = self._process_device_bytes(result["device_bytes"])[0]  # after load
        self.peak_since = "load" if reset_peak_rss(self.engine.processes()) else "process start"
        return result

    def _process_device_bytes(self, allocator_bytes) -> tuple[int | None, str | None]:
        """What the GPU driver holds for this process (NVML; CUDA context and cached pools included),
        or None and why not. The caching allocators of PyTorch, ONNX Runtime and vLLM keep what
        they once held, so after the timed requests this is the high-water mark of what they held."""
        if allocator_bytes is None and self.device in ("cpu", None):
            return None, "the engine uses no GPU"
        try:
            held = sum(nvml.process_bytes(nvml.library()).values()) or None
        except nvml.Unavailable as exc:
            return None, str(exc)
        return held, None if held else "NVML does not list this process (in a container it shows the host's pids)"

    def _loaded(self, op):
        if self.vocab_size is None:
            raise RunnerError("bad_request", f"{op} before load: send load first")

    def generate(self, req):
        self._loaded("generate")
        n = _int(req, "max_new_tokens", 1)
        if "batches" not in req:
            return self._timed(self._batch(req.get("prompts")), n)
        # Back to back: each batch the moment the one before returned, with no pipe round trip
        # between them (one request at a time, as MLPerf's single stream and serving to one user do).
        batches = req["batches"]
        if "prompts" in req:
            raise RunnerError("bad_request", "generate takes prompts (one batch) or batches (run back to back), not both")
        if not isinstance(batches, list) or not batches:
            raise RunnerError("bad_request", "batches must be a non-empty list of batches of token-id lists")
        parsed = [self._batch(b) for b in batches]  # every batch's ids checked before any is run
        return {"answers": [self._timed(b, n) for b in parsed]}

    def _batch(self, prompts) -> list[list[int]]:
        prompts = _ids(prompts, "prompts", self.vocab_size)
        if len({len(p) for p in prompts}) != 1:
            raise RunnerError("bad_request", "all prompts in a batch must have the same length")
        return prompts

    def _timed(self, prompts: list[list[int]], n: int) -> dict:
        token_ns = []
        clock = time.perf_counter_ns
        start_ns = clock()
        tokens = self.engine.generate(prompts, n, lambda: token_ns.append(clock()))
        end_ns = clock()
        return {"tokens": tokens, "start_ns": start_ns, "token_ns": token_ns, "end_ns": end_ns}

    def score(self, req):
        self._loaded("score")
        top_k = _int(req, "top_k", 0, default=0)
        if "groups" in req:
            groups = req["groups"]
            if not isinstance(groups, list) or not groups or not all(isinstance(g, dict) for g in groups):
                raise RunnerError("bad_request", "groups must be a non-empty list of {prefix, sequences} objects")
            if set(req) - {"op", "id", "groups", "top_k"}:
                raise RunnerError("bad_request", "score with groups takes only groups and top_k")
            parsed = [(_ids([g.get("prefix")], "prefix", self.vocab_size)[0], _ids(g.get("sequences"), "sequences", self.vocab_size))
                      for g in groups]
            return {"results": self.engine.score_groups(parsed, top_k)}
        sequences = _ids(req.get("sequences"), "sequences", self.vocab_size)
        if "prefix" in req:
            if "start" in req:
                raise RunnerError("bad_request", "score with a prefix scores every continuation token: drop start")
            prefix = _ids([req["prefix"]], "prefix", self.vocab_size)[0]
            return {"results": self.engine.score_continuations(prefix, sequences, top_k)}
        start = _int(req, "start", 1, default=1)
        if any(start >= len(s) for s in sequences):
            raise RunnerError("bad_request", f"start={start} must be < the length of every sequence")
        if "want" not in req:
            return {"results": self.engine.score(sequences, start, top_k)}
        want = req["want"]
        if not (isinstance(want, list) and len(want) == len(sequences)
                and all(isinstance(w, list) and len(w) == len(s) - start for w, s in zip(want, sequences))):
            raise RunnerError("bad_request", "want must hold, per sequence, one list of token ids per scored position")
        for w in want:
            _ids(w, "want", self.vocab_size)
        if "want" not in inspect.signature(self.engine.score).parameters:
            raise RunnerError("unsupported", "this engine cannot return the log-probabilities of chosen tokens (want)")
        return {"results": self.engine.score(sequences, start, top_k, want=want)}

    def memory(self, req):
        rss, peak_rss = rss_bytes(self.engine.processes())
        dev, peak_dev = self.engine.device_memory()
        process_dev, why = self._process_device_bytes(dev)
        return {"rss_bytes": rss, "peak_rss_bytes": peak_rss, "peak_since": getattr(self, "peak_since", "process start"),
                "engine_processes": self.engine.processes(),  # counted with the runner: a server it started
                "device_bytes": dev, "peak_device_bytes": peak_dev, "process_device_bytes": process_dev,
                "process_device_unavailable": why, "engine_stats": self.engine.stats()}

    def energy(self, req):
        return energy.read()

    def technique(self, req):
        self._loaded("technique")
        name, params, batches = req.get("name"), req.get("params", {}), req.get("batches")
        if name not in TECHNIQUES:
            raise RunnerError("bad_request", f"technique {name!r}; valid: {', '.join(TECHNIQUES)}")
        if not isinstance(params, dict):
            raise RunnerError("bad_request", "technique params must be an object")
        if name == "train":
            if not isinstance(batches, list) or not batches:
                raise RunnerError("bad_request", "train needs batches: a non-empty list of batches of token-id lists")
            for batch in batches:
                if len({len(s) for s in _ids(batch, "batches", self.vocab_size)}) != 1:
                    raise RunnerError("bad_request", "the sequences of a training batch must have the same length")
        return self.engine.technique(name, params, batches)

    def serving(self, req):
        self._loaded("serving")
        reqs = req.get("requests")
        if not isinstance(reqs, list) or not reqs or not all(isinstance(r, dict) for r in reqs):
            raise RunnerError("bad_request", "serving needs requests: a non-empty list of {at_s, prompt, new_tokens}")
        concurrency = _int(req, "concurrency", 1) if "concurrency" in req else None
        at = [0.0] * len(reqs) if concurrency else [r.get("at_s") for r in reqs]
        if not all(isinstance(a, (int, float)) and not isinstance(a, bool) and a >= 0 for a in at) or at != sorted(at):
            raise RunnerError("bad_request", "every at_s must be a number >= 0, in non-decreasing order")
        prompts = _ids([r.get("prompt") for r in reqs], "prompt", self.vocab_size)
        wanted = [_int(r, "new_tokens", 1) for r in reqs]
        return run_schedule(self.engine, [round(a * 1e9) for a in at], prompts, wanted, concurrency)

    def shutdown(self, req):
        return {}


SPIN_NS = 200_000  # the last 0.2 ms before an arrival is waited out on the clock: sleep() overshoots


def run_schedule(engine: Engine, at_ns: list[int], prompts: list[list[int]], wanted: list[int],
                 concurrency: int | None = None) -> dict:
    """Offer the requests at their times (or, with `concurrency`, the next one whenever fewer
    are in flight: that many users, each sending again once answered) and step the engine until
    each has its tokens."""
    clock = time.perf_counter_ns
    answers = [{"submitted_ns": None, "tokens": [], "token_ns": []} for _ in prompts]
    open_, due, steps = set(), 0, []
    start = clock()

    def is_due() -> bool:
        return len(open_) < concurrency if concurrency else clock() >= start + at_ns[due]

    while due < len(prompts) or open_:
        while due < len(prompts) and is_due():
            # stamped before the engine takes it, as generate's start_ns: its own intake (vLLM's input
            # processing) is part of the request's time to first token
            answers[due]["submitted_ns"] = clock()
            engine.submit(due, prompts[due], wanted[due])
            open_.add(due)
            due += 1
        if not open_:
            wait = start + at_ns[due] - clock()
            if wait > SPIN_NS:
                time.sleep((wait - SPIN_NS) / 1e9)
            continue
        began = clock()
        stepped = engine.step((start + at_ns[due] - began) / 1e9 if due < len(prompts) and not concurrency else None)
        stamp = clock()
        steps.append([began, stamp])
        for rid, tokens, *made_ns in stepped:
            if rid not in open_:
                raise RunnerError("internal", f"the engine returned tokens for request {rid}, which is not in flight")
            answers[rid]["tokens"] += tokens
            # an engine that keeps each token's own time (a background thread's) says when it was made
            answers[rid]["token_ns"] += [t or stamp for t in made_ns[0]] if made_ns else [stamp] * len(tokens)
            if len(answers[rid]["tokens"]) >= wanted[rid]:
                open_.discard(rid)
    end = clock()
    for rid, answer in enumerate(answers):
        answer.update(engine.request_stats(rid))  # the engine's own view (its queueing time), where it has one
    return {"start_ns": start, "end_ns": end, "requests": answers, "steps": steps}


OPS = ("describe", "load", "generate", "score", "memory", "energy", "technique", "serving", "shutdown")
TECHNIQUES = ("attention", "train", "flops", "kv")


def _error(exc: BaseException, engine: Engine) -> dict:
    if isinstance(exc, RunnerError):
        return {"type": exc.type, "message": exc.message}
    if isinstance(exc, MemoryError) or engine.is_out_of_memory(exc):
        return {"type": "out_of_memory", "message": f"{type(exc).__name__}: {exc}"}
    frames = "".join(traceback.format_exception(exc)[-3:]).strip()
    return {"type": "internal", "message": f"{type(exc).__name__}: {exc} | {frames}"}


def serve(engine: Engine) -> None:
    """Answer requests until shutdown or end of input. Never returns on error: it answers."""
    out = _protocol_stream()
    engine.protocol_stream = out  # only the null backend touches it, to inject garbage
    server = _Server(engine)

    def send(obj):
        out.write(json.dumps(obj, separators=(",", ":")) + "\n")

    send({"event": "hello", "protocol": PROTOCOL_VERSION, "pid": os.getpid()})
    for line in sys.stdin:
        if not line.strip():
            continue
        req_id = None
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise RunnerError("bad_request", "a request must be a JSON object")
            req_id = req.get("id")
            op = req.get("op")
            if op not in OPS:
                raise RunnerError("bad_request", f"unknown op {op!r}; valid: {', '.join(OPS)}")
            result = getattr(server, op)(req)
            send({"id": req_id, "ok": True, "result": result})
            if op == "shutdown":
                break
        except json.JSONDecodeError as exc:
            send({"id": None, "ok": False, "error": {"type": "bad_request", "message": f"not JSON: {exc}"}})
        except Exception as exc:  # every failure becomes a typed answer, never a dead pipe
            send({"id": req_id, "ok": False, "error": _error(exc, engine)})
    engine.close()
    out.flush()

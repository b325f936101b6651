"""The runner protocol, version 1: the one contract between the evaluator and every backend.

A runner is a process. It reads requests from stdin and writes responses to stdout, one JSON
object per line, UTF-8. The same process works as a local child, inside `docker run -i`, and
behind `ssh host docker run -i`; only the argv prefix and the way to kill it differ.

Lifecycle
---------
1. The runner starts, imports its engine, and writes one hello line:
       {"event": "hello", "protocol": 1, "pid": 1234}
   Nothing is read before the hello; the evaluator's startup deadline covers the imports.
2. The evaluator sends requests, one at a time, and waits for each response:
       {"id": 7, "op": "generate", ...arguments}
3. Every request gets exactly one response line with the same id:
       {"id": 7, "ok": true, "result": {...}}
       {"id": 7, "ok": false, "error": {"type": "bad_request", "message": "..."}}
4. `shutdown` is answered, then the runner exits 0. End of stdin means shutdown too.

stdout carries protocol lines only. `serve()` moves file descriptor 1 to stderr before the
engine loads, so an engine library that prints (llama.cpp does) cannot corrupt the channel;
stderr is the runner's log, and the evaluator keeps its tail for failed cells.

Error types (closed list)
-------------------------
- bad_request:     the request is malformed: not JSON, unknown op, a missing or mistyped
                   argument, a token id outside the vocabulary, generate/score before load.
                   The runner stays usable.
- unsupported:     valid, but this engine or device cannot do it (a dtype the device lacks,
                   a model format the engine does not read, the engine missing on this machine).
- out_of_memory:   the engine ran out of host or device memory.
- internal:        anything else; the message carries the exception and its last frames.
A runner that dies instead of answering is the evaluator's problem to detect (dead pipe,
exit code, silence deadline), never the runner's to hide.

Requests
--------
describe {}
    -> {"engine", "engine_version", "versions": {package: version}, "device", "arch",
        "available": bool, "unavailable_reason": str|null, "supports": {"score": bool,
        "batch": bool}, "build": {...engine build flags, where known}}
    Must work before load and must not load a model. `available` false means every load
    will answer `unsupported` with the same reason.

load {"model": {"path": str, "format": "hf"|"gguf"|..., "sha256": str, "artifact_cache": str,
                "context_tokens": int|null, "scenario": str|null}, "options": {...}}
    -> {"load_s": float, "parameters": int|null, "vocab_size": int, "device": str,
        "rss_bytes": int, "load_peak_rss_bytes": int, "device_bytes": int|null, "settings": {...}}
    `rss_bytes` is the resident memory once loaded, `load_peak_rss_bytes` the peak while starting
    and loading (an export or quantization done in the runner included); `settings` what the
    engine set that changes a number (threads, caches, reservations), as the engine took them.
    `context_tokens` is the longest sequence the session will send (prompt plus new tokens, or a
    scored window): an engine that sizes its KV cache or logits buffers up front sizes them for
    it, not for the model's training context. `scenario` names what the session will run: an
    engine that serves through a separate server (llama.cpp's) starts it at a `serving` load,
    and a `serving` load's settings say in `serves_through` what will answer the requests (the
    engine every scenario runs, or another path: llama-server, transformers' manager), which
    the report prints beside the light-load comparison.
    `sha256` is the source model's content hash and `artifact_cache` a folder for what the
    engine derives from it (quantized or converted files): an engine that derives any refuses
    a load without both (`artifact_home`), keys them by (sha256, tool version, options), never
    writes beside the source model, writes them atomically, reuses them, and reports them under
    "artifact": {"path", "key", "kind", "tool", "reused", "build_s", "size_bytes"}.
    A variant whose weights another backend makes (its manifest's `made_by`) is loaded from that
    artifact: `model.path` is the folder the maker's load answered (in the artifact cache both
    share), `model.made_by` that answer; the engine runs it as it is and reports it as its
    "artifact".
    `options` are the variant's options from the backend manifest; an unknown option is a
    bad_request, a known one this device cannot honour is `unsupported`. Loading twice
    replaces the model. Weights are safetensors or GGUF; pickle checkpoints only when
    options.allow_pickle is true; remote code only when options.trust_remote_code is true.

generate {"prompts": [[int, ...], ...], "max_new_tokens": int}
    -> {"tokens": [[int, ...], ...], "start_ns": int, "token_ns": [int, ...], "end_ns": int}
    Greedy (argmax) decoding of exactly `max_new_tokens` tokens per prompt: EOS does not stop
    it, so every backend does the same work. All prompts in a batch have the same length (the
    evaluator builds them so; no padding is involved). Timestamps are the runner's monotonic
    clock in nanoseconds: `start_ns` just before the engine is called, `token_ns[i]` when step
    i's tokens are on the host, `end_ns` just after the engine returns. Only differences
    between them mean anything. An empty prompt is a bad_request: send at least BOS.

generate {"batches": [[[int, ...], ...], ...], "max_new_tokens": int}
    -> {"answers": [{"tokens", "start_ns", "token_ns", "end_ns"}, ...]}
    The same for each batch in turn, back to back: a batch starts the moment the one before it
    returned, with no pipe round trip between them (the latency and throughput loops' timed
    requests, as a single user sends them). Every batch's ids are checked before any is run.

score {"sequences": [[int, ...], ...], "start": int, "top_k": int}
    -> {"results": [{"logprobs": [float, ...], "top": [[[int, float], ...], ...]}, ...]}
    For each sequence s and each position i with start <= i < len(s): logprobs[i - start] is
    log P(s[i] | s[:i]) under the model (natural log, computed in at least float32), and top[i - start] the
    `top_k` most likely ids at that position with their log-probabilities, most likely
    first (top_k 0 gives empty lists). `start` must be >= 1 (the first token has no
    context) and < len(s). Sequences may differ in length. The log-probabilities are of the
    full softmax over the vocabulary, no temperature, no penalties.
    Optional "want": [[[int, ...] per scored position] per sequence] adds "wanted": the
    log-probabilities of exactly those ids at each position, in the order asked. The evaluator
    sends the reference's top ids, so a variant's KL is computed over one shared partition of
    the vocabulary (a tight bound where the vocabulary is too large to send whole). An engine
    whose score() takes no `want` argument answers `unsupported`.

score {"prefix": [int, ...], "sequences": [[int, ...], ...], "top_k": int}
    The shared-context form (HellaSwag's four endings after one context). Each sequence is a
    continuation of `prefix`, and the results cover every continuation token: exactly what
    the plain form returns for prefix + s with start = len(prefix). An engine that can keep
    the prefix's KV cache computes the prefix once; any other gets that for free from
    Engine.score_continuations, which falls back to the plain form. `start` is refused here.

score {"groups": [{"prefix": [int, ...], "sequences": [[int, ...], ...]}, ...], "top_k": int}
    Many shared-context requests in one: {"results": [[...one entry per sequence...] per
    group]}, each group answered exactly as the shared-context form answers it. It exists so
    an engine can put many HellaSwag items in one batch (one forward pass instead of
    thousands); Engine.score_groups answers it group by group for an engine that cannot.
    The evaluator bounds a request's size (sequences x longest x vocabulary).

memory {}
    -> {"rss_bytes": int, "peak_rss_bytes": int, "peak_since": "load"|"process start",
        "device_bytes": int|null, "peak_device_bytes": int|null, "process_device_bytes": int|null,
        "process_device_unavailable": str|null, "engine_stats": {...}}
    Peaks since load, the same definition for every engine: the runner library resets the
    kernel's high-water mark when load answers (where the OS cannot, since the process started,
    and `peak_since` says so); device peaks since load where the engine can reset them.
    `device_bytes`/`peak_device_bytes` are the framework allocator's view (live tensors);
    `process_device_bytes` is NVML's per-process view (CUDA context and cached pool included:
    what must fit on the card), filled by the runner library (nvml.py), with the reason where not.

energy {}
    -> {"joules": {counter: cumulative joules}, "unavailable": str|null}
    Every energy counter of the machine the runner is on (RAPL domains, NVML per GPU; see
    energy.py), read now. Only differences between two readings mean anything. No counter at
    all is not an error: `unavailable` says why.

technique {"name": "attention"|"train"|"flops"|"kv", "params": {...}, "batches": [[[int]]]}
    -> raw measurements of one of the article's techniques on the loaded model and its device
    (seconds per call or step, peak bytes, losses, counted FLOPs), never a verdict. `batches`
    (train only): token-id sequences, one effective batch per optimizer step. An engine that
    does not implement a technique answers `unsupported` (describe's supports.techniques lists
    those it does).

serving {"requests": [{"at_s": float, "prompt": [int, ...], "new_tokens": int}, ...], "concurrency"?: int}
    -> {"start_ns": int, "end_ns": int,
        "requests": [{"submitted_ns": int, "tokens": [int, ...], "token_ns": [int, ...], "queued_ns"?: int}, ...],
        "steps": [[start_ns, end_ns], ...]}
    A load offered by the harness, not the engine (a serving scenario's schedule: arrival
    offsets in seconds, non-decreasing). The runner library hands request i to the engine's
    own asynchronous API (Engine.submit, then Engine.step until it is done) as soon as its
    clock passes start_ns + at_s, never before (`submitted_ns` says when: just before the engine
    is called, as generate's start_ns), stamps every token
    when the step that made it returns (or, from an engine whose own thread makes tokens, when
    that thread made it), and sleeps while nothing is in flight; `steps` are the
    engine's steps (a request that falls due during one is offered when it returns, as an
    engine's own server queues it until its next step). Each request gets exactly `new_tokens`
    greedy tokens (EOS does not stop it), so every engine does the same work; a token whose id
    the engine's stream does not carry is -1 (llama-server streams a token that ends inside a
    UTF-8 character only with the one completing it). `queued_ns`, where the engine counts it
    (vLLM), is how long its scheduler held the request before first running it. With
    "concurrency": N (and no at_s), the load is closed: N requests go in at once and each one
    answered lets the next in, as N users who send again on each answer. An
    engine without such an API answers `unsupported`.

shutdown {}
    -> {} and the process exits 0.

What is NOT guaranteed
----------------------
- Requests are never pipelined: the evaluator sends the next one only after a response.
- Nothing about wall-clock time on the host: durations come from the runner's timestamps.
- A runner may print anything to stderr, at any time; it is a log, not a channel.
"""

PROTOCOL_VERSION = 1

ERROR_TYPES = ("bad_request", "unsupported", "out_of_memory", "internal")


def check_options(options: dict, allowed: set, model: dict, formats: tuple, engine: str) -> None:
    """The load checks every engine makes: no unknown option, a model format it reads."""
    unknown = set(options) - allowed
    if unknown:
        raise RunnerError("bad_request", f"unknown load options {sorted(unknown)}; valid: {sorted(allowed)}")
    if model.get("format", "hf") not in formats:
        raise RunnerError("unsupported", f"{engine} reads {' and '.join(formats)} models, not {model.get('format')!r}")


def artifact_home(model: dict) -> tuple[str, str]:
    """(the source model's content hash, the artifact folder) for an engine that builds derived
    models: both are required, so a derived artifact is never keyed by a constant nor written
    beside the source model."""
    missing = [k for k in ("sha256", "artifact_cache") if not model.get(k)]
    if missing:
        raise RunnerError("bad_request", f"load: this engine builds derived models and needs model.{' and model.'.join(missing)}")
    return model["sha256"], model["artifact_cache"]


def choice(options: dict, key: str, valid, default: str) -> str:
    """options[key] (or the default), refused with the valid values if it is not one of them."""
    value = options.get(key, default)
    if value not in valid:
        raise RunnerError("bad_request", f"{key} {value!r}; valid: {', '.join(valid)}")
    return value


def score_groups_as_rows(groups, top_k: int, score_rows, max_tokens: int | None = None) -> list[list[dict]]:
    """Answer a grouped score with batched `score_rows(sequences, starts, top_k)` calls: each
    group's prefix + continuation becomes one row that is scored from len(prefix). Without
    `max_tokens`, every row in one call (an engine that schedules its own batches, like vLLM);
    with it, rows sorted by length and cut into calls of at most `max_tokens` padded tokens (an
    engine that pads every row of a call to the longest)."""
    flat = [(prefix + c, len(prefix)) for prefix, conts in groups for c in conts]
    calls = [list(range(len(flat)))]
    if max_tokens:
        calls, call = [], []
        for i in sorted(range(len(flat)), key=lambda i: len(flat[i][0])):  # ascending: the last row is the longest
            if call and (len(call) + 1) * len(flat[i][0]) > max_tokens:
                calls.append(call)
                call = []
            call.append(i)
        calls.append(call)
    answers = [None] * len(flat)
    for call in calls:
        for i, entry in zip(call, score_rows([flat[i][0] for i in call], [flat[i][1] for i in call], top_k)):
            answers[i] = entry
    rows = iter(answers)
    return [[next(rows) for _ in conts] for _, conts in groups]


class RunnerError(Exception):
    """An error the runner answers with a type from ERROR_TYPES instead of dying."""

    def __init__(self, type_: str, message: str):
        if type_ not in ERROR_TYPES:
            raise ValueError(f"unknown error type {type_!r}; valid: {', '.join(ERROR_TYPES)}")
        super().__init__(message)
        self.type = type_
        self.message = message


class Engine:
    """What a backend implements. `serve()` validates arguments and takes the timestamps;
    an engine only computes. Raise RunnerError for typed failures."""

    def describe(self) -> dict:
        """Engine name, versions, device, availability. Must not load a model."""
        raise NotImplementedError

    def load(self, model: dict, options: dict) -> dict:
        """Load the model; return parameters, vocab_size, device (load_s is added by serve)."""
        raise NotImplementedError

    def generate(self, prompts: list[list[int]], max_new_tokens: int, on_token) -> list[list[int]]:
        """Greedy-decode `max_new_tokens` per prompt; call on_token() once per step, as soon
        as that step's tokens are on the host. Return the new tokens per prompt."""
        raise NotImplementedError

    def score(self, sequences: list[list[int]], start: int, top_k: int) -> list[dict]:
        """Log-probabilities of the given tokens from position `start`, with top-k."""
        raise NotImplementedError

    def score_continuations(self, prefix: list[int], continuations: list[list[int]], top_k: int) -> list[dict]:
        """The shared-prefix form. Override where the engine can compute the prefix once."""
        return self.score([prefix + c for c in continuations], len(prefix), top_k)

    def score_groups(self, groups: list[tuple[list[int], list[list[int]]]], top_k: int) -> list[list[dict]]:
        """Many (prefix, continuations) at once. Override where one batch can hold them all."""
        return [self.score_continuations(prefix, seqs, top_k) for prefix, seqs in groups]

    def submit(self, rid: int, prompt: list[int], max_new_tokens: int) -> None:
        """Serving: hand one request to the engine's scheduler; later step() calls decode it,
        greedily, for exactly max_new_tokens tokens."""
        raise RunnerError("unsupported", "this engine has no asynchronous API to serve a stream of requests with")

    def step(self, wait_s: float | None = None) -> list[tuple]:
        """Serving: one scheduler step over every request in flight; (rid, its new tokens) for
        each request that gained any, or (rid, tokens, the time.perf_counter_ns each was made)
        from an engine whose own thread makes them. Such an engine may wait for tokens, but no
        longer than wait_s, when the next request is due (None: none is)."""
        raise NotImplementedError

    def request_stats(self, rid: int) -> dict:
        """Serving: what the engine itself measured of request rid once it is done, as integers
        (`queued_ns`: how long its scheduler held the request before first running it); {} where
        it measures nothing."""
        return {}

    def close(self) -> None:
        """Stop what the engine started beside the protocol's loop (a serving thread) before the
        runner exits, at shutdown or at the end of its input."""

    def technique(self, name: str, params: dict, batches: list[list[list[int]]] | None) -> dict:
        """Measure one of the article's techniques (the `technique` request)."""
        raise RunnerError("unsupported", f"this engine does not measure techniques ({name})")

    def processes(self) -> list[int]:
        """Process ids the engine started that hold its model beside the runner (llama.cpp's
        server): their resident memory counts with the runner's in every memory figure."""
        return []

    def device_memory(self) -> tuple[int | None, int | None]:
        """(current, peak) device bytes, or (None, None) where there is no device."""
        return None, None

    def stats(self) -> dict:
        """Engine counters worth keeping with a result (e.g. recompiles); {} by default."""
        return {}

    def is_out_of_memory(self, exc: BaseException) -> bool:
        """Whether an engine exception means out of memory (MemoryError always does)."""
        return False

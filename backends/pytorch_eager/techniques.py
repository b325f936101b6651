"""The article's techniques, measured inside the runner on the loaded model and this device:
the `technique` requests of the runner protocol (attention, train, flops).

Each returns raw samples (seconds per call or step, bytes), never a verdict: the evaluator
computes intervals and fits (evaluator/measure/techniques.py).

Peak memory is the measurement's own: on CUDA, torch's allocator peak above what was allocated
before; on a CPU, the resident high-water mark above the resident size before (the kernel's
VmHWM, reset through /proc/self/clear_refs). For the CPU figure to be the tensors' and not
glibc's recycling, large blocks are given back to the kernel when freed: mallopt fixes the mmap
threshold at 64 KiB (no dynamic raise), and malloc_trim returns the rest before each reading.
"""
import copy
import ctypes
import math
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from evaluator.runner import RunnerError
from evaluator.runner.serve import reset_peak_rss, rss_bytes

M_MMAP_THRESHOLD = -3
SDPA = {"sdpa-math": SDPBackend.MATH, "sdpa-flash": SDPBackend.FLASH_ATTENTION,
        "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION, "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, macOS): the CPU peak then includes the allocator's reuse
        return None


# glibc's largest dynamic mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX): where its own
# adjustment settles after large blocks are freed.
TIMING_MMAP_THRESHOLD = 32 * 1024 * 1024


def _mmap_threshold(device: str, size: int) -> None:
    if device != "cuda" and (libc := _libc()) is not None:
        libc.mallopt(M_MMAP_THRESHOLD, size)


class Peak:
    """Peak memory of what runs inside `with Peak(device) as p:`, in p.bytes."""

    def __init__(self, device: str):
        self.device, self.bytes = device, None

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            libc = _libc()
            if libc is not None:
                libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024)
                libc.malloc_trim(0)
            self.resettable = reset_peak_rss()
            self.base = rss_bytes()[0]
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.base
        elif self.resettable:  # else VmHWM is the process's lifetime peak: no figure rather than a wrong one
            self.bytes = max(0, rss_bytes()[1] - self.base)


# Peaks are taken over whole sweeps, the least kept per cell: right after glibc's mmap threshold
# changes, the first calls measured carry buffers the allocator is still settling (a 512-token
# standard attention read 35, 26, then 18 MB in the first sweep's position); disturbances only add.
# Two sweeps were not enough on a loaded CI machine: one 512-token reading high in both bent the
# fitted exponent of standard attention to 1.69 (17 MB is its true peak; a third sweep costs about a second).
PEAK_SWEEPS = 3


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: str, min_samples: int, min_s: float, max_s: float) -> list[float]:
    """Seconds per call: one untimed call, then at least min_samples calls and min_s seconds, and
    more until max_s."""
    fn()
    _sync(device)
    samples, t_end = [], time.perf_counter() + max_s
    while len(samples) < min_samples or sum(samples) < min_s:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        samples.append(time.perf_counter() - t0)
        if time.perf_counter() > t_end and len(samples) >= min_samples:
            break
    return samples


def standard_attention(q, k, v):
    """The textbook form: the full (n x n) score matrix is materialized, masked and softmaxed."""
    n = q.shape[-2]
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def _implementations(device: str) -> dict:
    impls = {"standard": standard_attention}
    for name, backend in SDPA.items():
        def run(q, k, v, backend=backend):
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        impls[name] = run
    return impls


def attention(device: str, params: dict) -> dict:
    """Standard attention against each SDPA backend, over sequence lengths: outputs checked
    against the standard form first (at the shortest length), then time and peak memory of the
    forward (and of forward+backward where asked). An implementation this device lacks, or one
    that runs out of memory at a length, is recorded with its reason and not tried longer."""
    lengths, heads, head_dim = params.get("lengths", [512, 1024, 2048, 4096]), params.get("heads", 8), params.get("head_dim", 64)
    dtype = PRECISIONS.get(params.get("dtype") or ("bf16" if device == "cuda" else "fp32")) or torch.float32
    passes = params.get("passes", ["forward"])
    budget = dict(min_samples=params.get("min_samples", 3), min_s=params.get("min_s", 0.2), max_s=params.get("max_s", 2.0))
    gen = torch.Generator().manual_seed(0)

    def inputs(n, grad=False):
        return [torch.randn(1, heads, n, head_dim, generator=gen).to(device, dtype).requires_grad_(grad) for _ in range(3)]

    rows, refused = [], {}
    impls = _implementations(device)
    q, k, v = inputs(min(lengths))
    want = standard_attention(q.float(), k.float(), v.float())
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for name, fn in impls.items():
        try:
            got = fn(q, k, v).float()
        except RuntimeError as exc:  # "No available kernel": this device or dtype lacks it
            refused[name] = f"not offered on {device} for {str(dtype).split('.')[-1]}: {str(exc).splitlines()[0][:300]}"
            continue
        err = (got - want).abs().max().item()
        if err > tol * max(1.0, want.abs().max().item()):
            refused[name] = f"differs from standard attention by {err:.3g} (tolerance {tol:g}): not timed"
    def call_for(fn, n, backward):
        q, k, v = inputs(n, grad=backward)

        def call():
            out = fn(q, k, v)
            if backward:
                out.sum().backward()
            return out
        return call

    # Every peak first, then every time. Peak fixes glibc's mmap threshold at 64 KiB, so each
    # large block is the kernel's and the resident peak is the tensors'; timed first instead,
    # blocks freed under glibc's own (rising) threshold stayed in its heap and were handed out
    # again during the peaks: standard attention at 512 tokens read 25.5 MB for 17 in every sweep
    # of a runner's first request (exponent 1.69). Timing then runs at 32 MiB, glibc's own
    # ceiling, so timed calls reuse memory as they would have (64 KiB made the 512-token call
    # 3x slower with page faults).
    keys = [(name, pass_, n) for pass_ in passes for name in impls if name not in refused for n in sorted(lengths)]
    peaks, too_big = {}, set()
    for _ in range(PEAK_SWEEPS):
        for name, pass_, n in keys:
            if (name, pass_) in too_big:
                continue
            call = None
            try:
                call = call_for(impls[name], n, pass_ == "forward+backward")
                with Peak(device) as peak:
                    call()
            except torch.OutOfMemoryError as exc:
                too_big.add((name, pass_))
                peaks.pop((name, pass_, n), None)  # measured in an earlier sweep: this length is out
                rows.append({"impl": name, "pass": pass_, "length": n, "out_of_memory": str(exc).splitlines()[0][:200]})
                continue
            finally:
                del call
            peaks.setdefault((name, pass_, n), []).append(peak.bytes)
    _mmap_threshold(device, TIMING_MMAP_THRESHOLD)
    for (name, pass_, n), readings in peaks.items():
        samples = _timed(call_for(impls[name], n, pass_ == "forward+backward"), device, **budget)
        least = None if None in readings else min(readings)
        rows.append({"impl": name, "pass": pass_, "length": n, "seconds": samples, "peak_bytes": least})
    return {"rows": rows, "unsupported": refused, "heads": heads, "head_dim": head_dim, "dtype": str(dtype).split(".")[-1],
            "tolerance": tol}


def kv(engine, params: dict) -> dict:
    """Greedy generation of `new_tokens` with the KV cache on or off (off: every step recomputes
    the whole sequence), `repeats` timed times after one warmup: per-step times from the same
    clock as every latency, and the tokens (the cache changes speed, never tokens). The
    engine's own setting is restored."""
    prompt, n, repeats = params.get("prompt"), params.get("new_tokens"), params.get("repeats", 6)
    if not (isinstance(prompt, list) and prompt and all(type(t) is int and t >= 0 for t in prompt)):
        raise RunnerError("bad_request", "kv needs params.prompt: a non-empty list of token ids")
    if type(n) is not int or n < 2:
        raise RunnerError("bad_request", "kv needs params.new_tokens: an integer >= 2")
    rows, kept = [], engine.kv_cache
    try:
        engine.kv_cache = bool(params.get("kv_cache", True))
        for r in range(repeats + 1):  # the first is warmup
            stamps = [time.perf_counter()]
            tokens = engine.generate([prompt], n, lambda stamps=stamps: stamps.append(time.perf_counter()))
            if r:
                rows.append({"kv_cache": engine.kv_cache, "new_tokens": n, "e2e_s": stamps[-1] - stamps[0],
                             "decode_step_s": [b - a for a, b in zip(stamps[1:], stamps[2:])]})
    finally:
        engine.kv_cache = kept
    return {"rows": rows, "tokens": tokens[0], "prompt_tokens": len(prompt)}


def _loss(model, batch):
    return model(input_ids=batch, labels=batch, use_cache=False).loss


def train(model, device: str, batches: list[list[list[int]]], params: dict) -> dict:
    """Optimizer steps from the loaded weights, on the given batches (one effective batch per
    step): AdamW, fixed learning rate, the same start for every configuration. Precision is
    autocast over fp32 master weights (fp16 with a GradScaler); checkpointing recomputes each
    layer's activations in the backward; accumulation splits each batch into micro-batches whose
    gradients add up (each loss divided by their count, so the step is the large batch's)."""
    precision, micro = params.get("precision", "fp32"), params.get("micro_batch")
    if precision not in PRECISIONS:
        raise RunnerError("bad_request", f"precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if precision == "fp16" and device != "cuda":
        raise RunnerError("unsupported", "fp16 autocast training is measured on GPUs only: a CPU has no fp16 matmul units "
                                         "and its GradScaler path emulates them, so its time and memory say nothing")
    net = copy.deepcopy(model).float().to(device).train()
    if params.get("checkpointing"):  # gradient_checkpointing_enable is deprecated from transformers 5.2x
        if hasattr(net, "activation_checkpointing_enable"):
            net.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    opt = torch.optim.AdamW(net.parameters(), lr=params.get("lr", 1e-4))
    scaler = torch.amp.GradScaler(device) if precision == "fp16" else None
    effective = len(batches[0])
    micro = micro or effective
    if effective % micro:
        raise RunnerError("bad_request", f"micro_batch {micro} must divide the effective batch {effective}")

    def step(batch):
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for i in range(0, effective, micro):
            part = torch.tensor(batch[i: i + micro], device=device)
            with torch.autocast(device, dtype=PRECISIONS[precision], enabled=precision != "fp32"):
                loss = _loss(net, part) / (effective // micro)
            (scaler.scale(loss) if scaler else loss).backward()
            total += loss.item()
        nonlocal skipped
        if scaler:
            before = scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            skipped += scaler.get_scale() < before  # an inf/NaN gradient: the step was skipped, the scale halved
        else:
            opt.step()
        return total

    # Memory per step, above the step's start (gradients, activations, temporaries; the optimizer's
    # state is created in the first step and stays): the least over the steps after the first, as
    # the attention sweep keeps the least of its peaks, since the allocator's settling after
    # Peak's threshold change only adds (a checkpointed step once read 38.5 MB where it takes about 9).
    losses, seconds, peaks, skipped = [], [], [], 0
    for batch in batches:
        with Peak(device) as peak:
            t0 = time.perf_counter()
            losses.append(step(batch))
            _sync(device)
            seconds.append(time.perf_counter() - t0)
        peaks.append(peak.bytes)
    steady = peaks[1:] or peaks
    out = {"losses": losses, "seconds": seconds, "peak_bytes": None if None in steady else min(steady),
           "first_step_peak_bytes": peaks[0], "tokens_per_step": effective * len(batches[0][0])}
    if scaler:
        out["skipped_steps"] = skipped
    net = opt = None  # the trained copy and its optimizer state go before the comparison builds two more
    if params.get("compare_gradients"):
        out["gradient_max_rel_diff"] = _accumulation_error(model, device, batches[0], micro)
    return out


def _accumulation_error(model, device: str, batch: list[list[int]], micro: int) -> float:
    """Largest relative difference between the gradients accumulated over micro-batches and the
    gradients of the whole batch in one pass, in fp32: the identity accumulation rests on."""
    grads = []
    for size in (len(batch), micro):
        net = copy.deepcopy(model).float().to(device).train()
        for i in range(0, len(batch), size):
            (_loss(net, torch.tensor(batch[i: i + size], device=device)) / (len(batch) // size)).backward()
        grads.append([p.grad.detach().clone() for p in net.parameters() if p.grad is not None])
        del net
    return max(((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item() for a, b in zip(*grads))


def flops(model, device: str, params: dict) -> dict:
    """FLOPs of one forward over `context` tokens, counted by PyTorch's FLOP counter on a copy
    of the model on the meta device (shapes only: a 1B model costs nothing), with the attention
    written out (eager) so its matmuls are counted; then the loaded model's own forward timed
    over the same tokens, and a matmul probe for this device's peak."""
    context = params.get("context", 128)
    total, by_op = count_flops(copy.deepcopy(model.config), context)  # from_config sets the config's attention
    real = torch.randint(0, model.config.vocab_size, (1, context), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.inference_mode():
        seconds = _timed(lambda: model(input_ids=real, use_cache=False, logits_to_keep=0), device, 3, 0.5, 5.0)
    return {"context": context, "counted_flops": total, "by_op": by_op,
            "forward_seconds": seconds, "dtype": str(next(model.parameters()).dtype).split(".")[-1],
            "peak_probe": matmul_peak(device, next(model.parameters()).dtype)}


def count_flops(config, context: int) -> tuple[int, dict]:
    """(FLOPs, {op: FLOPs}) of one forward over `context` tokens of a model of this config,
    counted on the meta device."""
    import transformers
    with torch.device("meta"):
        shadow = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    ids = torch.zeros(1, context, dtype=torch.long, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        shadow(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    return counter.get_total_flops(), {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}


def matmul_peak(device: str, dtype, n: int = 2048) -> dict:
    """This device's dense matmul rate in the model's dtype: an (n x n) @ (n x n) product, 2n³
    FLOPs, timed; the fastest call is the peak (the ceiling, as the bandwidth probe's best pass)."""
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    b = torch.randn(n, n, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    seconds = _timed(lambda: a @ b, device, 5, 0.5, 3.0)
    return {"n": n, "flops": 2 * n ** 3, "seconds": seconds, "flops_per_s": 2 * n ** 3 / min(seconds)}

"""The article's techniques as scenarios: what a techniques cell asks its runner (the protocol's
`technique` request) and what is derived from the raw answers.

- attention: standard (materialized) attention against each SDPA backend the device offers,
  over sequence lengths: time per forward (median with its interval) and peak memory; the
  memory growth exponent fitted per implementation (log peak against log length, least
  squares, with its 95% interval): about 2 where the (n x n) scores exist, about 1 where not.
- train: optimizer steps on real text (WikiText-2 windows, as the other scenarios' prompts),
  one configuration per request, each from the same weights: precision (fp32, bf16, fp16 with a
  GradScaler), gradient checkpointing, gradient accumulation at the same effective batch. Step
  time (the first step is warmup), tokens/s, peak memory, and the losses checked against fp32's:
  a precision within PRECISION_LOSS_TOLERANCE, checkpointing and accumulation (which change
  nothing but the order of sums) within EXACT_LOSS_TOLERANCE; accumulated gradients against
  the whole batch's within GRADIENT_TOLERANCE.
- flops: FLOPs per token from the model's configuration (flops_per_token) against PyTorch's
  FLOP counter, achieved FLOP/s of a forward over `context` tokens and its utilisation of the
  device's matmul peak (a probe beside it, as the bandwidth probe is for decode).
"""
import math
from dataclasses import dataclass

from evaluator.stats.intervals import summarize
from evaluator.stats.paired import t975

PRECISION_LOSS_TOLERANCE = 0.02   # |loss - fp32 loss| / fp32 loss, every step
EXACT_LOSS_TOLERANCE = 1e-4       # checkpointing, accumulation: the same arithmetic, reordered
GRADIENT_TOLERANCE = 1e-4         # accumulated against whole-batch gradients, largest relative difference
FLOPS_AGREEMENT = 0.02            # configuration formula against the counter


@dataclass(frozen=True)
class Attention:
    lengths: tuple = (512, 1024, 2048, 4096)
    # A GPU is swept further, as far as its memory allows (a length that runs out is recorded and
    # ends that implementation's sweep): flash's memory is too small to fit a slope below 4,096
    # (seen on an H200: 2-5 MiB at every length), and n^2 against n shows plainly from 8,192 on.
    gpu_lengths: tuple = (512, 1024, 2048, 4096, 8192, 16384)
    heads: int = 8
    head_dim: int = 64
    passes: tuple = ("forward", "forward+backward")
    min_samples: int = 6          # the fewest for a distribution-free 95% interval of a median
    name: str = "attention"
    model_tokens = 0              # its tensors are its own: the model's context does not bound them


@dataclass(frozen=True)
class Train:
    sequence_tokens: int = 128
    batch: int = 8
    micro_batch: int = 2          # the accumulation configuration: batch/micro_batch micro-steps
    steps: int = 7                # the first is warmup
    precisions: tuple = ("fp32", "bf16", "fp16")
    name: str = "train"

    @property
    def model_tokens(self) -> int:
        return self.sequence_tokens


@dataclass(frozen=True)
class Flops:
    context: int = 128
    name: str = "flops"

    @property
    def model_tokens(self) -> int:
        return self.context


@dataclass(frozen=True)
class Kv:
    prompt_tokens: int = 32
    lengths: tuple = (16, 32, 64, 128)
    repeats: int = 6
    name: str = "kv"

    @property
    def model_tokens(self) -> int:
        return self.prompt_tokens + max(self.lengths)


TECHNIQUES = ("attention", "train", "flops", "kv")


def flops_per_token(config: dict, context: int) -> dict:
    """Forward FLOPs per token of a Llama-shaped decoder over `context` tokens, as dense kernels
    compute them: 2 per weight of every matmul (attention projections, MLP, LM head; embeddings
    are lookups), plus the attention's two (context x head_dim) products per head and layer,
    counted in full (a causal kernel that skips masked blocks does about half of that term)."""
    d, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or d // heads
    kv = config.get("num_key_value_heads") or heads
    per_layer = d * heads * head_dim * 2 + d * kv * head_dim * 2 + 3 * d * config["intermediate_size"]
    weights = layers * per_layer + d * vocab
    attention = 4 * layers * context * heads * head_dim
    return {"matmul_weights": weights, "weights_flops": 2 * weights, "attention_flops": attention,
            "total": 2 * weights + attention}


def memory_exponent(lengths: list[int], peaks: list[float]) -> dict | None:
    """Slope of log(peak) against log(length) with its 95% interval (t, n-2 degrees of freedom)."""
    points = [(math.log(n), math.log(p)) for n, p in zip(lengths, peaks) if p and p > 0]
    if len(points) < 3:
        return None
    xs, ys = zip(*points)
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    resid = [y - (my + slope * (x - mx)) for x, y in points]
    se = math.sqrt(sum(r * r for r in resid) / (len(points) - 2) / sxx)
    half = t975(len(points) - 2) * se
    return {"exponent": slope, "ci": [slope - half, slope + half], "points": len(points)}


def run_attention(runner, sc: Attention, timeout_s: float, device: str = "cpu") -> dict:
    lengths = sc.gpu_lengths if device == "cuda" else sc.lengths
    raw = runner.request("technique", timeout_s, name="attention",
                         params={"lengths": list(lengths), "heads": sc.heads, "head_dim": sc.head_dim,
                                 "passes": list(sc.passes), "min_samples": sc.min_samples})
    rows = [dict(r, time=summarize(r["seconds"], "s")) if "seconds" in r else r for r in raw["rows"]]
    fits = {}
    for impl in dict.fromkeys(r["impl"] for r in rows):
        for pass_ in sc.passes:
            done = [r for r in rows if r["impl"] == impl and r["pass"] == pass_ and "peak_bytes" in r]
            fits[f"{impl} {pass_}"] = memory_exponent([r["length"] for r in done], [r["peak_bytes"] for r in done])
    return {"attention": dict(raw, rows=rows, memory_exponent=fits)}


def train_configs(sc: Train) -> list[dict]:
    """Every precision on its own, then checkpointing and accumulation, each in fp32."""
    configs = [{"precision": p} for p in sc.precisions]
    configs.append({"precision": "fp32", "checkpointing": True})
    configs.append({"precision": "fp32", "micro_batch": sc.micro_batch, "compare_gradients": True})
    return configs


def _label(config: dict) -> str:
    parts = [config["precision"]]
    if config.get("checkpointing"):
        parts.append("checkpointing")
    if config.get("micro_batch"):
        parts.append(f"accumulation {config['micro_batch']}x")
    return " + ".join(parts)


def run_train(runner, sc: Train, prompts: list[list[int]], timeout_s: float, progress=None) -> dict:
    from evaluator.launch.process import RunnerFailure

    batches = [prompts[i * sc.batch:(i + 1) * sc.batch] for i in range(sc.steps)]
    out = []
    for config in train_configs(sc):
        if progress:
            progress(f"train {_label(config)}")
        try:
            raw = runner.request("technique", timeout_s, name="train", params=config, batches=batches)
        except RunnerFailure as exc:
            if exc.status not in ("unsupported", "out-of-memory"):  # one configuration's; the others stand
                raise
            reason = str(exc).removeprefix(f"technique: {exc.status.replace('-', '_')}: ")  # the runner's own words
            out.append({"config": config, "label": _label(config), "status": exc.status, "reason": reason})
            continue
        timed = raw["seconds"][1:]
        step = summarize(timed, "s")
        out.append({"config": config, "label": _label(config), "status": "ok", **raw, "step": step,
                    "tokens_per_s": raw["tokens_per_step"] / step["p50"] if step.get("p50") else None})
    fp32 = next((r for r in out if r["config"] == {"precision": "fp32"} and r["status"] == "ok"), None)
    for r in out:
        if r["status"] != "ok" or fp32 is None or r is fp32:
            continue
        tolerance = PRECISION_LOSS_TOLERANCE if r["config"]["precision"] != "fp32" else EXACT_LOSS_TOLERANCE
        deviation = max(abs(a - b) / abs(b) for a, b in zip(r["losses"], fp32["losses"]))
        r["loss_check"] = {"max_relative_deviation": deviation, "tolerance": tolerance, "within": deviation <= tolerance,
                           "against": "fp32"}
        if "gradient_max_rel_diff" in r:
            r["gradient_check"] = {"max_relative_difference": r["gradient_max_rel_diff"], "tolerance": GRADIENT_TOLERANCE,
                                   "within": r["gradient_max_rel_diff"] <= GRADIENT_TOLERANCE}
    return {"train": {"configs": out, "sequence_tokens": sc.sequence_tokens, "batch": sc.batch, "steps": sc.steps,
                      "data": "WikiText-2 test windows (the latency prompts' source)"}}


def run_kv(runner, sc: Kv, prompt: list[int], timeout_s: float, progress=None) -> dict:
    """Time per output token with the KV cache and without, per output length (one request
    each), the ratio, and whether both produced the same greedy tokens."""
    from evaluator.stats.intervals import ratio_interval

    rows, raw = [], []
    for n in sorted(sc.lengths):
        per, tokens = {}, {}
        for cache in (True, False):
            if progress:
                progress(f"kv {'on' if cache else 'off'}, {n} tokens")
            got = runner.request("technique", timeout_s, name="kv",
                                 params={"prompt": prompt, "new_tokens": n, "kv_cache": cache, "repeats": sc.repeats})
            per[cache] = summarize([r["e2e_s"] / n for r in got["rows"]], "s")
            tokens[cache] = got["tokens"]
            raw += got["rows"]
        on, off = per[True], per[False]
        speedup = (ratio_interval(off["p50"], off.get("p50_ci"), on["p50"], on.get("p50_ci"))
                   if on.get("p50") and off.get("p50") else None)
        rows.append({"new_tokens": n, "with_cache": on, "without_cache": off, "speedup": speedup,
                     "same_tokens": tokens[True] == tokens[False]})
    return {"kv": {"rows": rows, "prompt_tokens": len(prompt), "raw": raw}}


def run_flops(runner, sc: Flops, config: dict, timeout_s: float) -> dict:
    raw = runner.request("technique", timeout_s, name="flops", params={"context": sc.context})
    formula = flops_per_token(config, sc.context)
    counted = raw["counted_flops"] / sc.context
    forward = summarize(raw["forward_seconds"], "s")
    achieved = raw["counted_flops"] / forward["p50"] if forward.get("p50") else None
    peak = raw["peak_probe"]["flops_per_s"]
    return {"flops": {"context": sc.context, "per_token_formula": formula, "per_token_counted": counted,
                      "agreement": counted / formula["total"] - 1, "by_op": raw["by_op"], "forward": forward,
                      "achieved_flops_per_s": achieved, "peak_flops_per_s": peak, "dtype": raw["dtype"],
                      "mfu": achieved / peak if achieved and peak else None, "peak_probe": raw["peak_probe"]}}

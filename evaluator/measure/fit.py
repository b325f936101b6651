"""Does a configuration fit the target's memory? Asked before any device is touched.

A lower bound of what the engine must hold: the weights at the variant's precision plus the
KV cache of the longest request the run will make (the largest batch x (prompt + new
tokens)). Engines add activations, workspaces and allocator slack on top, so a configuration
this bound already puts over the target's memory cannot fit there; one under it may still
run out, and then its cell says out-of-memory.
"""
from evaluator.catalog import synthetic

# Bytes per weight of each precision a manifest names (llama.cpp's block formats: bits per
# weight of the block, scales included; q4_k_m and q5_k_m mix types: their average).
BYTES_PER_WEIGHT = {"fp32": 4.0, "f32": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0, "q8_0": 34 / 32,
                    "q6_k": 210 / 256, "q5_k_m": 5.69 / 8, "q4_k_m": 4.89 / 8, "q4_0": 18 / 32,
                    # bitsandbytes and torchao (pytorch_quant): int8 with per-row scales; NF4 in
                    # blocks of 64 with an fp32 absmax each (4.5 bits)
                    "bnb-int8": 1.0, "torchao-int8wo": 1.0, "bnb-nf4": 4.5 / 8,
                    # llm-compressor's W4A16 packed (a lower bound: a CPU decompresses them at load):
                    # 4 bits and a 16-bit scale per 128 weights, AWQ's asymmetric scheme a zero point too
                    "gptq-w4a16": 4.125 / 8, "awq-w4a16": 4.25 / 8}
PRECISION_KEYS = ("dtype", "precision", "quant")


def bytes_per_weight(options: dict) -> float | None:
    for key in PRECISION_KEYS:
        if options.get(key) in BYTES_PER_WEIGHT:
            return BYTES_PER_WEIGHT[options[key]]
    return None


def estimate(config: dict, options: dict, tokens: int, batch: int) -> dict | None:
    """{"weights_bytes", "kv_bytes", "total_bytes"} or None when the precision is unknown."""
    bpw = bytes_per_weight(options)
    if bpw is None or "hidden_size" not in config:
        return None
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    kv_heads = config.get("num_key_value_heads") or heads
    try:  # a Llama-shaped count (Mistral, Qwen2, Phi-3 and TinyLlama share the shape to within biases)
        params = synthetic.parameters(dict(config, head_dim=head_dim, num_key_value_heads=kv_heads))
    except KeyError:
        return None
    kv_bytes_per_value = 4 if bpw >= 4 else 2  # fp32 variants keep an fp32 cache, the rest 16-bit
    kv = 2 * config["num_hidden_layers"] * kv_heads * head_dim * tokens * batch * kv_bytes_per_value
    weights = int(params * bpw)
    return {"weights_bytes": weights, "kv_bytes": kv, "total_bytes": weights + kv, "parameters": params}


def does_not_fit(config: dict, options: dict, tokens: int, batch: int, memory_gb: float, target: str) -> str | None:
    need = estimate(config, options, tokens, batch)
    if need is None or need["total_bytes"] <= memory_gb * 1e9:
        return None
    return (f"does not fit: at least {need['total_bytes'] / 1e9:.3g} GB (weights {need['weights_bytes'] / 1e9:.3g} GB "
            f"+ KV cache {need['kv_bytes'] / 1e9:.3g} GB for batch {batch} x {tokens} tokens) > {target}'s "
            f"{memory_gb:g} GB")

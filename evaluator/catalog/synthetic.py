"""Synthetic Llama models: a real Llama architecture with seeded random weights, for speed and
memory studies at sizes no one wants to download (and no machine here can).

A synthetic model is a normal Hugging Face folder (config.json, model.safetensors, the
built-in model's tokenizer), so every backend loads it as it loads a real one. Its weights are
noise: greedy text is gibberish and quality scores mean nothing, which is why the model
carries `synthetic: true` into every result and the report says so next to every number.

Shapes are multiples of 256 wherever llama.cpp's k-quants need it, so every quantization type
applies for real instead of falling back to another type.
"""
import json
import shutil
import struct
from pathlib import Path

from evaluator.errors import UserError

# The built-in model's tokenizer: ids below 512 are real tokens, the rest of a larger
# vocabulary are rows no prompt reaches (they still cost what they cost in the lm_head).
TOKENIZER_FROM = Path(__file__).resolve().parents[2] / "data" / "stories260k" / "hf"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")

SHAPE_KEYS = {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "vocab_size", "max_position_embeddings", "tie_word_embeddings", "seed"}
DEFAULTS = {"max_position_embeddings": 2048, "tie_word_embeddings": False, "seed": 0}


def parse_shape(text: str) -> dict:
    """`hidden_size=2048,num_hidden_layers=4,...` -> a shape dict (for `synthetic:<shape>` names)."""
    shape = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        key = key.strip()
        if key not in SHAPE_KEYS:
            raise UserError(f"synthetic shape key {key!r}; valid: {', '.join(sorted(SHAPE_KEYS))}")
        if key == "tie_word_embeddings":
            shape[key] = value.strip().lower() in ("1", "true", "yes")
            continue
        try:
            shape[key] = int(value)
        except ValueError:
            raise UserError(f"synthetic shape {key}={value!r}: not an integer") from None
    return shape


def config(shape: dict) -> dict:
    shape = dict(DEFAULTS, **shape)
    required = SHAPE_KEYS - set(DEFAULTS) - {"num_key_value_heads"}
    missing = required - set(shape)
    if missing:
        raise UserError(f"synthetic shape lacks {', '.join(sorted(missing))}")
    heads = shape["num_attention_heads"]
    kv_heads = shape.get("num_key_value_heads", heads)
    if shape["hidden_size"] % heads or heads % kv_heads:
        raise UserError(f"synthetic shape: hidden_size {shape['hidden_size']} must divide by num_attention_heads {heads}, "
                        f"and that by num_key_value_heads {kv_heads}")
    if shape["vocab_size"] < 512:
        raise UserError("synthetic shape: vocab_size must be at least 512 (the built-in tokenizer's)")
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": shape["vocab_size"], "hidden_size": shape["hidden_size"],
        "intermediate_size": shape["intermediate_size"], "num_hidden_layers": shape["num_hidden_layers"],
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": shape["hidden_size"] // heads,
        "max_position_embeddings": shape["max_position_embeddings"], "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "hidden_act": "silu", "tie_word_embeddings": shape["tie_word_embeddings"], "bos_token_id": 1, "eos_token_id": 2,
        "attention_bias": False, "mlp_bias": False, "initializer_range": 0.02, "torch_dtype": "float32",
        "use_cache": True, "deploy_eval_synthetic": {"seed": shape["seed"]},
    }


def _tensors(cfg: dict) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, init) in Hugging Face Llama naming; init is 'normal' or 'ones'."""
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    out = [("model.embed_tokens.weight", (v, h), "normal")]
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        out += [(p + "input_layernorm.weight", (h,), "ones"), (p + "post_attention_layernorm.weight", (h,), "ones"),
                (p + "self_attn.q_proj.weight", (h, h), "normal"), (p + "self_attn.k_proj.weight", (kv, h), "normal"),
                (p + "self_attn.v_proj.weight", (kv, h), "normal"), (p + "self_attn.o_proj.weight", (h, h), "normal"),
                (p + "mlp.gate_proj.weight", (i, h), "normal"), (p + "mlp.up_proj.weight", (i, h), "normal"),
                (p + "mlp.down_proj.weight", (h, i), "normal")]
    out.append(("model.norm.weight", (h,), "ones"))
    if not cfg["tie_word_embeddings"]:
        out.append(("lm_head.weight", (v, h), "normal"))
    return out


def parameters(cfg: dict) -> int:
    total = 0
    for _, shape, _ in _tensors(cfg):
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


def build(cfg: dict, folder: Path, progress=None) -> Path:
    """Write the model into `folder` (atomically: a temporary folder renamed at the end)."""
    import numpy as np  # only here: the rest of the evaluator does not need numpy

    if (folder / "model.safetensors").is_file():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = _tensors(cfg)
    header, offset = {"__metadata__": {"format": "pt", "deploy_eval": "synthetic random weights"}}, 0
    for name, shape, _ in tensors:
        size = 4 * int(np.prod(shape))
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # safetensors aligns the data to 8 bytes
    rng = np.random.default_rng(cfg["deploy_eval_synthetic"]["seed"])
    std = cfg["initializer_range"]
    with open(tmp / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for k, (_, shape, init) in enumerate(tensors):
            if init == "ones":
                data = np.ones(shape, np.float32)
            else:
                data = rng.standard_normal(shape, dtype=np.float32)
                data *= std
            f.write(data.tobytes())
            if progress:
                progress(k + 1, len(tensors))
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    for name in TOKENIZER_FILES:
        shutil.copy(TOKENIZER_FROM / name, tmp / name)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder

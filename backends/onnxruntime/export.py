"""Hugging Face folder -> ONNX decoder with a KV cache, and its int8 dynamic quantization.

One graph serves every request: inputs `input_ids` [batch, seq] and, per layer, `past.<i>.key`
and `past.<i>.value` [batch, kv_heads, past, head_dim] (past may be 0 long); outputs `logits`
[batch, seq, vocab] and `present.<i>.key/value` with past + seq positions. A prefill is a call
with an empty past, a decode step a call with seq 1 and the previous presents, a scoring pass
a prefill that reads every position's logits. No attention mask: the evaluator never pads on
the left, and right padding is invisible to a causal model.

Artifacts are folders (model.onnx + model.onnx.data, so models over protobuf's 2 GB work),
built in a temporary folder and renamed into place: a killed export leaves nothing reusable.
"""
import hashlib
import inspect
import json
import os
import sys
import time

EXPORT_DTYPES = ("fp32", "fp16")


def _versions() -> str:
    import onnx
    import onnxruntime
    import onnxscript
    import torch
    import transformers
    return (f"torch {torch.__version__}, transformers {transformers.__version__}, onnxscript {onnxscript.__version__}, "
            f"onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}")


def layout(config) -> tuple[int, int, int]:
    """(layers, kv heads, head dim) of a decoder config."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, getattr(config, "num_key_value_heads", None) or heads, head_dim


def _export(source: str, dest: str, dtype: str) -> None:
    import torch
    import transformers
    from transformers.cache_utils import DynamicCache

    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16}[dtype]
    model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, attn_implementation="sdpa").eval()
    layers, kv_heads, head_dim = layout(model.config)
    # transformers 5.24 renamed the forward's past_key_values (and its output field) to cache
    cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    class Decoder(torch.nn.Module):
        """The model with its cache as plain tensors, the only form an ONNX graph can carry."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, past):
            cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(layers)], config=self.inner.config)
            out = self.inner(input_ids=input_ids, **{cache_name: cache}, use_cache=True)
            return (out.logits, *[t for layer in getattr(out, cache_name).layers for t in (layer.keys, layer.values)])

    # Example sizes above 1 everywhere: torch.export specializes dimensions it sees as 0 or 1.
    batch, seq, past_len = 2, 5, 3
    ids = torch.zeros(batch, seq, dtype=torch.long)
    past = tuple(torch.zeros(batch, kv_heads, past_len, head_dim, dtype=torch_dtype) for _ in range(2 * layers))
    b, s, p = torch.export.Dim("batch"), torch.export.Dim("seq"), torch.export.Dim("past", min=0)
    names = [f"{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    with torch.no_grad():
        torch.onnx.export(
            Decoder(model), (ids, past), os.path.join(dest, "model.onnx"), dynamo=True,
            dynamic_shapes=({0: b, 1: s}, tuple({0: b, 2: p} for _ in names)),
            input_names=["input_ids"] + [f"past.{n}" for n in names],
            output_names=["logits"] + [f"present.{n}" for n in names],
            optimize=True, external_data=True, verbose=False,
        )


def _quantize_int8(fp32_dir: str, dest: str) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    quantize_dynamic(os.path.join(fp32_dir, "model.onnx"), os.path.join(dest, "model.onnx"),
                     weight_type=QuantType.QInt8, use_external_data_format=True)


def artifact(model: dict, precision: str, log=print) -> dict:
    """The ONNX folder for (source model, precision): reused from the cache or built now."""
    from evaluator.runner import child  # the runner's library: importable in the runner, not in the step itself

    # The runner checked both (artifact_home): never a constant key, never beside the source.
    source, sha, cache = model["path"], model["sha256"], model["artifact_cache"]
    versions = _versions()
    key = hashlib.sha256(f"{sha}|{versions}|{precision}".encode()).hexdigest()[:24]
    path = os.path.join(cache, f"onnx-{precision}-{key}")
    tool = "onnxruntime.quantization.quantize_dynamic" if precision == "int8" else "torch.onnx.export(dynamo=True)"
    info = {"path": path, "key": key, "kind": f"onnx {precision}", "tool": f"{tool} ({versions})"}
    if os.path.isfile(os.path.join(path, "model.onnx")):
        return dict(info, reused=True, build_s=None, size_bytes=child.folder_bytes(path))
    os.makedirs(cache, exist_ok=True)
    if precision == "int8":
        fp32 = artifact(model, "fp32", log)  # quantized from the (cached) fp32 export
        info["built_from"] = [fp32]
    t0 = time.perf_counter()  # build_s is this step's own

    def build(tmp: str) -> None:
        me = [sys.executable, os.path.abspath(__file__)]
        if precision == "int8":
            log(f"quantizing {fp32['path']} to int8")
            child.run_step([*me, "quantize-int8", fp32["path"], tmp], "quantize-int8")
        else:
            log(f"exporting {source} to ONNX ({precision})")
            child.run_step([*me, "export", source, tmp, precision], "export")
        with open(os.path.join(tmp, "artifact.json"), "w") as f:
            json.dump({"source": source, "source_sha256": sha, "precision": precision, "tool": info["tool"]}, f)

    child.build_folder(path, build)
    return dict(info, reused=False, build_s=time.perf_counter() - t0, size_bytes=child.folder_bytes(path))


if __name__ == "__main__":
    name, *arguments = sys.argv[1:]
    {"export": _export, "quantize-int8": _quantize_int8}[name](*arguments)

"""pytorch_quant: pytorch_eager's engine on weights quantized at load by the maintained tools.

- bnb-int8: bitsandbytes LLM.int8() (Linear8bitLt: int8 weights with per-row scales, outlier
  features kept in 16/32 bit), through transformers' BitsAndBytesConfig(load_in_8bit=True).
- bnb-nf4: bitsandbytes 4-bit NormalFloat (Linear4bit, blocks of 64 with an absmax scale each),
  computing in fp32 on a CPU and bf16 on a GPU.
- torchao-int8wo: torchao's int8 weight-only quantization (per-channel scales), applied to the
  loaded fp32 model with quantize_(model, Int8WeightOnlyConfig()).
- torchao-int4wo: torchao's int4 weight-only quantization (groups of 128 along the input, a bf16
  scale and zero point each) in the tinygemm layout (`tile_packed_to_4d`), whose matmul is
  PyTorch's own `_weight_int4pack_mm` on CUDA (compute capability 8.0+): the model computes in
  bf16. Linear layers whose widths the layout cannot hold (inputs not a multiple of the group,
  outputs not of 8) and the output layer stay in bf16; the result says how many were quantized.
- fp32: this runner unquantized, the same numbers as pytorch_eager fp32: every difference in
  the other rows is the method's.

Embeddings and the output layer stay in full precision (both libraries leave them), so the
weight bytes after load are reported beside the parameter count. Decoding and scoring are
pytorch_eager's own code: one implementation of both for every PyTorch row.
"""
import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.environ.get("DEPLOY_EVAL_RUNNER_LIB", os.path.join(HERE, "..", "..")))

_spec = importlib.util.spec_from_file_location("pytorch_eager_runner", os.path.join(HERE, "..", "pytorch_eager", "runner.py"))
eager = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(eager)

import torch  # noqa: E402
import transformers  # noqa: E402

from evaluator.runner import RunnerError, choice, serve  # noqa: E402

METHODS = ("fp32", "bnb-int8", "bnb-nf4", "torchao-int8wo", "torchao-int4wo")
INT4_GROUP = 128


def _version(package: str) -> str | None:
    try:
        return __import__(package).__version__
    except ImportError:
        return None


def _nbytes(t) -> int:
    """Bytes a tensor holds: a quantized tensor subclass (torchao's) by the tensors inside it
    (int8 data, scales, zero points), not by the shape it stands for."""
    scales = getattr(t, "SCB", None)  # bitsandbytes' int8 weights keep their row scales beside them
    extra = _nbytes(scales) if isinstance(scales, torch.Tensor) else 0
    t = getattr(t, "data", t)
    if hasattr(t, "__tensor_flatten__") and type(t) is not torch.Tensor:
        names, _ = t.__tensor_flatten__()
        return extra + sum(_nbytes(getattr(t, n)) for n in names)
    return extra + t.numel() * t.element_size()


class QuantEngine(eager.TorchEngine):
    method = "fp32"

    def describe(self):
        info = super().describe()
        info.update(engine="pytorch_quant", methods=list(METHODS))
        info["versions"] = dict(info["versions"], bitsandbytes=_version("bitsandbytes"), torchao=_version("torchao"))
        info["supports"] = dict(info["supports"], techniques=[])  # the techniques are pytorch_eager's
        return info

    def load(self, model, options):
        options = dict(options)
        self.method = choice(options, "quant", METHODS, "fp32")
        options.pop("quant", None)
        dtype = "bf16" if self.method == "torchao-int4wo" else "fp32"  # tinygemm multiplies bf16 activations
        result = super().load(model, dict(options, dtype=dtype, attn="sdpa", kv_cache="kv"))
        if self.method == "torchao-int8wo":
            from torchao.quantization import Int8WeightOnlyConfig, quantize_
            quantize_(self.model, Int8WeightOnlyConfig())
        if self.method == "torchao-int4wo":
            result["int4_layers"] = self._int4_tinygemm()
        if self.method == "bnb-nf4":
            result["nf4_cpu_kernel"] = self._nf4_cpu_kernel()
        weight_bytes = sum(_nbytes(t) for t in [*self.model.parameters(), *self.model.buffers()])
        result.update(quant=self.method, weight_bytes=weight_bytes)
        result["settings"] = dict(result["settings"], quant=self.method, weight_bytes=weight_bytes,
                                  nf4_cpu_kernel=result.get("nf4_cpu_kernel"), int4_layers=result.get("int4_layers"),
                                  bitsandbytes=_version("bitsandbytes"), torchao=_version("torchao"))
        return result

    def _int4_tinygemm(self) -> str:
        """Quantize the bf16 model's Linear layers to int4 in tinygemm's layout; returns how many it took."""
        from torchao.quantization import Int4WeightOnlyConfig, quantize_

        if self.device != "cuda" or torch.cuda.get_device_capability()[0] < 8:
            raise RunnerError("unsupported", "torchao int4 weight-only (tinygemm) needs a CUDA GPU of compute capability 8.0+")
        head = self.model.get_output_embeddings()
        linears = [m for m in self.model.modules() if isinstance(m, torch.nn.Linear) and m is not head]
        fits = {id(m) for m in linears if m.in_features % INT4_GROUP == 0 and m.out_features % 8 == 0}
        quantize_(self.model, Int4WeightOnlyConfig(group_size=INT4_GROUP, int4_packing_format="tile_packed_to_4d"),
                  filter_fn=lambda m, fqn: id(m) in fits)
        return f"{len(fits)} of {len(linears)} Linear layers int4 (group {INT4_GROUP}); the rest and the output layer bf16"

    def _nf4_cpu_kernel(self) -> str | None:
        """bitsandbytes repacks NF4 weights for its AVX512-BF16 CPU kernel in blocks of 32 output
        features and its scales by input blocks (64), and fails at the first forward when a layer
        has other widths (stories260K's FFN is 172 wide). Such layers take bitsandbytes' generic path instead; the result says
        how many, so a slower row is not mistaken for the method's own speed."""
        import bitsandbytes as bnb

        layers = [m for m in self.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
        if self.device != "cpu" or not layers or not layers[0].support_avx512bf16_for_cpu:
            return None if self.device != "cpu" else "generic (this CPU has no AVX512-BF16)"
        odd = [m for m in layers if m.out_features % 32 or m.in_features % m.weight.quant_state.blocksize]
        for m in odd:
            m.support_avx512bf16_for_cpu = False
        return (f"AVX512-BF16 packed for {len(layers) - len(odd)} of {len(layers)} layers"
                + (f"; generic for {len(odd)} whose widths are not multiples of 32 out and 64 in" if odd else ""))

    def _from_pretrained(self, path, kwargs):
        if not self.method.startswith("bnb-"):
            return super()._from_pretrained(path, kwargs)
        compute = torch.bfloat16 if self.device == "cuda" else torch.float32
        config = (transformers.BitsAndBytesConfig(load_in_8bit=True) if self.method == "bnb-int8" else
                  transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                  bnb_4bit_compute_dtype=compute))
        try:  # bitsandbytes places the quantized weights itself: no .to() after it
            return transformers.AutoModelForCausalLM.from_pretrained(path, quantization_config=config,
                                                                     device_map=self.device, **kwargs)
        except (ImportError, RuntimeError) as exc:
            raise RunnerError("unsupported", f"bitsandbytes cannot quantize on {self.device} here: "
                                             f"{type(exc).__name__}: {exc}"[:500]) from None


if __name__ == "__main__":
    serve(QuantEngine())

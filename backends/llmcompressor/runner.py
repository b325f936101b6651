"""llmcompressor: pytorch_eager's engine on W4A16 checkpoints that llm-compressor calibrates.

- gptq-w4a16, awq-w4a16: the checkpoint calibrate.py builds (cached by source hash, tool
  versions, method and calibration), loaded by transformers through its compressed-tensors
  integration. On a CPU (transformers 5.17, compressed-tensors 0.19) the packed weights are
  unpacked to float32 by a hook at the model's first forward, which load runs: memory is then
  that of the dense weights and only the file is 4-bit; the result says what it holds
  (`compressed_layers`).
- fp32: this runner unquantized, with this environment's transformers: the check that every
  difference in the other rows is the method's.

Decoding and scoring are pytorch_eager's own code, as for pytorch_quant.
"""
import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.environ.get("DEPLOY_EVAL_RUNNER_LIB", os.path.join(HERE, "..", "..")))
sys.path.insert(0, HERE)

_spec = importlib.util.spec_from_file_location("pytorch_eager_runner", os.path.join(HERE, "..", "pytorch_eager", "runner.py"))
eager = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(eager)

import calibrate  # noqa: E402
import torch  # noqa: E402

from evaluator.runner import RunnerError, artifact_home, choice, serve  # noqa: E402

QUANT = ("fp32", *calibrate.METHODS)


def _version(package: str) -> str | None:
    try:
        return __import__(package).__version__
    except ImportError:
        return None


class CompressorEngine(eager.TorchEngine):
    method = "fp32"
    artifact = None

    def describe(self):
        info = super().describe()
        info.update(engine="llmcompressor", methods=list(QUANT))
        info["versions"] = dict(info["versions"], llmcompressor=_version("llmcompressor"),
                                compressed_tensors=_version("compressed_tensors"))
        info["supports"] = dict(info["supports"], techniques=[])  # the techniques are pytorch_eager's
        return info

    def load(self, model, options):
        options = dict(options)
        self.method = choice(options, "quant", QUANT, "fp32")
        options.pop("quant", None)
        self.artifact = None
        if self.method != "fp32":
            artifact_home(model)
            try:
                self.artifact = calibrate.artifact(model, self.method, log=lambda m: print(m, file=sys.stderr, flush=True))
            except RuntimeError as exc:
                raise RunnerError("internal", str(exc)[:500]) from None
        result = super().load(model, dict(options, dtype="fp32", attn="sdpa", kv_cache="kv"))
        if self.model._forward_pre_hooks:
            # compressed-tensors' decompress hook unpacks every layer at the first forward: run it
            # now, so memory after load is what generation holds and no timed request pays for it
            with torch.inference_mode():
                self.model(input_ids=torch.tensor([[self.model.config.bos_token_id or 1]], device=self.device))
        linear = [m for m in self.model.modules() if isinstance(m, torch.nn.Linear)]
        packed = sum(hasattr(m, "weight_packed") for m in linear)
        weight_bytes = sum(t.numel() * t.element_size() for t in [*self.model.parameters(), *self.model.buffers()])
        result.update(quant=self.method, weight_bytes=weight_bytes, artifact=self.artifact)
        result["settings"] = dict(result["settings"], quant=self.method, weight_bytes=weight_bytes,
                                  scheme=calibrate.METHODS.get(self.method),
                                  calibration=calibrate.calibration() if self.artifact else None,
                                  compressed_layers=f"{packed} of {len(linear)} linear layers hold packed weights"
                                  + ("" if packed or not self.artifact else
                                     "; compressed-tensors unpacked them to float32 at the first forward: 4-bit on disk only"),
                                  llmcompressor=_version("llmcompressor"), compressed_tensors=_version("compressed_tensors"))
        return result

    def _from_pretrained(self, path, kwargs):
        """The calibrated checkpoint in place of the source (same tokenizer and config)."""
        return super()._from_pretrained(self.artifact["path"] if self.artifact else path, kwargs)


if __name__ == "__main__":
    serve(CompressorEngine())

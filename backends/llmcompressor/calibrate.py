"""Hugging Face folder -> a W4A16 checkpoint calibrated by llm-compressor (GPTQ or AWQ), cached.

- gptq-w4a16: GPTQModifier, scheme W4A16 (4-bit symmetric integer weights in groups of 128
  input features, activations left in 16/32 bit): each layer's weights rounded one column at a
  time, the error so far compensated through the inverse Hessian of the calibration inputs.
- awq-w4a16: AWQModifier, scheme W4A16_ASYM (asymmetric, as llm-compressor's AWQ examples use):
  per-channel scales searched on the calibration activations so the salient weights lose less,
  folded into the preceding norms, then round-to-nearest.
The output layer stays in full precision (both methods' usual `ignore`).

Calibration text is the model's own: CALIBRATION_SAMPLES sequences sampled from it (seeded,
temperature 1, from the BOS token). It is disjoint from every evaluation text (WikiText-2 test,
HellaSwag) by construction, needs no dataset download, and is the distribution the model's
activations actually see; generic web text would also do, but would have to be fetched and
checked against the evaluation sets.

Artifacts are folders keyed by (source hash, the tools' versions, method, scheme, calibration),
built by the runner library's build steps (evaluator/runner/child.py): in a child process, into
a temporary folder renamed into place.
"""
import hashlib
import json
import os
import sys
import time

METHODS = {"gptq-w4a16": "W4A16", "awq-w4a16": "W4A16_ASYM"}  # method -> compressed-tensors preset scheme
CALIBRATION_SAMPLES = 32
CALIBRATION_TOKENS = 256
SEED = 0


def _versions() -> str:
    import compressed_tensors
    import llmcompressor
    import torch
    import transformers
    return (f"llmcompressor {llmcompressor.__version__}, compressed-tensors {compressed_tensors.__version__}, "
            f"torch {torch.__version__}, transformers {transformers.__version__}")


def calibration() -> str:
    return (f"{CALIBRATION_SAMPLES} sequences of {CALIBRATION_TOKENS} tokens sampled from the model itself "
            f"(seed {SEED}, temperature 1, from BOS): disjoint from WikiText-2 and HellaSwag by construction")


def _calibrate(source: str, dest: str, method: str) -> None:
    import torch
    import transformers
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.awq import AWQModifier
    from llmcompressor.modifiers.quantization import GPTQModifier
    from llmcompressor.pipelines.cache import IntermediatesCache

    if not torch.accelerator.is_available():
        # llm-compressor 0.14's AWQ pins its cached activations for faster host-to-device copies,
        # which raises "Cannot access accelerator device" on a machine without one. Pinning only
        # speeds a copy to a device; with none there is nothing to speed.
        IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None
    model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(source)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # sampling on the accelerator where there is one
    torch.manual_seed(SEED)
    start = torch.full((CALIBRATION_SAMPLES, 1), model.config.bos_token_id or 1, device=device)
    with torch.no_grad():
        text = model.to(device).generate(start, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                         max_new_tokens=CALIBRATION_TOKENS - 1, min_new_tokens=CALIBRATION_TOKENS - 1)
    model.to("cpu")  # llm-compressor's sequential pipeline moves each layer to the device itself
    data = Dataset.from_dict({"input_ids": text.tolist(), "attention_mask": torch.ones_like(text).tolist()})
    modifier = GPTQModifier if method.startswith("gptq") else AWQModifier
    oneshot(model=model, dataset=data, recipe=modifier(targets="Linear", scheme=METHODS[method], ignore=["lm_head"]),
            max_seq_length=CALIBRATION_TOKENS, num_calibration_samples=CALIBRATION_SAMPLES)
    model.save_pretrained(dest, save_compressed=True)
    tok.save_pretrained(dest)


def artifact(model: dict, method: str, log=print) -> dict:
    """The calibrated checkpoint for (source model, method): reused from the cache or built now."""
    from evaluator.runner import child  # the runner's library: importable in the runner, not in the step itself

    # The runner checked both (artifact_home): never a constant key, never beside the source.
    source, sha, cache = model["path"], model["sha256"], model["artifact_cache"]
    versions = _versions()
    key = hashlib.sha256(f"{sha}|{versions}|{method}|{METHODS[method]}|{calibration()}".encode()).hexdigest()[:24]
    path = os.path.join(cache, f"llmcompressor-{method}-{key}")
    info = {"path": path, "key": key, "kind": f"compressed-tensors {METHODS[method]}", "tool": f"llm-compressor oneshot ({versions})",
            "calibration": calibration()}
    if os.path.isfile(os.path.join(path, "artifact.json")):
        with open(os.path.join(path, "artifact.json")) as f:
            built = json.load(f)
        return dict(info, reused=True, build_s=None, calibration_s=built.get("calibration_s"), size_bytes=child.folder_bytes(path))
    os.makedirs(cache, exist_ok=True)
    t0 = time.perf_counter()

    def build(tmp: str) -> None:
        log(f"calibrating {source} with {method} ({calibration()})")
        child.run_step([sys.executable, os.path.abspath(__file__), source, tmp, method], f"{method} calibration")
        with open(os.path.join(tmp, "artifact.json"), "w") as f:
            json.dump({"source": source, "source_sha256": sha, "method": method, "scheme": METHODS[method],
                       "tool": info["tool"], "calibration": calibration(), "calibration_s": time.perf_counter() - t0}, f)

    child.build_folder(path, build)
    build_s = time.perf_counter() - t0
    return dict(info, reused=False, build_s=build_s, calibration_s=build_s, size_bytes=child.folder_bytes(path))


if __name__ == "__main__":
    _calibrate(*sys.argv[1:])

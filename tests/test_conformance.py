"""Every folder in backends/ is held to the runner contract. Dropping in a new backend folder
adds it here: it speaks the protocol, refuses bad requests with typed errors, and reproduces
the published stories260K greedy text when it runs here, or says why it cannot. An engine that
runs here but refuses stories260K's shape (vLLM: its CPU kernels need wider heads; llm-compressor's
128-wide weight groups) says why,
and is held to the whole contract on stories260k-student (real distilled weights, heads 32
wide), its own published greedy text included."""
from pathlib import Path

import pytest

from evaluator.catalog import backends, models, targets
from evaluator.launch.process import RunnerFailure
from evaluator.plan import unsupported as _unsupported
from evaluator.tokens import HostTokenizer
from tests.conftest import EXPECTED_GREEDY, start_runner

FOLDERS = sorted(p.name for p in backends.BACKENDS_DIR.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
DESCRIBE_KEYS = {"engine", "engine_version", "versions", "device", "available", "unavailable_reason", "supports", "protocol", "arch"}


def test_every_folder_is_a_backend():
    good, broken = backends.discover()
    assert not broken, f"broken manifests: {broken}"
    assert sorted(good) == FOLDERS


# Per engine, the settings that change its numbers (caches, precisions, kernels), beyond threads.
RECORDED = {
    "pytorch_eager": {"dtype", "attn", "kv_cache", "interop_threads"},
    "pytorch_compile": {"dtype", "attn", "kv_cache", "compile_mode", "inductor_cache"},
    "onnxruntime": {"graph_optimization", "providers", "io_binding", "inter_op_threads"},
    "llamacpp": {"n_ctx", "n_batch", "kv_cache_type", "flash_attn", "logits"},
    "pytorch_quant": {"quant", "weight_bytes", "nf4_cpu_kernel"},
    "llmcompressor": {"quant", "weight_bytes", "scheme", "calibration", "compressed_layers"},
    "vllm": {"prefix_caching", "kv_cache_memory_bytes"},
}


@pytest.mark.parametrize("name", FOLDERS)
def test_backend_honours_the_contract(name, tmp_path):
    backend = backends.load_manifest(backends.BACKENDS_DIR / name)
    model = models.resolve("stories260k")
    local = targets.resolve(["local"])[0]
    reference = backend.variant(backend.reference_variant)
    cannot_run_here = _unsupported(model, backend, reference, local)
    if cannot_run_here and (backend.min_head_dim or backend.weight_group_size) and "config.json" in cannot_run_here:
        model = models.resolve("stories260k-student")  # refused for this model's shape: the contract on one it runs
        cannot_run_here = _unsupported(model, backend, reference, local)
    if cannot_run_here:
        assert len(cannot_run_here) > 10, "a backend that cannot run here must say why"
        pytest.skip(f"{name} cannot run here: {cannot_run_here}")
    with start_runner(name, tmp_path) as runner:
        info = runner.request("describe", 60)
        assert DESCRIBE_KEYS <= set(info), f"describe lacks {DESCRIBE_KEYS - set(info)}"
        fmt = next(f for f in backend.formats if model.artifact(f))
        spec = {"path": str(model.artifact(fmt)), "format": fmt, "sha256": model.content_hash(),
                "artifact_cache": str(tmp_path / "artifacts")}
        if not info["available"]:
            assert info["unavailable_reason"], "an unavailable engine must say why"
            with pytest.raises(RunnerFailure) as exc:
                runner.request("load", 60, model=spec, options=dict(reference.options, device="cpu"))
            assert exc.value.status == "unsupported"
            return
        for op, args in [("fly", {}), ("generate", {"prompts": [[1]], "max_new_tokens": 1})]:
            with pytest.raises(RunnerFailure) as exc:
                runner.request(op, 30, **args)
            assert exc.value.status == "failed" and "bad_request" in exc.value.reason
        with pytest.raises(RunnerFailure, match="bad_request"):
            runner.request("load", 120, model=spec, options={"no_such_option": 1})
        try:
            loaded = runner.request("load", 300, model=spec, options=dict(reference.options, device="cpu"))
        except RunnerFailure as exc:
            assert exc.status == "unsupported" and len(exc.reason) > 30, exc.reason
            model = models.resolve("stories260k-student")  # the contract still holds, on a model it can run
            spec = {"path": str(model.hf_path), "format": "hf", "sha256": model.content_hash(),
                    "artifact_cache": str(tmp_path / "artifacts")}
            loaded = runner.request("load", 300, model=spec, options=dict(reference.options, device="cpu"))
        if not backend.fake:  # what changes a number is set deliberately and recorded
            assert loaded["settings"]["threads"] >= 1, f"{name} records no thread count: {loaded.get('settings')}"
            assert RECORDED.get(name, set()) <= set(loaded["settings"]), \
                f"{name} leaves {RECORDED[name] - set(loaded['settings'])} out of its settings"
            assert info["build"], f"{name} records nothing of its build"
        with pytest.raises(RunnerFailure, match="bad_request"):
            runner.request("generate", 30, prompts=[[1, 10**6]], max_new_tokens=1)
        tok = HostTokenizer(model.hf_path)
        tokens = runner.request("generate", 300, prompts=[[tok.bos]], max_new_tokens=256)["tokens"][0]
        assert len(tokens) == 256
        # serving: a small schedule through the engine's asynchronous API, each request exactly
        # its greedy tokens (as generate makes them), or a plain unsupported
        schedule = [{"at_s": 0.005 * i, "prompt": [tok.bos], "new_tokens": 8} for i in range(3)]
        try:
            served = runner.request("serving", 120, requests=schedule)["requests"]
            assert [r["tokens"] for r in served] == [tokens[:8]] * 3, f"{name} serves other tokens than it generates"
        except RunnerFailure as exc:
            assert exc.status == "unsupported" and "asynchronous" in exc.reason, exc.reason
        if backend.fake:
            return  # reads no weights: nothing to reproduce
        if not model.synthetic:
            expected = model.reference_greedy.read_text(encoding="utf-8").rstrip("\n") if model.reference_greedy else EXPECTED_GREEDY
            assert tok.decode(tokens) == expected, f"{name} {reference.name} does not reproduce {model.name}'s reference text"
        scored = runner.request("score", 60, sequences=[[tok.bos] + tokens[:16]], start=1, top_k=1)["results"][0]
        # Greedy tokens are the argmax, so each is its position's top-1.
        assert [t[0][0] for t in scored["top"]] == tokens[:16]
        # `want`: the log-probabilities of chosen ids, the same numbers as the full softmax gives
        # them elsewhere in the answer (each actual token; each top-5 id), or a plain unsupported.
        seq = [tok.bos] + tokens[:16]
        asked = [[t, *(i for i, _ in top[:4])] for t, top in
                 zip(seq[1:], runner.request("score", 60, sequences=[seq], start=1, top_k=4)["results"][0]["top"])]
        try:
            got = runner.request("score", 60, sequences=[seq], start=1, top_k=4, want=[asked])["results"][0]
        except RunnerFailure as exc:
            assert exc.status == "unsupported" and "want" in exc.reason
            return
        assert [w[0] for w in got["wanted"]] == pytest.approx(got["logprobs"], abs=1e-5)
        assert [lp for w in got["wanted"] for lp in w[1:]] == pytest.approx([lp for top in got["top"] for _, lp in top], abs=1e-5)


def test_a_backend_for_another_machine_says_why_it_cannot_run_here(tmp_path):
    manifest = (backends.BACKENDS_DIR / "pytorch_eager" / "backend.toml").read_text()
    folder = tmp_path / "gpu_only"
    folder.mkdir()
    (folder / "backend.toml").write_text(manifest.replace('"pytorch_eager"', '"gpu_only"').replace('["cpu", "cuda"]', '["cuda"]'))
    (folder / "runner.py").write_text("")
    (folder / "requirements.txt").write_text("")
    (folder / "Dockerfile").write_text("")
    backend = backends.load_manifest(folder)
    reason = _unsupported(models.resolve("stories260k"), backend, backend.variants[0], targets.resolve(["local"])[0])
    if Path("/dev/nvidia0").exists():
        pytest.skip("this machine has a GPU")
    assert reason and "cuda" in reason

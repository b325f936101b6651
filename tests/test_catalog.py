"""Models, targets and backend manifests: real resolution, and loud, helpful errors."""
import dataclasses
import os
import shutil

import pytest

from evaluator.catalog import backends, models, targets
from evaluator.errors import UserError
from tests.conftest import REPO, STORIES


def test_builtin_model_resolves_to_the_shipped_files():
    m = models.resolve("stories260k")
    assert m.hf_path == STORIES / "hf" and m.gguf_path.name == "stories260K.gguf"
    assert m.formats == ("hf", "gguf") and m.size_bytes() == 1044992 and len(m.content_hash()) == 64


def fake_hub_cache(root, repo_id: str, revision="0123456789abcdef0123456789abcdef01234567"):
    """The layout huggingface_hub itself writes: models--org--name/{refs/main, snapshots/<rev>/}."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / revision
    shutil.copytree(STORIES / "hf", snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return snap


def test_hub_model_resolves_from_the_local_hub_cache_without_network(tmp_path, monkeypatch):
    snap = fake_hub_cache(tmp_path, "meta-llama/Meta-Llama-3-8B")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m = models.resolve("llama3-8b")
    assert m.hf_path == snap and m.source == f"hub:meta-llama/Meta-Llama-3-8B@{snap.name}"


def test_any_hub_id_works_too(tmp_path, monkeypatch):
    fake_hub_cache(tmp_path, "someone/tiny-llama")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models.resolve("someone/tiny-llama").hf_path.is_dir()


def test_offline_hub_model_says_how_to_provide_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as exc:
        models.resolve("mistral-7b")
    msg = str(exc.value)
    assert "mistralai/Mistral-7B-v0.3" in msg and "--model-path" in msg and "hf download" in msg and "\n" not in msg


def test_model_path_accepts_a_hf_folder_and_refuses_other_things(tmp_path):
    assert models.resolve("mine", str(STORIES / "hf")).source == "path"
    with pytest.raises(UserError, match="no such file"):
        models.resolve("mine", str(tmp_path / "nope"))
    with pytest.raises(UserError, match="no config.json"):
        models.resolve("mine", str(tmp_path))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="must be a .gguf"):
        models.resolve("mine", str(tmp_path / "weights.bin"))


@pytest.mark.parametrize("kind, call, words", [
    ("model", lambda: models.resolve("stories260"), "Did you mean: stories260k?"),
    ("model", lambda: models.resolve("llama-3-8b"), "Did you mean: llama3-8b?"),
    ("target", lambda: targets.resolve(["rtx3009"]), "Did you mean: rtx3090?"),
    ("backend", lambda: backends.select(["pytorch-eager"]), "Did you mean: pytorch_eager?"),
    ("variant", lambda: backends.select(["pytorch_eager"])[0].variant("fp23-sdpa-kv"), "Did you mean: fp32-sdpa-kv?"),
])
def test_unknown_names_suggest_the_closest_and_list_the_rest(kind, call, words):
    with pytest.raises(UserError) as exc:
        call()
    assert words in str(exc.value) and "Available:" in str(exc.value)


def test_targets_describe_remote_devices():
    rtx, rpi, local = targets.resolve(["rtx3090", "rpi5", "local"])
    assert (rtx.arch, rtx.device, rtx.memory_gb, rtx.memory_bandwidth_gbs) == ("x86_64", "cuda", 24, 936)
    assert (rpi.arch, rpi.device, rpi.memory_gb) == ("aarch64", "cpu", 8)
    assert local.transport == "local" and local.memory_gb > 1
    assert rtx.base_image == rpi.base_image == "python:3.11-slim-bookworm" and local.base_image == ""


@pytest.mark.parametrize("text, words", [
    ('[box]\ntransport = "local"\nmemroy_gb = 8\n', "unknown key 'memroy_gb' (did you mean 'memory_gb'?)"),
    ('[box]\ntransport = "telnet"\n', "transport 'telnet'"),
    ('[box]\ntransport = "ssh-docker"\narch = "mips"\nmemory_gb = 8\n', "arch 'mips'"),
    ('[box]\ntransport = "ssh-docker"\narch = "aarch64"\n', "memory_gb must be a number"),
    ('[box]\ntransport = "docker"\nbase_image = 3\n', "base_image 3: Input should be a valid string"),
    ('[box\n', "not valid TOML"),
    ('[box]\nmemory_gb = "8"\n', "memory_gb '8': Input should be 'auto', or Input should be a valid number"),
    ('[box]\ntransport = "ssh-docker"\narch = "x86_64"\nmemory_gb = 8\nssh_options = "-p 22"\n', "ssh_options '-p 22'"),
    ('[box]\ntransport = "docker"\npython = { default = "/usr/bin/python3" }\n', "python is for the local and ssh transports"),
    ('[box]\ntransport = "ssh"\narch = "x86_64"\nmemory_gb = 8\npython = "/usr/bin/python3"\n', "python '/usr/bin/python3'"),
])
def test_user_targets_file_is_checked(tmp_path, monkeypatch, text, words):
    path = tmp_path / "targets.toml"
    path.write_text(text)
    monkeypatch.setattr(targets, "USER_FILE", path)
    with pytest.raises(UserError) as exc:
        targets.resolve(["box"])
    assert words in str(exc.value)


def test_a_targets_file_named_in_the_environment_must_exist(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOY_EVAL_TARGETS", str(tmp_path / "nope.toml"))
    monkeypatch.setattr(targets, "USER_FILE", tmp_path / "nope.toml")
    with pytest.raises(UserError) as exc:
        targets.resolve(["local"])
    assert "DEPLOY_EVAL_TARGETS names" in str(exc.value) and "does not exist" in str(exc.value)


MANIFEST = (REPO / "backends" / "null" / "backend.toml").read_text()


@pytest.mark.parametrize("edit, words", [
    (lambda m: m + "\ncolour = 'red'\n", "unknown key 'colour'"),
    (lambda m: m.replace('name = "null"', 'name = "other"'), "differs from its folder name"),
    (lambda m: m.replace('runner = "runner.py"', 'runner = "gone.py"'), "does not exist"),
    (lambda m: m.replace("protocol = 1", "protocol = 7"), "protocol 7"),
    (lambda m: m.replace("[variants]", "[variants\n"), "not valid TOML"),
    (lambda m: m.replace('reference = "none"', 'reference = "nothing"'), "reference variant"),
    (lambda m: m.replace('description = ', 'descr = '), "unknown key 'descr'"),
    (lambda m: "", "missing keys"),
    (lambda m: m.replace("default = false", 'default = "no"'), "default 'no': Input should be a valid boolean"),
    (lambda m: m.replace("[variants]", "[variants]\naxs = 1"), "[variants]: unknown key 'axs' (did you mean 'axes'?)"),
    (lambda m: m.replace('devices = ["cpu"]', 'devices = ["cpu", "tpu"]'), "devices[1] 'tpu': Input should be 'cpu' or 'cuda'"),
])
def test_a_broken_manifest_is_reported_loudly_never_skipped(tmp_path, edit, words):
    folder = tmp_path / "null"
    shutil.copytree(REPO / "backends" / "null", folder)
    (folder / "backend.toml").write_text(edit(MANIFEST))
    good, broken = backends.discover(tmp_path)
    assert not good and words in broken["null"]
    with pytest.raises(UserError, match="broken manifest"):
        backends.select(["null"], tmp_path)


MADE_BY = '\n[[variants.made_by]]\nname = "{name}"\nbackend = "{backend}"\nvariant = "{variant}"\n'


@pytest.mark.parametrize("name, backend, variant, words", [
    ("calibrated", "nowhere", "none", "made by nowhere:none, which is not a variant of a working backend"),
    ("calibrated", "null", "gone", "made by null:gone, which is not a variant of a working backend"),
    ("fp32-sdpa-kv", "null", "none", "variant names repeat: fp32-sdpa-kv"),
])
def test_a_variant_made_by_another_backend_must_name_one_that_exists(tmp_path, name, backend, variant, words):
    for folder in ("null", "pytorch_eager"):
        shutil.copytree(REPO / "backends" / folder, tmp_path / folder)
    manifest = tmp_path / "pytorch_eager" / "backend.toml"
    manifest.write_text(manifest.read_text() + MADE_BY.format(name=name, backend=backend, variant=variant))
    good, broken = backends.discover(tmp_path)
    assert "pytorch_eager" not in good and words in broken["pytorch_eager"], broken


def test_vllm_runs_llm_compressors_checkpoints_and_the_plan_asks_the_maker_first():
    from evaluator.plan import unsupported

    vllm = backends.select(["vllm"])[0]
    gptq = vllm.variant("gptq-w4a16")
    assert gptq.made_by == ("llmcompressor", "gptq-w4a16") and [x.name for x in gptq.maker] == ["llmcompressor", "gptq-w4a16"]
    assert gptq.options == {"dtype": "bf16", "weights": "llmcompressor:gptq-w4a16"}
    assert "gptq-w4a16" not in vllm.default_variants
    local = targets.resolve(["local"])[0]
    assert unsupported(models.resolve("stories260k-student"), vllm, gptq, local) is None
    # a model whose widths llm-compressor's 128-wide groups do not divide: the maker's reason, nothing installed
    teacher = models.resolve("stories260k")
    why = unsupported(teacher, dataclasses.replace(vllm, min_head_dim=None), gptq, local)
    assert why.startswith("its weights are llmcompressor gptq-w4a16's, which cannot be made here") and "groups of 128" in why


def test_a_folder_without_manifest_is_broken(tmp_path):
    (tmp_path / "half_done").mkdir()
    assert "missing" in backends.discover(tmp_path)[1]["half_done"]


def test_variants_are_the_product_of_the_axes_with_device_needs():
    eager = backends.select(["pytorch_eager"])[0]
    assert len(eager.variants) == 12 and eager.reference_variant == "fp32-sdpa-kv"
    fp16 = eager.variant("fp16-sdpa-kv")
    assert fp16.unsupported_reason("cpu") and fp16.unsupported_reason("cuda") is None
    assert eager.variant("bf16-eager-nokv").options == {"dtype": "bf16", "attn": "eager", "kv_cache": "nokv"}


def test_a_run_without_variants_takes_the_manifest_defaults():
    from evaluator.plan import variants as _variants

    eager = backends.select(["pytorch_eager"])[0]
    assert {v.name for v in _variants(eager, None)} == set(eager.default_variants)
    assert len(_variants(eager, ["*"])) == 12 and [v.name for v in _variants(eager, ["bf16-*-kv"])] == ["bf16-sdpa-kv", "bf16-eager-kv"]


def test_llama_cpp_is_built_only_with_the_instruction_sets_this_cpu_has(monkeypatch):
    """A build with AVX-512 dies with SIGILL on a CPU without it (seen on this project's VMs)."""
    import platform

    from evaluator import envs

    llamacpp = backends.select(["llamacpp"])[0]
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(envs, "cpu_flags", lambda: {"avx", "avx2", "fma", "f16c", "bmi2"})
    without = envs.build_flags(llamacpp)["CMAKE_ARGS"]
    assert "-DGGML_AVX2=ON" in without and "-DGGML_AVX512=OFF" in without and "-DGGML_AVX512_BF16=OFF" in without
    monkeypatch.setattr(envs, "cpu_flags", lambda: {"avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512_vnni"})
    with_512 = envs.build_flags(llamacpp)["CMAKE_ARGS"]
    assert "-DGGML_AVX512=ON" in with_512 and "-DGGML_AVX512_VNNI=ON" in with_512 and "-DGGML_AVX512_VBMI=OFF" in with_512
    assert "-DGGML_AMX_TILE=OFF" in with_512, "AMX stays off whatever the CPU advertises"
    assert "GGML_AVX512" not in envs.build_flags(llamacpp, "aarch64")["CMAKE_ARGS"]


def test_a_runner_that_reuses_a_sibling_folder_declares_it():
    """with_backends is what images stage and what the resume key hashes: a runner naming another
    backend's folder without declaring it would run stale code on --resume."""
    import re

    good, _ = backends.discover()
    for backend in good.values():
        code = "".join(p.read_text() for p in backend.folder.glob("*.py"))
        named = {n for n in good if n != backend.name and re.search(rf"[\"']{re.escape(n)}[\"']", code)}
        assert named <= set(backend.with_backends), f"{backend.name} reuses {named} but declares {backend.with_backends}"


def test_a_local_gpu_target_is_sized_by_the_cards_memory_not_the_ram(tmp_path, monkeypatch):
    """nvidia-smi's documented CSV answer (--query-gpu=name,memory.total --format=csv,noheader,nounits)."""
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA GeForce RTX 3090, 24576'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    (local,) = targets.resolve(["local"])
    assert (local.accelerator, local.gpu, local.memory_gb) == ("cuda", "NVIDIA GeForce RTX 3090", 25.8)


def test_just_models_lists_every_entry_built_in_hub_and_synthetic():
    from conftest import run_cli

    proc = run_cli("models")
    assert proc.returncode == 0, proc.stderr
    assert "data/stories260k/hf" in proc.stdout and "hub meta-llama/" in proc.stdout
    assert "synthetic-tiny" in proc.stdout and "synthetic (built on first use)" in proc.stdout

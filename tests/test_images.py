"""Every backend's image recipe against the build context the evaluator stages for it, with no
Docker engine: what each Dockerfile copies is there, the entrypoint's runner is copied in, the
build arguments passed are declared, and which torch goes in follows the target (this machine's
CPU wheel, PyTorch's CPU index for another architecture, PyPI's CUDA build for a GPU). This is
the only check the GPU images (vllm_cuda, onnxruntime_gpu) get on machines without a GPU."""
import json
import re
import shlex
from pathlib import Path

import pytest

from evaluator.catalog.backends import discover
from evaluator.launch import docker

BACKENDS, _ = discover()
WITH_IMAGES = sorted(name for name, b in BACKENDS.items() if b.dockerfile)


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [x.strip() for x in text.splitlines() if x.strip() and not x.strip().startswith("#")]
    return [(x.split(None, 1)[0].upper(), x.split(None, 1)[1] if " " in x else "") for x in lines]


def stage(name: str, tmp_path: Path, arch: str = "amd64", cuda: bool = False) -> tuple[Path, dict]:
    # remote=True: what a target's own engine is sent (no local wheelhouse, so nothing compiles here)
    ctx = tmp_path / "ctx"
    args = docker._stage_context(BACKENDS[name], ctx, arch, remote=True, cuda=cuda, log=lambda m: None)
    return ctx, args


def test_every_backend_has_an_image_recipe():
    assert set(WITH_IMAGES) == set(BACKENDS), f"no [image] dockerfile: {sorted(set(BACKENDS) - set(WITH_IMAGES))}"


@pytest.mark.parametrize("arch,cuda", [("amd64", False), ("amd64", True), ("arm64", False)],
                         ids=["amd64-cpu", "amd64-cuda", "arm64-cpu"])
@pytest.mark.parametrize("name", WITH_IMAGES)
def test_what_a_dockerfile_copies_is_in_the_staged_context(name, arch, cuda, tmp_path):
    backend = BACKENDS[name]
    if not cuda and "cpu" not in backend.devices or {"amd64": "x86_64", "arm64": "aarch64"}[arch] not in backend.archs:
        pytest.skip(f"{name} runs on {', '.join(backend.devices)} with {', '.join(backend.archs)} only")
    ctx, args = stage(name, tmp_path, arch, cuda)
    steps = instructions(BACKENDS[name].dockerfile)
    copied = []
    for op, rest in steps:
        if op == "COPY":
            *sources, dest = shlex.split(rest)
            for source in sources:
                assert (ctx / source).exists(), f"{name}: COPY {source} is not in the staged context"
                copied.append((source.rstrip("/"), dest.rstrip("/")))
    entry = next(rest for op, rest in steps if op == "ENTRYPOINT")
    runner = Path(json.loads(entry)[-1])  # exec form: [python, /app/backends/<name>/runner.py]
    assert any(runner.is_relative_to(dest) and (ctx / src / runner.relative_to(dest)).is_file() for src, dest in copied
               if (ctx / src).is_dir()), f"{name}: the entrypoint {runner} is not copied from the context"
    declared = {rest.split("=")[0].strip() for op, rest in steps if op == "ARG"}
    assert {"BASE", *args} <= declared, f"{name}: build args {sorted({'BASE', *args} - declared)} are not declared"


@pytest.mark.parametrize("name", ["vllm_cuda", "onnxruntime_gpu", "pytorch_compile", "pytorch_quant", "llmcompressor"])
def test_a_backend_that_runs_a_siblings_runner_gets_the_sibling_in_its_image(name, tmp_path):
    ctx, _ = stage(name, tmp_path)
    sibling = re.search(r'"\.\.", "(\w+)", "runner\.py"', (BACKENDS[name].folder / "runner.py").read_text()).group(1)
    assert (ctx / "backends" / sibling / "runner.py").is_file()
    copies = [shlex.split(rest)[0].rstrip("/") for op, rest in instructions(BACKENDS[name].dockerfile) if op == "COPY"]
    assert f"backends/{sibling}" in copies, f"{name}'s Dockerfile does not copy backends/{sibling}/ into the image"


def torch_wheels(ctx: Path) -> list[str]:
    return [p.name for p in (ctx / "wheels").glob("torch-*.whl")]


def test_a_cpu_target_here_gets_this_machines_cpu_torch_wheel(tmp_path):
    ctx, args = stage("pytorch_eager", tmp_path)
    assert args == {} and len(torch_wheels(ctx)) == 1 and "+cpu" in torch_wheels(ctx)[0]


def test_a_gpu_target_gets_pypis_cuda_torch(tmp_path):
    ctx, args = stage("pytorch_eager", tmp_path, cuda=True)
    assert args == {} and torch_wheels(ctx) == []


def test_a_cpu_target_of_another_architecture_fetches_pytorchs_cpu_wheel_itself(tmp_path):
    ctx, args = stage("pytorch_eager", tmp_path, arch="arm64")
    assert args == {"TORCH_INDEX": docker.TORCH_CPU_INDEX} and torch_wheels(ctx) == []


def test_a_remote_engine_compiles_llama_cpp_for_its_own_cpu(tmp_path):
    ctx, args = stage("llamacpp", tmp_path)
    assert not (ctx / "wheels" / "WHEELHOUSE").exists() and not list((ctx / "wheels").glob("llama_cpp*"))


def test_cpu_and_gpu_images_of_one_backend_have_different_tags(tmp_path):
    cpu_ctx, cpu_args = stage("pytorch_eager", tmp_path / "a")
    gpu_ctx, gpu_args = stage("pytorch_eager", tmp_path / "b", cuda=True)
    assert docker._content_hash(cpu_ctx, "b", "amd64", cpu_args) != docker._content_hash(gpu_ctx, "b", "amd64", gpu_args)


def test_tensorrt_llm_builds_on_nvidias_image_whatever_the_targets_base():
    from evaluator.catalog import targets

    rtx = targets.resolve(["rtx3090"])[0]
    assert docker.base_image(rtx, BACKENDS["tensorrt_llm"]).startswith("nvcr.io/nvidia/tensorrt-llm/release:")
    assert docker.base_image(rtx, BACKENDS["vllm_cuda"]) == rtx.base_image == "python:3.11-slim-bookworm"

"""What a GPU run checks before it loads anything, tested on the answers a runner gives (no GPU
here): the engine's CUDA runtime against the machine's driver, as NVML reports it."""
from dataclasses import replace

import pytest

from evaluator import preflight


def engine(runtime, driver, cuda, key="cuda"):
    return {"engine": "pytorch_eager", "build": {key: runtime}, "driver": {"version": driver, "cuda": cuda}}


@pytest.mark.parametrize("runtime, driver, cuda, refused, noted", [
    ("13.0", "580.65.06", "13.0", False, False),   # matching
    ("12.8", "580.65.06", "13.0", False, False),   # newer driver: backward compatible
    ("13.0", "575.57.08", "12.9", True, False),    # a CUDA 13 runtime needs 580
    ("12.8", "520.61.05", "11.8", True, False),    # below 525: a CUDA 12 runtime does not start
    ("12.8", "535.104.05", "12.2", False, True),   # minor version compatibility: runs, without PTX JIT
])
def test_the_cuda_runtime_is_checked_against_the_driver(runtime, driver, cuda, refused, noted):
    why, note = preflight.cuda_driver(engine(runtime, driver, cuda))
    assert (why is not None) == refused and (note is not None) == noted
    if refused:
        assert driver in why and f"CUDA {runtime}" in why and "update the driver" in why


def test_vllm_reports_its_runtime_as_torch_cuda_and_unknowns_say_nothing():
    assert preflight.cuda_driver(engine("13.0", "560.35.03", "12.6", key="torch_cuda"))[0]
    assert preflight.cuda_driver({"build": {"cuda": None}, "driver": {"version": "580.1", "cuda": "13.0"}}) == (None, None)
    assert preflight.cuda_driver({"build": {"cuda": "12.8"}, "driver": {"unavailable": "no NVIDIA driver"}}) == (None, None)


class DriverNVML:
    """NVML's two system calls as documented: the version string, and CUDA as 1000*major + 10*minor."""

    def nvmlSystemGetDriverVersion(self, buf, size):
        buf.value = b"580.65.06"
        return 0

    def nvmlSystemGetCudaDriverVersion_v2(self, version):
        version.value = 13000
        return 0


def test_the_runner_reads_the_driver_as_nvml_documents_it():
    from evaluator.runner import nvml

    assert nvml.driver(DriverNVML()) == {"version": "580.65.06", "cuda": "13.0"}


def test_a_gpu_targets_decode_ceiling_is_not_this_machines_dram():
    """The bandwidth probe measures this machine's DRAM: right for a CPU target here, wrong for
    a GPU on this machine (HBM, the target's figure) and for another machine."""
    from evaluator import run
    from evaluator.catalog import targets

    local = replace(targets.resolve(["local"])[0], accelerator="cpu")
    assert run.probes_here(local)
    assert not run.probes_here(replace(local, accelerator="cuda"))
    assert not run.probes_here(targets.resolve(["docker-arm64"])[0])

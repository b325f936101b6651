"""NVML readings (evaluator/runner/nvml.py) against a library that answers the way NVML's API
reference documents its C calls: return codes, outputs written through the pointers passed.
No NVIDIA driver here; on a GPU box the same code calls libnvidia-ml.so.1 itself."""
import os

import pytest

from evaluator.runner import energy, nvml

NVML_ERROR_UNKNOWN = 999


class DocumentedNVML:
    """gpus: one dict per device: energy_mj (or an NVML error code), processes [(pid, bytes)]."""

    STRINGS = {nvml.NOT_SUPPORTED: b"Not Supported", nvml.INSUFFICIENT_SIZE: b"Insufficient Size",
               NVML_ERROR_UNKNOWN: b"Unknown Error"}

    def __init__(self, gpus):
        self.gpus = gpus
        self.process_calls = 0

    def nvmlErrorString(self, rc):
        return self.STRINGS[rc]

    def nvmlDeviceGetCount_v2(self, count):
        count.value = len(self.gpus)
        return 0

    def nvmlDeviceGetHandleByIndex_v2(self, index, handle):
        handle.value = index + 1  # an opaque non-null pointer
        return 0

    def nvmlDeviceGetTotalEnergyConsumption(self, handle, mj):
        value = self.gpus[handle.value - 1]["energy_mj"]
        if isinstance(value, tuple):  # ("error", code)
            return value[1]
        mj.value = value
        return 0

    def nvmlDeviceGetComputeRunningProcesses_v3(self, handle, count, infos):
        self.process_calls += 1
        processes = self.gpus[handle.value - 1]["processes"]
        if count.value < len(processes):  # documented: the size needed comes back with the error
            count.value = len(processes)
            return nvml.INSUFFICIENT_SIZE
        for info, (pid, used) in zip(infos, processes):
            info.pid, info.usedGpuMemory = pid, used
        count.value = len(processes)
        return 0


@pytest.fixture
def fake(monkeypatch):
    def install(gpus):
        lib = DocumentedNVML(gpus)
        monkeypatch.setattr(nvml, "_LIB", lib)
        return lib
    return install


ME = os.getpid()


def test_process_memory_is_this_processs_own_on_each_gpu_it_uses(fake):
    others = [(100000 + i, 1 << 30) for i in range(40)]  # more than the first buffer holds: asked again
    lib = fake([{"energy_mj": 0, "processes": others + [(ME, 3 << 30)]},
                {"energy_mj": 0, "processes": [(7, 5 << 30)]},
                {"energy_mj": 0, "processes": [(ME, 1 << 29)]}])
    assert nvml.process_bytes(nvml.library()) == {0: 3 << 30, 2: 1 << 29}
    assert lib.process_calls > 3


def test_hidden_process_memory_is_named_not_read_as_a_number(fake):
    fake([{"energy_mj": 0, "processes": [(ME, nvml.NOT_AVAILABLE)]}])
    with pytest.raises(nvml.Unavailable, match="hides this process's memory"):
        nvml.process_bytes(nvml.library())


def test_energy_counts_only_the_gpus_this_process_uses(fake):
    fake([{"energy_mj": 1_000_000, "processes": [(7, 1)]},
          {"energy_mj": 2_500_000, "processes": [(ME, 1)]}])
    assert energy._nvml() == ({"nvml:1": 2500.0}, None)


def test_energy_counts_every_gpu_where_nvml_cannot_see_this_process(fake):
    fake([{"energy_mj": 1_000_000, "processes": []}, {"energy_mj": 2_000_000, "processes": []}])
    assert energy._nvml() == ({"nvml:0": 1000.0, "nvml:1": 2000.0}, None)


def test_pre_volta_is_said_only_for_not_supported(fake):
    fake([{"energy_mj": ("error", nvml.NOT_SUPPORTED), "processes": []}])
    assert "Volta" in energy._nvml()[1]
    fake([{"energy_mj": ("error", NVML_ERROR_UNKNOWN), "processes": []}])
    counters, why = energy._nvml()
    assert counters == {} and "Unknown Error (NVML error 999)" in why and "Volta" not in why


def test_no_driver_says_so():
    if os.path.exists("/proc/driver/nvidia"):
        pytest.skip("this machine has an NVIDIA driver")
    nvml._LIB = None
    with pytest.raises(nvml.Unavailable, match="no NVIDIA driver"):
        nvml.library()

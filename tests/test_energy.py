"""Energy and device-memory readings on fixtures in each source's documented format: RAPL as the
kernel's powercap files lay it out (Documentation/power/powercap), NVML through a library that
answers the way NVML's API reference documents its C calls (return codes, outputs written
through the pointers passed). No RAPL and no NVIDIA driver on this VM; on a machine with them
the same code reads the real ones."""
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


def powercap(root, zones: dict) -> None:
    """zones: {"intel-rapl:0": (name, energy_uj, max_energy_range_uj)} as the kernel lays them out."""
    for zone, (name, energy_uj, range_uj) in zones.items():
        folder = root / zone
        folder.mkdir(parents=True)
        (folder / "name").write_text(name + "\n")
        (folder / "energy_uj").write_text(f"{energy_uj}\n")
        (folder / "max_energy_range_uj").write_text(f"{range_uj}\n")


def test_a_rapl_counter_that_wraps_during_the_loop_is_unwrapped_not_dropped(tmp_path, monkeypatch):
    from evaluator.measure import scenarios

    monkeypatch.setattr(energy, "POWERCAP", str(tmp_path))
    monkeypatch.setattr(energy, "_nvml", lambda: ({}, "no NVIDIA driver"))
    rng = 262_143_328_850  # a real package's max_energy_range_uj
    powercap(tmp_path, {"intel-rapl:0": ("package-0", rng - 5_000_000, rng), "intel-rapl:0:0": ("dram", 1_000_000, rng)})
    before = energy.read()
    (tmp_path / "intel-rapl:0" / "energy_uj").write_text("7000000\n")   # wrapped: 5 J before the top, 7 J after 0
    (tmp_path / "intel-rapl:0:0" / "energy_uj").write_text("3000000\n")
    after = energy.read()
    spent = scenarios._energy(before, after, tokens=100, duration_s=2.0)
    assert spent["counters"] == pytest.approx({"rapl:intel-rapl:0:package-0": 12.0, "rapl:intel-rapl:0:0:dram": 2.0})
    assert spent["joules"] == pytest.approx(14.0) and spent["joules_per_token"] == pytest.approx(0.14)
    assert spent["watts"] == pytest.approx(7.0)


def test_a_counter_without_a_known_range_that_goes_backwards_is_dropped():
    from evaluator.measure import scenarios

    spent = scenarios._energy({"joules": {"rapl:intel-rapl:0:package-0": 50.0}},
                              {"joules": {"rapl:intel-rapl:0:package-0": 10.0}}, tokens=10, duration_s=1.0)
    assert spent["counters"] == {} and spent["joules"] == 0

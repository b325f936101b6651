"""Energy and device-memory readings on fixtures in each source's documented format: RAPL as the
kernel's powercap files lay it out (Documentation/power/powercap), NVML through a library that
answers the way NVML's API reference documents its C calls (return codes, outputs written
through the pointers passed). No RAPL and no NVIDIA driver on this VM; on a machine with them
the same code reads the real ones."""
import os

import pytest

from evaluator.measure import energy as measured
from evaluator.runner import energy, nvml, power

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
    monkeypatch.setattr(energy, "POWERCAP", str(tmp_path))
    monkeypatch.setattr(energy, "_nvml", lambda: ({}, "no NVIDIA driver"))
    rng = 262_143_328_850  # a real package's max_energy_range_uj
    powercap(tmp_path, {"intel-rapl:0": ("package-0", rng - 5_000_000, rng), "intel-rapl:0:0": ("dram", 1_000_000, rng)})
    before = energy.read()
    (tmp_path / "intel-rapl:0" / "energy_uj").write_text("7000000\n")   # wrapped: 5 J before the top, 7 J after 0
    (tmp_path / "intel-rapl:0:0" / "energy_uj").write_text("3000000\n")
    after = energy.read()
    spent = measured.spent(before, after, tokens=100, duration_s=2.0)
    assert spent["counters"] == pytest.approx({"rapl:intel-rapl:0:package-0": 12.0, "rapl:intel-rapl:0:0:dram": 2.0})
    assert spent["joules"] == pytest.approx(14.0) and spent["joules_per_token"] == pytest.approx(0.14)
    assert spent["watts"] == pytest.approx(7.0)


def test_a_counter_without_a_known_range_that_goes_backwards_is_dropped_and_said():
    spent = measured.spent({"joules": {"rapl:intel-rapl:0:package-0": 50.0}},
                           {"joules": {"rapl:intel-rapl:0:package-0": 10.0}}, tokens=10, duration_s=1.0)
    assert "joules" not in spent and "went backwards" in spent["unavailable"]


def ina3221(root, channels: dict, number: int = 1) -> None:
    """channels: {n: (label, millivolts, milliamps)} as the kernel's ina3221 hwmon driver lays them
    out (Documentation/hwmon/ina3221.rst), under root/sys/class/hwmon/hwmonN."""
    folder = root / "sys" / "class" / "hwmon" / f"hwmon{number}"
    folder.mkdir(parents=True)
    (folder / "name").write_text("ina3221\n")
    for n, (label, mv, ma) in channels.items():
        (folder / f"in{n}_label").write_text(label + "\n")
        (folder / f"in{n}_input").write_text(f"{mv}\n")
        (folder / f"curr{n}_input").write_text(f"{ma}\n")


def test_a_jetson_orin_counts_its_input_rail(tmp_path):
    ina3221(tmp_path, {1: ("VDD_GPU_SOC", 5008, 1200), 2: ("VDD_CPU_CV", 5008, 480), 3: ("VIN_SYS_5V0", 5000, 900)})
    ina3221(tmp_path, {1: ("VDD_IN", 19144, 652), 2: ("NC", 0, 0), 3: ("VDDQ_VDD2_1V8AO", 5008, 150)}, number=2)
    other = tmp_path / "sys" / "class" / "hwmon" / "hwmon0"  # a temperature sensor: not a power source
    other.mkdir()
    (other / "name").write_text("cpu_thermal\n")
    rails = power.jetson_watts(str(tmp_path))
    assert "NC" not in rails and rails["VDD_IN"] == pytest.approx(19.144 * 0.652)
    watts, method = power.jetson_total(rails)
    assert watts == pytest.approx(12.481888) and "VDD_IN" in method


def test_a_jetson_without_an_input_rail_sums_its_channels(tmp_path):
    ina3221(tmp_path, {1: ("VDD_GPU_SOC", 5000, 1000), 2: ("VDD_CPU_CV", 5000, 400)})
    watts, method = power.jetson_total(power.jetson_watts(str(tmp_path)))
    assert watts == pytest.approx(7.0) and "sum of rails" in method
    assert power.jetson_watts(str(tmp_path / "elsewhere")) is None


# `vcgencmd pmic_read_adc` on a Raspberry Pi 5 (firmware 2024+): currents, then voltages
PMIC = """\
     3V7_WL_SW_A current(0)=0.10000000A
     3V3_SYS_A current(1)=0.20000000A
     VDD_CORE_A current(7)=2.00000000A
     3V7_WL_SW_V volt(8)=3.70000000V
     3V3_SYS_V volt(9)=3.30000000V
     VDD_CORE_V volt(15)=0.80000000V
     EXT5V_V volt(24)=5.12000000V
     BATT_V volt(25)=0.00000000V
"""


def test_the_pi5_pmic_sums_current_times_voltage_over_the_rails_that_report_both():
    rails = power.parse_pmic(PMIC)
    assert set(rails) == {"3V7_WL_SW", "3V3_SYS", "VDD_CORE"}, "EXT5V and BATT report no current"
    assert sum(rails.values()) == pytest.approx(0.37 + 0.66 + 1.6)

    class Done:
        returncode, stdout = 0, PMIC
    assert power.rpi_pmic_watts(run=lambda *a, **k: Done()) == rails

    def missing(*a, **k):
        raise FileNotFoundError("vcgencmd")
    assert power.rpi_pmic_watts(run=missing) is None
    assert "5 V input reports no current" in power.RPI_METHOD


def test_sampled_power_is_integrated_by_the_trapezoid_rule():
    clock = iter(range(100))
    ramp = iter(float(w) for w in range(0, 200, 2))  # 0, 2, 4 ... watts, one second apart
    sampler = power.Sampler({"sampled:x": (lambda: next(ramp), "test ramp")}, clock=lambda: float(next(clock)))
    for _ in range(4):
        sampler.sample()  # t = 0..3 s, P = 0, 2, 4, 6 W
    totals = sampler.read()["sampled:x"]  # and t = 4 s, P = 8 W
    assert totals["joules"] == pytest.approx(16.0) and totals["n"] == 5 and totals["sum_w"] == pytest.approx(20.0)


def test_a_board_sensor_becomes_a_counter_with_its_method_and_an_interval(monkeypatch):
    monkeypatch.setattr(energy, "_nvml", lambda: ({}, "no NVIDIA driver"))
    monkeypatch.setattr(energy, "POWERCAP", "/nonexistent")
    monkeypatch.setattr(energy, "_SAMPLER", [])
    watts = iter([5.0, 7.0] * 1000)
    monkeypatch.setattr(power, "sources", lambda: {"sampled:rpi5-pmic": (lambda: next(watts), power.RPI_METHOD)})
    before = energy.read()
    import time
    time.sleep(0.6)
    after = energy.read()
    energy._SAMPLER[0].stop()
    spent = measured.spent(before, after, tokens=10, duration_s=after["wall_time"] - before["wall_time"])
    assert spent["methods"] == {"sampled:rpi5-pmic": power.RPI_METHOD}
    assert spent["watts"] == pytest.approx(6.0, rel=0.2)  # alternating 5 and 7 W
    assert 0 < spent["joules_ci95"] < spent["joules"] / 2


class IdleRunner:
    """Answers energy requests from a counter drawing `watts` (the runner's side, seen from the host)."""
    def __init__(self, watts):
        self.watts, self.t = watts, 0.0

    def request(self, op, timeout_s):
        return {"joules": {"rapl:intel-rapl:0:package-0": self.watts * self.t}}


def test_idle_power_is_measured_before_the_loop_and_the_energy_above_it_reported_apart(monkeypatch):
    runner = IdleRunner(20.0)
    t = iter([0.0, 2.0])
    monkeypatch.setattr(measured.time, "monotonic", lambda: next(t))
    idle = measured.idle_watts(runner, 10, sleep=lambda s: setattr(runner, "t", runner.t + s))
    assert idle == {"rapl:intel-rapl:0:package-0": pytest.approx(20.0)}
    spent = measured.spent({"joules": {"rapl:intel-rapl:0:package-0": 0.0}},
                           {"joules": {"rapl:intel-rapl:0:package-0": 150.0}}, tokens=100, duration_s=5.0, idle_w=idle)
    assert spent["idle_watts"] == pytest.approx(20.0) and spent["joules_above_idle"] == pytest.approx(50.0)
    assert spent["joules_per_token_above_idle"] == pytest.approx(0.5) and spent["joules_ci95"] == pytest.approx(2e-6)
    assert measured.idle_watts(type("NoCounter", (), {"request": lambda self, op, t: {"joules": {}}})(), 10) is None


def test_an_external_meters_log_is_integrated_over_the_loop(tmp_path):
    log = tmp_path / "meter.csv"
    lines = ["time_s,watts"] + [f"{1000 + i / 10:.1f},{10.0 if i % 2 else 12.0}" for i in range(100)]
    log.write_text("\n".join(lines) + "\n")
    got = measured.meter(str(log), 1001.0, 1005.0, tokens=40)
    assert got["readings"] == 41 and got["joules"] == pytest.approx(44.0)
    assert got["joules_per_token"] == pytest.approx(1.1) and 0 < got["joules_ci95"] < 2
    assert "is the meter logging" in measured.meter(str(log), 2000.0, 2001.0, tokens=1)["unavailable"]


def test_the_report_and_the_export_carry_energy_with_its_interval_idle_and_meter():
    from evaluator.report import export, tables

    e = {"joules": 150.0, "joules_ci95": 10.0, "tokens": 100, "joules_per_token": 1.5, "idle_watts": 20.0,
         "joules_per_token_above_idle": 0.5, "methods": {"sampled:jetson": "Jetson INA3221 rail VDD_IN"},
         "meter": {"joules_per_token": 1.6, "joules_ci95": 5.0, "method": "external meter log m.csv"}}
    cell = {"status": "ok", "scenario": {"name": "latency"}, "metrics": {}, "energy": e, "run_id": "r",
            "model": {"name": "m"}, "backend": "b", "variant": "v", "target": {"name": "t"}}
    rows = [r for r in export.cell_rows(cell) if r["metric"] == "energy_per_token"]
    assert [(r["statistic"], r["value"]) for r in rows] == [
        ("total: Jetson INA3221 rail VDD_IN", 1.5), ("above idle (20 W idle)", 0.5), ("external meter log m.csv", 1.6)]
    assert (rows[0]["ci_low"], rows[0]["ci_high"]) == pytest.approx((1.4, 1.6))
    shown = tables._energy(export.Rows(export.cell_rows(cell)))
    assert shown.half_pct == "6.7" and "above idle" in shown.note and "INA3221" in shown.note_title


def test_a_power_log_that_does_not_exist_stops_the_run_before_anything_is_written(tmp_path):
    from conftest import run_cli

    targets = tmp_path / "targets.toml"
    targets.write_text('[metered]\ntransport = "local"\narch = "auto"\naccelerator = "none"\npower_log = "/nonexistent/meter.csv"\n')
    reports = tmp_path / "reports"
    done = run_cli("eval", "stories260k", "--targets", "metered", "--scenarios", "latency", "--reports", str(reports),
                   env={"DEPLOY_EVAL_TARGETS": str(targets)})
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: target metered: power_log /nonexistent/meter.csv does not exist: start the meter's logging first, "
        "or remove power_log from the targets file"]
    assert not reports.exists() or not list(reports.iterdir())

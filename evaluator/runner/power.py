"""Power where a device exposes watts, not joules: sampled by a thread and integrated into
counters that energy.py reads like RAPL's (standard library only).

- Jetson boards: the INA3221 monitors through the kernel's hwmon driver
  (Documentation/hwmon/ina3221.rst: in[123]_label, in[123]_input in mV, curr[123]_input in mA).
  The board's input rail (VDD_IN on Orin, POM_5V_IN on earlier modules) is the whole module; where
  no input rail is labelled, the channels are summed.
- Raspberry Pi 5: the PMIC's ADCs through `vcgencmd pmic_read_adc` (one line per reading,
  `NAME_A current(n)=0.123A` / `NAME_V volt(n)=5.1V`); power is the sum of current x voltage over
  the rails that report both. The 5 V input (EXT5V) reports only its voltage, so that sum covers
  the PMIC's output rails: conversion losses and USB/PCIe loads are outside it (said in the
  method, never hidden).

Each source is sampled at SAMPLE_HZ and integrated by the trapezoid rule; its running sums of
power and power squared come with it, so the evaluator can put an interval on the mean power of
any stretch between two readings.
"""
import glob
import os
import re
import subprocess
import threading
import time

SAMPLE_HZ = 10.0
INPUT_RAILS = ("VDD_IN", "POM_5V_IN")
_PMIC_LINE = re.compile(r"^\s*(?P<rail>\S+?)_(?P<kind>[AV])\s*(?:(?:current|volt|voltage)\(\d+\))?\s*=\s*"
                        r"(?P<value>[-+\d.eE]+)\s*[AV]\s*$")


def jetson_watts(root: str = "/") -> dict | None:
    """{rail: watts} of every INA3221 channel, or None where the board has no INA3221."""
    rails = {}
    for hwmon in sorted(glob.glob(os.path.join(root, "sys/class/hwmon/hwmon*"))):
        try:
            if open(os.path.join(hwmon, "name")).read().strip() != "ina3221":
                continue
        except OSError:
            continue
        for label in sorted(glob.glob(os.path.join(hwmon, "in[123]_label"))):
            channel = os.path.basename(label)[2]
            try:
                name = open(label).read().strip()
                millivolts = int(open(os.path.join(hwmon, f"in{channel}_input")).read())
                milliamps = int(open(os.path.join(hwmon, f"curr{channel}_input")).read())
            except (OSError, ValueError):
                continue
            if name.startswith("NC"):  # an unconnected channel
                continue
            rails[name] = millivolts * milliamps / 1e6
    return rails or None


def jetson_total(rails: dict) -> tuple[float, str]:
    """(watts, what they cover): the input rail where labelled, else the sum of the channels."""
    for name in INPUT_RAILS:
        if name in rails:
            return rails[name], f"Jetson INA3221 rail {name} (the module's input)"
    return sum(rails.values()), f"Jetson INA3221, sum of rails {', '.join(sorted(rails))} (no input rail labelled)"


def parse_pmic(text: str) -> dict:
    """{rail: watts} from `vcgencmd pmic_read_adc` output: each rail reporting both current and voltage."""
    amps, volts = {}, {}
    for line in text.splitlines():
        m = _PMIC_LINE.match(line)
        if m:
            (amps if m["kind"] == "A" else volts)[m["rail"]] = float(m["value"])
    return {rail: amps[rail] * volts[rail] for rail in sorted(amps.keys() & volts.keys())}


def rpi_pmic_watts(run=subprocess.run) -> dict | None:
    """{rail: watts} read from the Pi 5's PMIC now, or None where vcgencmd has no pmic_read_adc."""
    try:
        got = run(["vcgencmd", "pmic_read_adc"], capture_output=True, text=True, timeout=2)
    except (OSError, subprocess.SubprocessError):
        return None
    rails = parse_pmic(got.stdout) if got.returncode == 0 else {}
    return rails or None


RPI_METHOD = ("Raspberry Pi 5 PMIC (vcgencmd pmic_read_adc): sum of current x voltage over its output rails; the 5 V "
              "input reports no current, so conversion losses and USB/PCIe loads are not included")


def sources(root: str = "/", run=subprocess.run) -> dict:
    """{counter name: (read watts now, method)} for every power sensor this machine has."""
    found = {}
    if jetson_watts(root):
        def jetson():
            rails = jetson_watts(root)
            return jetson_total(rails)[0] if rails else None
        found["sampled:jetson"] = (jetson, jetson_total(jetson_watts(root))[1])
    if rpi_pmic_watts(run):
        def pmic():
            rails = rpi_pmic_watts(run)
            return sum(rails.values()) if rails else None
        found["sampled:rpi5-pmic"] = (pmic, RPI_METHOD)
    return found


class Sampler:
    """A thread reading each source at `hz` and integrating it: joules by the trapezoid rule,
    and the count, sum and sum of squares of the readings (for the mean power's interval)."""

    def __init__(self, found: dict, hz: float = SAMPLE_HZ, clock=time.monotonic):
        self.found, self.period, self.clock = found, 1.0 / hz, clock
        self.totals = {name: {"joules": 0.0, "n": 0, "sum_w": 0.0, "sum_w2": 0.0} for name in found}
        self._last = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> "Sampler":
        if self.found:  # nothing to sample: no thread
            self.sample()
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self.sample()

    def sample(self) -> None:
        for name, (read, _) in self.found.items():
            watts, now = read(), self.clock()
            if watts is None:
                continue
            with self._lock:
                t = self.totals[name]
                if name in self._last:
                    t0, w0 = self._last[name]
                    t["joules"] += (now - t0) * (w0 + watts) / 2
                self._last[name] = (now, watts)
                t["n"] += 1
                t["sum_w"] += watts
                t["sum_w2"] += watts * watts

    def read(self) -> dict:
        """{counter: its running totals}, with a fresh sample first (the reading ends a stretch)."""
        self.sample()
        with self._lock:
            return {name: dict(t) for name, t in self.totals.items()}

"""Energy counters the runner reads where it runs (standard library only).

Cumulative joules from every counter this machine exposes: Intel/AMD RAPL through the
kernel's powercap files (CPU package and DRAM domains), NVIDIA GPUs through NVML's total
energy counter (Volta and later; nvml.py, ctypes, so no package is needed), and where a board
exposes only watts (Jetson's INA3221, the Raspberry Pi 5's PMIC) the integral of its power,
sampled by a thread from the first reading on (power.py). Each counter says its method. The evaluator
reads them before and after the timed requests and divides the difference by the tokens
generated. Where nothing is exposed (VMs usually hide RAPL) the answer says why, and the
report shows no energy rather than a guess.
"""
import glob
import os
import time

from evaluator.runner import nvml, power

POWERCAP = "/sys/class/powercap"


def _rapl() -> tuple[dict, dict, str | None]:
    """({counter: joules}, {counter: joules at which it wraps to 0}, why none)."""
    counters, wraps = {}, {}
    for zone in sorted(glob.glob(f"{POWERCAP}/intel-rapl:*")):  # packages and their sub-domains (dram)
        try:
            name = open(os.path.join(zone, "name")).read().strip()
            joules = int(open(os.path.join(zone, "energy_uj")).read()) / 1e6
        except (OSError, ValueError):
            continue
        key = f"rapl:{os.path.basename(zone)}:{name}"
        counters[key] = joules
        try:  # the counter's range: it restarts from 0 past it (every few minutes to hours at full load)
            wraps[key] = int(open(os.path.join(zone, "max_energy_range_uj")).read()) / 1e6
        except (OSError, ValueError):
            pass
    if counters:
        return counters, wraps, None
    why = (f"{POWERCAP} is missing (no RAPL exposed: usual on VMs)" if not os.path.isdir(POWERCAP)
           else "RAPL energy files are not readable (root or the powercap group is needed)")
    return {}, {}, why


def _nvml() -> tuple[dict, str | None]:
    """Each GPU this process computes on (all of them where NVML cannot tell, e.g. in a container):
    a box's other GPUs, idle or busy with someone else's work, are not this measurement's energy."""
    try:
        lib = nvml.library()
        handles = dict(enumerate(nvml.devices(lib)))
        used = nvml.process_bytes(lib)
        counters = {f"nvml:{i}": nvml.energy_joules(lib, h) for i, h in handles.items() if not used or i in used}
    except nvml.Unavailable as exc:
        return {}, str(exc)
    return counters, None if counters else "NVML lists no GPU"


_SAMPLER: list = []  # the power sampler, started by the first reading where a board has sensors


def _sampled() -> tuple[dict, dict, dict]:
    """({counter: joules so far}, {counter: method}, {counter: n, sum_w, sum_w2}) of the power sensors."""
    if not _SAMPLER:
        _SAMPLER.append(power.Sampler(power.sources()).start())
    sampler = _SAMPLER[0]
    totals = sampler.read()
    return ({k: t["joules"] for k, t in totals.items()}, {k: method for k, (_, method) in sampler.found.items()},
            {k: {"n": t["n"], "sum_w": t["sum_w"], "sum_w2": t["sum_w2"]} for k, t in totals.items()})


def read() -> dict:
    """{"joules": {counter: cumulative J}, "wrap_joules": {counter: its range}, "methods": {counter:
    how it is measured}, "samples": {sampled counter: n, sum_w, sum_w2}, "wall_time": this machine's
    clock (for an external meter's log), "unavailable": reason or None}"""
    rapl, wraps, why_rapl = _rapl()
    nvml, why_nvml = _nvml()
    sampled, methods, samples = _sampled()
    counters = {**rapl, **nvml, **sampled}
    methods.update({k: "RAPL counter (the CPU's own energy model, µJ resolution)" for k in rapl})
    methods.update({k: "NVML total-energy counter (mJ resolution)" for k in nvml})
    why = None if counters else f"{why_rapl}; {why_nvml}; no Jetson INA3221 or Raspberry Pi 5 PMIC"
    return {"joules": counters, "wrap_joules": wraps, "methods": methods, "samples": samples,
            "wall_time": time.time(), "unavailable": why}

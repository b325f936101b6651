"""Energy counters the runner reads where it runs (standard library only).

Cumulative joules from every counter this machine exposes: Intel/AMD RAPL through the
kernel's powercap files (CPU package and DRAM domains), and NVIDIA GPUs through NVML's total
energy counter (Volta and later; nvml.py, ctypes, so no package is needed). The evaluator
reads them before and after the timed requests and divides the difference by the tokens
generated. Where nothing is exposed (VMs usually hide RAPL) the answer says why, and the
report shows no energy rather than a guess.
"""
import glob
import os

from evaluator.runner import nvml

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


def read() -> dict:
    """{"joules": {counter: cumulative J}, "wrap_joules": {counter: its range}, "unavailable": reason or None}"""
    rapl, wraps, why_rapl = _rapl()
    nvml, why_nvml = _nvml()
    counters = {**rapl, **nvml}
    return {"joules": counters, "wrap_joules": wraps, "unavailable": None if counters else f"{why_rapl}; {why_nvml}"}

"""Energy counters the runner reads where it runs (standard library only).

Cumulative joules from every counter this machine exposes: Intel/AMD RAPL through the
kernel's powercap files (CPU package and DRAM domains), and NVIDIA GPUs through NVML's total
energy counter (Volta and later), loaded with ctypes so no package is needed. The evaluator
reads them before and after the timed requests and divides the difference by the tokens
generated. Where nothing is exposed (VMs usually hide RAPL) the answer says why, and the
report shows no energy rather than a guess.
"""
import ctypes
import glob
import os

POWERCAP = "/sys/class/powercap"


def _rapl() -> tuple[dict, str | None]:
    counters = {}
    for zone in sorted(glob.glob(f"{POWERCAP}/intel-rapl:*")):  # packages and their sub-domains (dram)
        try:
            name = open(os.path.join(zone, "name")).read().strip()
            joules = int(open(os.path.join(zone, "energy_uj")).read()) / 1e6
        except (OSError, ValueError):
            continue
        counters[f"rapl:{os.path.basename(zone)}:{name}"] = joules
    if counters:
        return counters, None
    why = (f"{POWERCAP} is missing (no RAPL exposed: usual on VMs)" if not os.path.isdir(POWERCAP)
           else "RAPL energy files are not readable (root or the powercap group is needed)")
    return {}, why


def _nvml() -> tuple[dict, str | None]:
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return {}, "no NVIDIA driver (libnvidia-ml.so.1 not found)"
    if nvml.nvmlInit_v2() != 0:
        return {}, "NVML failed to initialise"
    count = ctypes.c_uint()
    nvml.nvmlDeviceGetCount_v2(ctypes.byref(count))
    counters = {}
    for i in range(count.value):
        handle, mj = ctypes.c_void_p(), ctypes.c_ulonglong()
        if (nvml.nvmlDeviceGetHandleByIndex_v2(i, ctypes.byref(handle)) == 0
                and nvml.nvmlDeviceGetTotalEnergyConsumption(handle, ctypes.byref(mj)) == 0):
            counters[f"nvml:{i}"] = mj.value / 1e3
    return counters, None if counters else "NVML exposes no energy counter on this GPU (pre-Volta)"


def read() -> dict:
    """{"joules": {counter: cumulative J}, "unavailable": reason or None}"""
    rapl, why_rapl = _rapl()
    nvml, why_nvml = _nvml()
    counters = {**rapl, **nvml}
    return {"joules": counters, "unavailable": None if counters else f"{why_rapl}; {why_nvml}"}

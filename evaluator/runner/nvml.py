"""NVIDIA's management library (NVML), through ctypes so the runner library needs no package.

Two readings come from it: each GPU's cumulative energy (energy.py) and the device memory this
process holds on each GPU. NVML's per-process figure counts everything the driver gave the
process, the CUDA context and the framework allocator's cached pool included, which is what
must fit on the card; the framework's own counters (torch.cuda.max_memory_allocated) see only
live tensors. Allocators keep what they reserved, so the figure read after the timed requests
is the process's high-water mark in practice.

Every failure names NVML's own error string: "not supported" is the pre-Volta energy case,
but a driver mismatch or missing permissions are something else, and say so.
"""
import ctypes
import os

NOT_SUPPORTED = 3                   # NVML_ERROR_NOT_SUPPORTED
INSUFFICIENT_SIZE = 7               # NVML_ERROR_INSUFFICIENT_SIZE: the process list grew; ask again
NOT_AVAILABLE = 0xFFFFFFFFFFFFFFFF  # NVML_VALUE_NOT_AVAILABLE: usedGpuMemory hidden (e.g. no permission)


class ProcessInfo(ctypes.Structure):
    """nvmlProcessInfo_t as nvmlDeviceGetComputeRunningProcesses_v3 fills it (NVML API 12)."""
    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong),
                ("gpuInstanceId", ctypes.c_uint), ("computeInstanceId", ctypes.c_uint)]


class Unavailable(Exception):
    """NVML cannot answer: no driver, or the call failed (the message says which and why)."""


_LIB = None


def _declare(lib: ctypes.CDLL) -> None:
    """Argument types, so plain ctypes values are passed by reference and arrays as pointers."""
    uint_p, ull_p = ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_ulonglong)
    lib.nvmlErrorString.restype = ctypes.c_char_p
    lib.nvmlDeviceGetCount_v2.argtypes = [uint_p]
    lib.nvmlDeviceGetHandleByIndex_v2.argtypes = [ctypes.c_uint, ctypes.POINTER(ctypes.c_void_p)]
    lib.nvmlDeviceGetTotalEnergyConsumption.argtypes = [ctypes.c_void_p, ull_p]
    lib.nvmlDeviceGetComputeRunningProcesses_v3.argtypes = [ctypes.c_void_p, uint_p, ctypes.POINTER(ProcessInfo)]
    lib.nvmlSystemGetDriverVersion.argtypes = [ctypes.c_char_p, ctypes.c_uint]
    lib.nvmlSystemGetCudaDriverVersion_v2.argtypes = [ctypes.POINTER(ctypes.c_int)]


def library():
    """The initialised library (loaded once per process)."""
    global _LIB
    if _LIB is None:
        try:
            lib = ctypes.CDLL("libnvidia-ml.so.1")
        except OSError:
            raise Unavailable("no NVIDIA driver (libnvidia-ml.so.1 not found)") from None
        _declare(lib)
        _check(lib, lib.nvmlInit_v2(), "nvmlInit")
        _LIB = lib
    return _LIB


def _check(lib, rc: int, call: str) -> None:
    if rc != 0:
        raise Unavailable(f"{call}: {lib.nvmlErrorString(rc).decode(errors='replace')} (NVML error {rc})")


def devices(lib) -> list:
    count = ctypes.c_uint()
    _check(lib, lib.nvmlDeviceGetCount_v2(count), "nvmlDeviceGetCount")
    handles = []
    for i in range(count.value):
        handle = ctypes.c_void_p()
        _check(lib, lib.nvmlDeviceGetHandleByIndex_v2(i, handle), f"nvmlDeviceGetHandleByIndex({i})")
        handles.append(handle)
    return handles


def driver(lib) -> dict:
    """The driver's version ("580.65.06") and the newest CUDA it supports ("13.0")."""
    text, cuda = ctypes.create_string_buffer(80), ctypes.c_int()
    _check(lib, lib.nvmlSystemGetDriverVersion(text, 80), "nvmlSystemGetDriverVersion")
    _check(lib, lib.nvmlSystemGetCudaDriverVersion_v2(cuda), "nvmlSystemGetCudaDriverVersion")
    return {"version": text.value.decode(), "cuda": f"{cuda.value // 1000}.{cuda.value % 1000 // 10}"}


def energy_joules(lib, handle) -> float:
    mj = ctypes.c_ulonglong()
    rc = lib.nvmlDeviceGetTotalEnergyConsumption(handle, mj)
    if rc == NOT_SUPPORTED:
        raise Unavailable("NVML exposes no energy counter on this GPU (it needs Volta or later)")
    _check(lib, rc, "nvmlDeviceGetTotalEnergyConsumption")
    return mj.value / 1e3


def process_bytes(lib, pid: int | None = None) -> dict[int, int]:
    """{GPU index: device bytes} for every GPU on which `pid` (this process) runs compute.
    Empty where it runs on none, or where NVML cannot see it: in a container, NVML lists the
    host's pids, which the container's own pid namespace does not show."""
    pid = os.getpid() if pid is None else pid
    held = {}
    for index, handle in enumerate(devices(lib)):
        size = 16
        while True:
            count, infos = ctypes.c_uint(size), (ProcessInfo * size)()
            rc = lib.nvmlDeviceGetComputeRunningProcesses_v3(handle, count, infos)
            if rc != INSUFFICIENT_SIZE:
                break
            size = max(count.value, size) * 2
        _check(lib, rc, f"nvmlDeviceGetComputeRunningProcesses({index})")
        for info in infos[:count.value]:
            if info.pid == pid:
                if info.usedGpuMemory == NOT_AVAILABLE:
                    raise Unavailable(f"NVML hides this process's memory on GPU {index} (no permission to read it)")
                held[index] = info.usedGpuMemory
    return held

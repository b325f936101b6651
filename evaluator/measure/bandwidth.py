"""A memory-bandwidth probe for this machine, taken beside a latency cell.

Decode speed is bound by memory bandwidth (every weight is read once per token), and on a
shared VM that bandwidth moves with the neighbours' load. So the ceiling a cell is compared
with is probed right before and right after it, not taken from a spec sheet.

The probe reads, as decoding does: one thread per CPU scans its own slice of a 512 MiB
buffer with libc's memchr for a byte that is not there (vectorized by glibc; ctypes
releases the GIL for the call), best of five passes. Standard library only.
"""
import ctypes
import os
import threading
import time

PROBE_BYTES = 512 * 2**20

_libc = ctypes.CDLL(None)
_libc.memchr.restype = ctypes.c_void_p
_libc.memchr.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]


def probe(threads: int | None = None, passes: int = 5) -> dict:
    threads = threads or os.cpu_count() or 1
    buffer = bytearray(PROBE_BYTES)  # zeros; memchr looks for 1 and reads every byte
    base = ctypes.addressof((ctypes.c_char * PROBE_BYTES).from_buffer(buffer))
    ctypes.memset(base, 0, PROBE_BYTES)  # real pages, not the kernel's shared zero page
    step = PROBE_BYTES // threads
    best = 0.0
    for _ in range(passes):
        workers = [threading.Thread(target=_libc.memchr, args=(base + i * step, 1, step)) for i in range(threads)]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, step * threads / (time.perf_counter() - t0) / 1e9)
    return {"gbs": round(best, 2), "threads": threads,
            "method": f"memchr over 512 MiB, {threads} thread(s), best of {passes}"}

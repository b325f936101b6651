"""What an NVIDIA machine offers the GPU paths, before any cell runs (stage 1 of gpu_check.sh).

Prints one JSON object: torch, CUDA and transformers versions and the card; NVML's answers
through the runner's own ctypes binding (driver, device handles, the energy counter, this
process's memory); the joules NVML counts over a few seconds of bf16 matrix products and the
power they imply; the card's device-to-device copy bandwidth; which SDPA kernels accept each dtype with grouped-query heads (as Llama's
32 query heads over 8 key/value heads); and, after a 1 GiB tensor, what PyTorch allocated and
reserved against what NVML says the process holds (the difference is the CUDA context and
cuBLAS workspaces: what a memory figure from torch.cuda alone leaves out).

    python3 benchmarks/gpu_probe.py [--seconds 3]
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from evaluator.runner import nvml  # noqa: E402

GIB = 1024 ** 3


def versions() -> dict:
    try:
        import transformers
        tf = transformers.__version__
    except ImportError as exc:
        tf = f"missing: {exc}"
    props = torch.cuda.get_device_properties(0)
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "transformers": tf, "card": props.name, "memory_gib": round(props.total_memory / GIB, 1),
            "multiprocessors": props.multi_processor_count, "capability": f"{props.major}.{props.minor}"}


def nvml_answers() -> tuple[dict, object, object]:
    """NVML's answer to each call the runner makes, as it is (or its error)."""
    out, lib, handle = {}, None, None
    try:
        lib = nvml.library()
        out["init"] = "ok"
        out["driver"] = nvml.driver(lib)
        handles = nvml.devices(lib)
        out["devices"], handle = len(handles), handles[0]
        out["energy_j"] = nvml.energy_joules(lib, handle)
    except nvml.Unavailable as exc:
        out["error"] = str(exc)
    return out, lib, handle


def energy_under_load(lib, handle, seconds: float) -> dict:
    """Joules NVML counts while bf16 matmuls keep the card busy, and the TFLOP/s they ran at."""
    n = 8192
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    e0, t0, products = nvml.energy_joules(lib, handle), time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        for _ in range(20):
            a @ b
        products += 20
        torch.cuda.synchronize()
    elapsed, joules = time.perf_counter() - t0, nvml.energy_joules(lib, handle) - e0
    return {"seconds": round(elapsed, 2), "joules": round(joules, 1), "watts": round(joules / elapsed, 1),
            "tflops": round(2 * n ** 3 * products / elapsed / 1e12, 1)}


def copy_bandwidth() -> dict:
    """Device-to-device copy of 2 GiB, bytes read plus written per second: the ceiling decode is
    compared against on this card (the datasheet's figure is a peak no copy reaches)."""
    src = torch.empty(2 * GIB, dtype=torch.uint8, device="cuda").fill_(1)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1e3
    del src, dst
    return {"gbs": round(2 * 10 * 2 * GIB / seconds / 1e9, 1)}


def sdpa_kernels() -> dict:
    """{kernel: {dtype: "ok" | the error's first line}} with 32 query heads over 8 KV heads."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F

    table = {}
    for name in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION", "MATH"):
        backend = getattr(SDPBackend, name, None)
        row = table[name.lower()] = {}
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            q = torch.randn(1, 32, 256, 64, device="cuda", dtype=dtype)
            k, v = (torch.randn(1, 8, 256, 64, device="cuda", dtype=dtype) for _ in range(2))
            try:
                if backend is None:
                    raise RuntimeError("this torch has no such SDPA backend")
                with sdpa_kernel(backend):
                    F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                torch.cuda.synchronize()
                row[str(dtype).removeprefix("torch.")] = "ok"
            except Exception as exc:  # noqa: BLE001 - the refusal's text is the answer
                row[str(dtype).removeprefix("torch.")] = str(exc).strip().splitlines()[0][:160]
    return table


def memory_views(lib) -> dict:
    torch.cuda.empty_cache()
    x = torch.empty(GIB, dtype=torch.uint8, device="cuda")
    x.fill_(1)
    torch.cuda.synchronize()
    out = {"allocated_gib": round(torch.cuda.memory_allocated() / GIB, 3),
           "reserved_gib": round(torch.cuda.memory_reserved() / GIB, 3)}
    try:
        held = nvml.process_bytes(lib) if lib else {}
        out["nvml_process_gib"] = {i: round(b / GIB, 3) for i, b in held.items()} or "NVML lists no process here"
        if held:
            out["context_gib"] = round(held[0] / GIB - out["reserved_gib"], 3)
    except nvml.Unavailable as exc:
        out["nvml_process_gib"] = str(exc)
    del x
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0, help="how long the matmuls run for the energy reading")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"error": "torch sees no CUDA device", "torch": torch.__version__}))
        return 1
    report = {"versions": versions()}
    report["nvml"], lib, handle = nvml_answers()
    report["energy"] = energy_under_load(lib, handle, args.seconds) if "energy_j" in report["nvml"] else "no NVML energy counter"
    report["copy_bandwidth"] = copy_bandwidth()
    report["sdpa"] = sdpa_kernels()
    report["memory"] = memory_views(lib)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

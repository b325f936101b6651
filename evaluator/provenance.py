"""Where a number came from: host, CPU, memory, packages, git revision."""
import functools
import hashlib
import importlib.metadata
import os
import platform
import subprocess
import sys

from evaluator.catalog.backends import REPO


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _first_line(path: str, prefix: str = "") -> str:
    try:
        with open(path) as f:
            return next((line.strip() for line in f if line.startswith(prefix)), "")
    except OSError:
        return ""


@functools.cache
def machine_fingerprint() -> str:
    """This machine as far as an engine's answers can tell: host, CPU model and instruction
    sets, kernel, GPU driver (a quality answer kept from another machine is never reused)."""
    parts = (platform.node(), platform.machine(), _cpu_model(), _first_line("/proc/cpuinfo", "flags"),
             platform.release(), str(os.cpu_count()), _first_line("/proc/driver/nvidia/version"))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


@functools.cache
def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (rev or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def host() -> dict:
    versions = {}
    for pkg in ("tokenizers", "huggingface_hub", "tqdm"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "arch": platform.machine(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
        "python": sys.version.split()[0],
        "packages": versions,
        "git_revision": git_revision(),
    }

"""Tools a runner starts while it loads (llama.cpp's converter, the ONNX export in a child):
each dies with the runner, as the runner dies with the evaluator (launch/process.py), so a killed
run leaves nothing converting or exporting behind it, and each has a deadline of its own."""
import ctypes
import os
import shutil
import signal
import subprocess
import sys

from evaluator.runner.protocol import RunnerError


def die_with_parent() -> None:
    """In a child, before exec: the kernel kills it when its parent dies, however it dies (kill -9
    included). The evaluator starts its runners with it, and a runner its build steps."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass  # not Linux: the pipe's end and a kill of the process group still reach it


# A bound of its own for a step whose runner is not killed first: the evaluator's load deadline
# (--load-timeout, 600 s by default) usually ends the runner, and with it the step, long before.
BUILD_TIMEOUT_S = 2 * 3600


def run(args: list[str], what: str, timeout_s: float = BUILD_TIMEOUT_S, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run for a build step: killed with the runner, and after timeout_s with a
    RunnerError("internal") that names the step."""
    try:
        return subprocess.run(args, preexec_fn=die_with_parent, timeout=timeout_s, **kwargs)
    except subprocess.TimeoutExpired:
        raise RunnerError("internal", f"{what} did not finish within {timeout_s:.0f} s") from None


def run_step(args: list[str], what: str) -> None:
    """A build step in a child process (`run`), its output passed on to the runner's log; one
    that fails raises RuntimeError with the end of what it said. What it allocates leaves with
    it, so a runner's memory after load is the same on a first run (which builds) as on a cached one."""
    done = run(args, what, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(done.stderr[-20000:])
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed: {done.stderr.strip()[-500:]}")


def build_folder(path: str, build) -> None:
    """A derived model folder at `path`, made by build(tmp) in a temporary folder beside it and
    renamed into place: a killed build leaves nothing that looks reusable, and a folder another
    runner finished first (a cache shared by two targets) is kept, not replaced."""
    tmp = f"{path}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        build(tmp)
        if not os.path.isfile(os.path.join(path, "artifact.json")):
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))

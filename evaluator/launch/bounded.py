"""Every tool the evaluator runs (pip, docker, ssh, tar) runs under a deadline.

`run` is subprocess.run with two differences: the child gets its own process group, and when
the deadline passes, or the evaluator is interrupted (Ctrl-C) or fails while waiting, the whole
group is killed (pip's compiler processes, tar's children), then Overdue says what took too long.
"""
import os
import signal
import subprocess

# Deadlines, in seconds, for the kinds of work the evaluator waits on.
QUICK_S = 60            # a docker or ssh command that answers at once (inspect, test -f, mkdir)
DOWNLOAD_S = 1800       # pip download of a wheel, copying a model to a remote host
BUILD_S = 3600          # an environment or image build (llama.cpp compiles ~10 min on 2 cores)
REAP_S = 30             # a killed process's exit, waited for


class Overdue(RuntimeError):
    pass


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=REAP_S)
    except subprocess.TimeoutExpired:
        pass  # unkillable (uninterruptible sleep): nothing more can be done from here


def run(argv: list[str], timeout_s: float, what: str, input: str | bytes | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run argv to completion within timeout_s; Overdue (the group killed) when it does not."""
    proc = subprocess.Popen(argv, start_new_session=True, stdin=kwargs.pop("stdin", subprocess.PIPE if input is not None else None),
                            **_outputs(kwargs))
    try:
        out, err = proc.communicate(input, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise Overdue(f"{what} did not finish within {timeout_s:g} s; stopped") from None
    except BaseException:
        kill_group(proc)
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _outputs(kwargs: dict) -> dict:
    if kwargs.pop("capture_output", False):
        kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return kwargs

"""One runner process seen from the host: send a request, wait for its answer under a deadline.

The evaluator owns every deadline. A reader thread turns the child's stdout into a queue, so
waiting is a blocking get with a timeout (no busy-waiting); at expiry the runner's whole
process group is killed. Every way a runner can fail becomes a RunnerFailure with exactly
one cell status and a reason a person can act on.
"""
import json
import os
import queue
import signal
import subprocess
import threading
import time
import weakref
from pathlib import Path

from evaluator.launch import answers
from evaluator.runner.child import die_with_parent
from evaluator.runner.protocol import PROTOCOL_VERSION

REAP_S = 30  # waiting for a runner that was told to go, or killed
PATIENCE_S = 30  # a wait for an answer longer than this is reported as it goes (RunnerProcess.waiting)
_LIVE = weakref.WeakSet()  # every runner not yet closed: what Ctrl-C must take down with the run


OWNER_ENV = "DEPLOY_EVAL_EVALUATOR_PID"


def kill_all() -> None:
    """Kill every live runner of this evaluator (Ctrl-C): their cells end now, not when done."""
    for runner in list(_LIVE):
        runner.kill()

# Typed runner errors -> cell status. bad_request and internal mean the backend is broken
# for this cell: the cell fails with the runner's own message.
ERROR_STATUS = {"out_of_memory": "out-of-memory", "unsupported": "unsupported",
                "bad_request": "failed", "internal": "failed"}


class RunnerFailure(Exception):
    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class RunnerProcess:
    # Where the runner writes what it derives from models; None: the evaluator's own cache.
    artifact_cache: str | None = None

    def see(self, path: Path) -> str:
        """A host path as the runner sees it (a container overrides this: its mounts)."""
        return str(path)

    def __init__(self, argv: list[str], log_path: Path, env: dict | None = None, cwd: Path | None = None,
                 startup_timeout_s: float = 120.0):
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.argv = argv
        env = dict(os.environ if env is None else env, **{OWNER_ENV: str(os.getpid())})  # whose runner it is
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
            bufsize=1, env=env, cwd=cwd, start_new_session=True,  # own process group: killable whole
            preexec_fn=die_with_parent,  # the kernel kills the runner when this evaluator dies, kill -9 included
        )
        _LIVE.add(self)
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._next_id = 0
        self.cell_deadline: float | None = None  # time.monotonic() by which the whole cell must end
        self.waiting = None  # called (what, seconds) every PATIENCE_S of a long wait for an answer
        hello = self._parse(self._next_line(startup_timeout_s, "startup"), "startup")
        if hello.get("event") != "hello" or hello.get("protocol") != PROTOCOL_VERSION:
            self.kill()
            raise RunnerFailure("protocol-error", f"expected a protocol {PROTOCOL_VERSION} hello line, got {hello!r}")

    def _read(self):
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)  # end of stream: the runner closed stdout or died

    def _next_line(self, timeout_s: float, what: str) -> str:
        began = time.monotonic()
        while True:
            left = began + timeout_s - time.monotonic()
            try:
                line = self._lines.get(timeout=max(0.0, min(left, PATIENCE_S) if self.waiting else left))
                break
            except queue.Empty:
                if left > PATIENCE_S and self.waiting:  # a long load (a compile, an export): say it is still going
                    self.waiting(what, time.monotonic() - began)
                    continue
                self.kill()
                raise RunnerFailure("timeout", f"no answer to {what} within {timeout_s:g} s; runner killed") from None
        if line is None:
            code = self._reap()
            how = ("closed its output but did not exit" if code is None else
                   f"killed by signal {-code}" if code < 0 else f"exited with code {code}")
            raise RunnerFailure("crashed", f"runner {how} during {what}")
        return line

    def _parse(self, line: str, what: str) -> dict:
        try:
            msg = json.loads(line)
            if isinstance(msg, dict):
                return msg
        except json.JSONDecodeError:
            pass
        self.kill()
        raise RunnerFailure("protocol-error", f"runner answered {what} with a line that is not a JSON object: {line[:120]!r}")

    def request(self, op: str, timeout_s: float, **args) -> dict:
        """Send one request and return its result, or raise RunnerFailure. The wait is the
        request's own deadline or what is left of the cell's, whichever ends first."""
        what = op
        if self.cell_deadline is not None and op != "shutdown":
            left = self.cell_deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise RunnerFailure("timeout", f"the cell's deadline passed before {op}; runner killed")
            if left < timeout_s:
                timeout_s, what = left, f"{op} (the rest of the cell's deadline)"
        self._next_id += 1
        try:
            self.proc.stdin.write(json.dumps({"id": self._next_id, "op": op, **args}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            code = self._reap()
            raise RunnerFailure("crashed", f"runner exited with code {code} before {op}") from None
        msg = self._parse(self._next_line(timeout_s, what), op)
        if msg.get("id") != self._next_id:
            self.kill()
            raise RunnerFailure("protocol-error", f"answer to {op} carries id {msg.get('id')!r}, expected {self._next_id}")
        if msg.get("ok"):
            try:
                return answers.check(op, msg.get("result", {}), args)
            except answers.Malformed as exc:
                raise RunnerFailure("protocol-error", f"malformed answer to {op}: {exc}") from None
        error = msg.get("error") or {}
        raise RunnerFailure(ERROR_STATUS.get(error.get("type"), "protocol-error"),
                            f"{op}: {error.get('type', '?')}: {error.get('message', '')}")

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._reap()

    def _reap(self) -> int | None:
        """The runner's exit code, waited for under a deadline (None if it will not go)."""
        try:
            return self.proc.wait(timeout=REAP_S)
        except subprocess.TimeoutExpired:
            return None

    def close(self):
        """Polite shutdown, then make sure: nothing the runner started outlives the cell."""
        if self.proc.poll() is None:
            try:
                self.request("shutdown", timeout_s=10)
            except RunnerFailure:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.kill()
        _LIVE.discard(self)
        self._log.close()

    def log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

"""One measuring run per machine, and none beside a dead run's runners.

A lock (flock on a per-user file) is held for a whole eval: a second eval on this machine is
refused, since timing two at once measures both. Before measuring, the machine is searched for
runners whose evaluator is gone (every runner carries its evaluator's pid in its environment,
process.OWNER_ENV): the kernel kills a runner when its evaluator dies (PR_SET_PDEATHSIG), so
these are rare, but one that survived would hold memory and CPU beside the new measurements,
so the run refuses to start and names them.

Containers are found the same way, on each Docker engine a run first uses: every measurement
container carries its evaluator's host and pid in a label (EVALUATOR_LABEL). One whose
evaluator is gone, or that has stopped, is removed; one still running for a live evaluator
(another run on that engine, or one on another machine, which cannot be checked from here)
makes this run refuse that engine, naming it.
"""
import fcntl
import os
import re
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

from evaluator.errors import UserError
from evaluator.launch.process import OWNER_ENV

LOCK = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()) / f"deploy-eval-{os.getuid()}.lock"
EVALUATOR_LABEL = "deploy-eval.evaluator"  # "<hostname>/<pid>" of the evaluator that started a container
_OWNER = re.compile(rb"(?:^|\0)" + OWNER_ENV.encode() + rb"=(\d+)(?:\0|$)")


def orphans() -> list[tuple[int, str]]:
    """(pid, command line) of every runner process whose evaluator no longer exists."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            owner = _OWNER.search((proc / "environ").read_bytes())
            if owner and not Path(f"/proc/{owner.group(1).decode()}").exists():
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                found.append((int(proc.name), cmd[:160]))
        except OSError:  # gone meanwhile, or another user's
            continue
    return found


@contextmanager
def hold_machine(what: str):
    """Hold this machine for one eval (`what` says which, to whoever is refused)."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise UserError(f"another deploy-eval run is measuring on this machine ({lock.read().strip() or 'unknown'}): "
                            "timing beside it would measure both; wait for it to end, or stop it") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}, {what}")
        lock.flush()
        stale = orphans()
        if stale:
            raise UserError(f"runners of a run whose evaluator died still hold this machine: "
                            f"{'; '.join(f'pid {pid}: {cmd}' for pid, cmd in stale)}; stop them "
                            f"(kill -9 {' '.join(str(pid) for pid, _ in stale)}) and run again")
        yield


def container_label() -> str:
    return f"{EVALUATOR_LABEL}={socket.gethostname()}/{os.getpid()}"


def sweep_containers(engine) -> list[str]:
    """Remove the containers of dead or finished runs from `engine` (a launch.docker.DockerEngine);
    return their names. Raises UserError naming the containers a live run still holds there."""
    listed = engine.run("ps", "-a", "--filter", f"label={EVALUATOR_LABEL}",
                        "--format", f'{{{{.Names}}}}\t{{{{.State}}}}\t{{{{.Label "{EVALUATOR_LABEL}"}}}}')
    if listed.returncode != 0:
        raise UserError(f"cannot list containers on {engine.where()}: {listed.stderr.strip()[-300:]}")
    gone, held = [], []
    for line in listed.stdout.splitlines():
        name, state, owner = (line.split("\t") + ["", ""])[:3]
        host, _, pid = owner.partition("/")
        ours = host == socket.gethostname() and pid.isdigit()
        if ours and int(pid) == os.getpid():
            continue
        if state != "running" or (ours and not Path(f"/proc/{pid}").exists()):
            gone.append(name)
        else:
            held.append(f"{name} (evaluator {owner})")
    if gone:
        engine.run("rm", "-f", *gone)
    if held:
        raise UserError(f"{engine.where()} is running another deploy-eval run's containers: {', '.join(held)}; "
                        f"timing beside them would measure both: wait for that run, or `docker rm -f` them")
    return gone

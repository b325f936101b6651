"""The ssh transport: a remote machine without Docker (a GPU cluster node where users cannot run
containers, a lab box) runs each runner with its own interpreter, `ssh host PYTHON runner.py`,
speaking the same JSON lines over the SSH channel.

Which interpreter: the target's `python` table in the targets file (per backend, or `default`),
fingerprinted once in preflight the way --python is (its version and packages), recorded in the
result and part of each cell's key. What travels, each once and trusted by its content (every
file's sha256, as ssh-docker's models): the runner library with the backend's folder, to
~/.cache/deploy-eval/runners/<hash>, and the model, to ~/.cache/deploy-eval/models/<hash>.
Derived artifacts (exports, quantizations) stay there too, in artifacts-<arch> (mode 700).

A runner's process group is written to ~/.cache/deploy-eval/run/<evaluator host>_<pid>_<name>.pid,
so a deadline kills it on its machine (`kill -KILL -- -PGID`), not just the local ssh client; if
the evaluator dies, its ssh client dies with it and the runner sees its input end. The next run
on that host kills what a dead evaluator left, and refuses while a live one's runner is there.
"""
import hashlib
import os
import re
import secrets
import shlex
import socket
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from evaluator.catalog.backends import Backend
from evaluator.errors import UserError
from evaluator.launch import bounded, docker, shipping
from evaluator.launch.process import OWNER_ENV, RunnerProcess

RUNS = f"{shipping.REMOTE_CACHE}/run"  # pid files of the runners on that machine, under the SSH user's home


@dataclass(frozen=True)
class Placement:
    """Where a runner of this backend finds its library, the model and the artifact cache there."""
    backend: Backend
    home: str
    lib: str            # the shipped runner library
    model_host: Path    # the model's folder on this machine
    model_remote: str   # the same folder there
    cache_remote: str


_PREPARED: dict[tuple, "Placement | shipping.ImageFailed"] = {}  # once per backend, target and model in a run


def interpreter(target, path: str) -> str:
    """A fingerprint of `path` on the target (its version and packages, as preflight.interpreter
    makes one here), or one line saying it does not start there."""
    from evaluator.preflight import PROBE

    what = f"target {target.name}: python {path} on {target.host}"
    try:
        got = bounded.run(docker.DockerEngine(target).ssh(f"{shlex.quote(path)} -c {shlex.quote(PROBE)}", 10),
                          bounded.QUICK_S, what, capture_output=True, text=True)
    except bounded.Overdue as exc:
        raise UserError(f"{what}: {exc}") from None
    if got.returncode != 0:
        raise UserError(f"{what} does not start ({(got.stderr.strip().splitlines() or ['no message'])[-1]})")
    return f"python {got.stdout.split()[0]}, sha256 {hashlib.sha256(got.stdout.encode()).hexdigest()[:16]}"


def prepare(backend: Backend, target, model_folder: Path, sha256: str, local_cache: Path, log=print) -> Placement:
    """The runner library and the model shipped (or found), the artifact cache made, leftovers of
    dead runs killed: once per run for each backend, target and model (a failure too)."""
    key = (backend.name, target.name, str(model_folder), sha256)
    if key not in _PREPARED:
        try:
            _PREPARED[key] = _prepare(backend, target, model_folder, sha256, local_cache, log)
        except shipping.ImageFailed as exc:
            _PREPARED[key] = exc
    done = _PREPARED[key]
    if isinstance(done, shipping.ImageFailed):
        raise done
    return done


def _prepare(backend: Backend, target, model_folder: Path, sha256: str, local_cache: Path, log) -> Placement:
    engine = docker.DockerEngine(target)
    who = replace(shipping.owner(engine), chown=False)  # the runner runs as the SSH user: the cache is its own
    for name in sweep(engine, who.home):
        log(f"killed {name} on {engine.host}, a runner of a run whose evaluator is gone")
    with tempfile.TemporaryDirectory(prefix=f"deploy-eval-lib-{backend.name}-") as tmp:
        docker.stage_runner_lib(backend, Path(tmp))
        digest = hashlib.sha256(shipping.manifest(Path(tmp)).encode()).hexdigest()[:16]
        lib = shipping.ship_folder(engine, Path(tmp), f"{who.home}/{shipping.REMOTE_CACHE}/runners/{digest}", who, log)
    model = shipping.ship_model(engine, model_folder, sha256, who, log)
    return Placement(backend, who.home, lib, model_folder, model, shipping.artifact_cache(engine, local_cache, target.arch, who))


def _pid_file(home: str, name: str) -> str:
    return f"{home}/{RUNS}/{name}.pid"


def sweep(engine, home: str) -> list[str]:
    """Kill the runners on the engine's machine whose evaluator (on this machine) is gone; return
    their names. Raises UserError naming a live run's runner still there: timing beside it would
    measure both."""
    listed = shipping.remote(engine, f"{shipping.remote_cache(home)}mkdir -p {home}/{RUNS} && cd {home}/{RUNS} && for f in *.pid; do "
                                    '[ -f "$f" ] && kill -0 -- -"$(cat "$f")" 2>/dev/null && echo "${f%.pid}" '
                                    '|| rm -f "$f"; done; true', bounded.QUICK_S)
    if listed.returncode != 0:
        raise shipping.ImageFailed(f"cannot list runners on {engine.host}: {listed.stderr.strip()[-300:]}")
    gone, held = [], []
    for name in listed.stdout.split():
        host, pid = (name.split("_") + ["", ""])[:2]
        if host == _host() and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            gone.append(name)
        else:
            held.append(name)
    for name in gone:
        _kill(engine, _pid_file(home, name))
    if held:
        raise shipping.ImageFailed(f"{engine.host} is running another deploy-eval run's runners ({', '.join(held)}): "
                                 f"timing beside them would measure both; wait for that run, or stop them")
    return gone


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())


def _kill(engine, pid_file: str) -> None:
    """Best effort: the runner's whole process group on its machine, then its pid file."""
    try:
        shipping.remote(engine, f'[ -f {pid_file} ] && kill -KILL -- -"$(cat {pid_file})" 2>/dev/null; rm -f {pid_file}',
                       bounded.QUICK_S)
    except shipping.ImageFailed:
        pass  # the host does not answer: the next run's sweep finds it


class SshRunner(RunnerProcess):
    """A RunnerProcess whose process is `ssh host PYTHON runner.py`: killed there by its process
    group; the model and the artifact cache are the shipped copies."""

    def __init__(self, engine, placement: Placement, pid_file: str, *args, **kwargs):
        self.engine, self.placement, self.pid_file = engine, placement, pid_file
        self.artifact_cache = placement.cache_remote
        super().__init__(*args, **kwargs)

    def see(self, path: Path) -> str:
        host = self.placement.model_host
        if path == host or host in path.parents:
            return self.placement.model_remote + ("" if path == host else f"/{path.relative_to(host)}")
        raise ValueError(f"{path} was not shipped to {self.engine.host}")

    def kill(self):
        _kill(self.engine, self.pid_file)
        super().kill()


def start(placement: Placement, target, python: str, log_path: Path, cell_id: str, startup_timeout_s: float) -> SshRunner:
    """The runner, started on the target with its interpreter; its process group leads the SSH
    session (sshd starts each command in a session of its own), so the group is the shell's pid."""
    engine = docker.DockerEngine(target)
    name = f"{_host()}_{os.getpid()}_{re.sub(r'[^A-Za-z0-9.-]', '-', cell_id[:60])}-{secrets.token_hex(3)}"
    pid_file = _pid_file(placement.home, name)
    b = placement.backend
    runner = f"{placement.lib}/backends/{b.name}/{b.runner.relative_to(b.folder)}"  # as stage_runner_lib laid it out
    env = {"DEPLOY_EVAL_RUNNER_LIB": placement.lib, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
           OWNER_ENV: str(os.getpid())}
    command = (f"cd {placement.lib} && echo $$ > {pid_file} && exec env "
               + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
               + f" {shlex.quote(python)} {shlex.quote(runner)}")
    return SshRunner(engine, placement, pid_file, engine.ssh(command), log_path, startup_timeout_s=startup_timeout_s)

"""Shared fixtures: the repo's real backends, their real environments, the real model."""
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

# The tests build their derived models (ONNX exports, GGUF quantizations) in a cache of their own,
# set before the evaluator is imported (store.ARTIFACTS reads it): never the user's, never the repo.
os.environ["DEPLOY_EVAL_CACHE"] = tempfile.mkdtemp(prefix="deploy-eval-test-artifacts-")

from evaluator import envs  # noqa: E402  (after the cache is set)
from evaluator.catalog import backends  # noqa: E402
from evaluator.launch import local  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STORIES = REPO / "data" / "stories260k"
EXPECTED_GREEDY = (STORIES / "expected_greedy_t0_256.txt").read_text(encoding="utf-8").rstrip("\n")


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(os.environ["DEPLOY_EVAL_CACHE"], ignore_errors=True)


def pytest_terminal_summary(terminalreporter):
    """Name each skipped suite and what would enable it: a count alone hides a missing package."""
    groups = {}
    for rep in terminalreporter.stats.get("skipped", []):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        key = (rep.nodeid.split("::")[0], reason.removeprefix("Skipped: "))
        groups[key] = groups.get(key, 0) + 1
    if groups:
        terminalreporter.section("skipped suites (`just system-deps` installs the packages they need)")
        for (suite, reason), n in sorted(groups.items()):
            terminalreporter.write_line(f"{suite}: {n} skipped: {reason}")


def runners_of(evaluator_pid: int, wait_s: float = 5.0) -> list[int]:
    """Live (not zombie) processes started for the evaluator `evaluator_pid`, after waiting up to
    wait_s for them to go."""
    import time

    from evaluator.launch.process import OWNER_ENV
    mark = f"{OWNER_ENV}={evaluator_pid}".encode()
    deadline = time.monotonic() + wait_s
    while True:
        alive = []
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and mark in (proc / "environ").read_bytes().split(b"\0") \
                        and (proc / "stat").read_text().split(")")[-1].split()[0] != "Z":
                    alive.append(int(proc.name))
            except OSError:
                continue
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def holding(folder: Path) -> list[int]:
    """Live processes with a file open under `folder` (a runner holds its log there)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "stat").read_text().split(")")[-1].split()[0] != "Z" and any(
                    str(fd.readlink()).startswith(str(folder)) for fd in (proc / "fd").iterdir()):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.fixture(scope="session")
def all_backends():
    good, broken = backends.discover()
    assert not broken, f"broken manifests: {broken}"
    return good


@contextmanager
def start_runner(name: str, tmp_path: Path, startup_timeout_s: float = 180):
    backend = backends.discover()[0][name]
    runner = local.start(backend, envs.python_for(backend), tmp_path / f"{name}.log", startup_timeout_s)
    try:
        yield runner
    finally:
        runner.close()


def run_cli(*args, env=None, timeout=900) -> subprocess.CompletedProcess:
    """The evaluator as a user runs it, in a child process. Each call starts with no quality
    answers kept from other tests' runs (score/reuse.py), unless `env` names a folder for them."""
    fresh = {"DEPLOY_EVAL_ANSWERS": tempfile.mkdtemp(prefix="answers-", dir=os.environ["DEPLOY_EVAL_CACHE"])}
    full_env = {**os.environ, **fresh, **(env or {})}
    return subprocess.run([sys.executable, "-m", "evaluator", *args], cwd=REPO, capture_output=True,
                          text=True, env=full_env, timeout=timeout)


SSHD = Path("/usr/sbin/sshd")


@contextmanager
def sshd_on_loopback(d: Path, port: int, extra_config: str = ""):
    """An OpenSSH server on 127.0.0.1:port, key-only, with fresh host and client keys in d;
    yields the ssh options that reach it as root with its host key known."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client_key")], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} " + (d / "host_key.pub").read_text())
    (d / "sshd_config").write_text(f"""ListenAddress 127.0.0.1
Port {port}
HostKey {d / 'host_key'}
AuthorizedKeysFile {d / 'authorized_keys'}
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PidFile {d / 'sshd.pid'}
""" + extra_config)
    Path("/run/sshd").mkdir(exist_ok=True)
    server = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(d / "sshd_config")], stderr=open(d / "sshd.log", "w"))
    options = ["-p", str(port), "-i", str(d / "client_key"), "-o", f"UserKnownHostsFile={d / 'known_hosts'}"]
    for _ in range(50):
        if subprocess.run(["ssh", "-o", "BatchMode=yes", *options, "root@127.0.0.1", "true"], capture_output=True).returncode == 0:
            break
        time.sleep(0.2)
    try:
        yield options
    finally:
        server.terminate()
        server.wait(timeout=10)


def docker_script(name: str, *args: str) -> None:
    """Run one of docker/*.sh (start the engine, build a base, register qemu); fail the test with its stderr."""
    proc = subprocess.run(["bash", str(REPO / "docker" / name), *args], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.fixture(scope="session")
def docker_engine():
    """deploy-eval's own Docker engine, running, with the offline base for this machine."""
    from evaluator.launch import docker

    docker_script("dockerd.sh")
    docker_script("base.sh")
    return docker.DockerEngine()

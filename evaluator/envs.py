"""Backend environments: one virtual environment per backend, built from its own requirements.

Backends pin conflicting versions (vLLM, TensorRT and llama.cpp never share a torch), so each
gets .venvs/<backend>/, made from backends/<backend>/<requirements> alone and rebuilt when
that file changes. A backend without requirements is stdlib-only and runs under the
evaluator's own interpreter.
"""
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from evaluator.catalog.backends import REPO, Backend
from evaluator.hardlinks import share_identical
from evaluator.launch import bounded

VENVS = REPO / ".venvs"
WHEELS = REPO / ".cache" / "wheels"


class EnvironmentFailed(Exception):
    """pip could not build a backend's environment; the message ends with pip's last lines."""


def python_for(backend: Backend, log=print) -> Path:
    """The interpreter that runs this backend's runner, building its environment if needed (a
    prepared one the user gave with --python is used as it is: nothing is built)."""
    if backend.given_python:
        return Path(backend.given_python[0])
    if backend.requirements is None:
        return Path(sys.executable)
    venv = VENVS / backend.name
    python = venv / "bin" / "python"
    stamp = venv / ".requirements.sha256"
    build_env = build_flags(backend)
    # The stamp covers the build flags and the post_install script too: changing either rebuilds.
    post = backend.post_install.read_bytes() if backend.post_install else b""
    want = hashlib.sha256(backend.requirements.read_bytes() + repr(sorted(build_env.items())).encode() + post).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == want:
        return python
    shutil.rmtree(venv, ignore_errors=True)
    logfile = VENVS / f"{backend.name}.log"
    log(f"setting up the {backend.name} environment in .venvs/{backend.name} from "
        f"{backend.requirements.relative_to(REPO)} (once; pip's log: {logfile.relative_to(REPO)})")
    VENVS.mkdir(exist_ok=True)
    # --no-compile: byte-compiling every module of torch took 30 of pip's 46 s per environment;
    # a runner compiles only what it imports, once, on its first start (launch/local.py).
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-compile", "-r",
           str(backend.requirements)]
    house = wheelhouse(backend, log=log)
    if house:  # compiled once, shared with the backend's image
        pip[5:5] = ["--no-index", "--find-links", str(house)]
    # A post_install that needs what was compiled (llamacpp keeps its sources for llama-server)
    # finds the wheelhouse's sources and build flags where an image build finds them too.
    post_env = dict(os.environ, DEPLOY_EVAL_SDISTS=str(house / "sdists")) if house else None
    with open(logfile, "w") as out:
        steps = [([sys.executable, "-m", "venv", str(venv)], None), (pip, None)]
        if backend.post_install:  # e.g. fetch a converter, remove what pip dragged in
            steps.append(([str(python), str(backend.post_install)], post_env))
        for step, env in steps:
            if _step(step, bounded.BUILD_S, f"building .venvs/{backend.name}", out, venv, env=env) != 0:
                tail = logfile.read_text().strip().splitlines()[-3:]
                shutil.rmtree(venv, ignore_errors=True)
                raise EnvironmentFailed(f"building .venvs/{backend.name} failed: {' | '.join(tail)}")
    saved = share_identical(venv, [v for v in VENVS.iterdir() if v.is_dir()])
    if saved:
        log(f"  {saved / 1e9:.1f} GB of it stored once with the other environments (identical files hard-linked)")
    stamp.write_text(want)  # last: a half-built environment has no stamp and is rebuilt
    return python


def build_flags(backend: Backend, arch: str | None = None) -> dict:
    """The manifest's build variables for `arch`. Built for this machine, each instruction-set
    option the manifest ties to a CPU flag ([environment.cpu_features]) is switched OFF where
    this CPU lacks the flag: a binary built with AVX-512 dies with SIGILL on a CPU without it."""
    arch = arch or platform.machine()
    flags = {k: str(v) for k, v in backend.build_env.get(arch, {}).items()}
    features = backend.cpu_features.get(arch, {})
    if features and arch == platform.machine():
        have = cpu_flags()
        for key, value in flags.items():
            for option, needs in features.items():
                if needs not in have:
                    value = value.replace(f"-D{option}=ON", f"-D{option}=OFF")
            flags[key] = value
    return flags


def cpu_flags() -> set[str]:
    """This CPU's instruction-set flags as the kernel lists them (x86: 'flags', arm: 'Features')."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.split(":")[0].strip() in ("flags", "Features"):
            return set(line.split(":", 1)[1].split())
    return set()


def wheelhouse(backend: Backend, log=print) -> Path | None:
    """For a backend that compiles from source ([environment.build_env] for this machine):
    every wheel its requirements need, built once with those flags into .cache/wheels/ and
    reused by its virtual environment and by its Docker image, so the slow compile happens
    once per machine, not once per consumer. None for a backend with nothing to compile."""
    flags = build_flags(backend)
    if not flags or backend.requirements is None:
        return None
    key = hashlib.sha256(backend.requirements.read_bytes() + repr(sorted(flags.items())).encode()).hexdigest()[:16]
    house = WHEELS / f"{backend.name}-{platform.machine()}-{key}"
    if house.is_dir():
        _record_flags(house, flags)
        return house
    tmp = house.with_name(house.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    logfile = house.with_name(house.name + ".log")
    log(f"building {backend.name}'s wheels once into {house.relative_to(REPO)} (compiles from source; log: "
        f"{logfile.relative_to(REPO)})")
    log(f"  build flags: {' '.join(f'{k}={v}' for k, v in flags.items())}")
    # --no-cache-dir: pip's wheel cache ignores build flags, so a cached wheel could carry old ones.
    step = [sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-cache-dir",
            "-r", str(backend.requirements), "-w", str(tmp)]
    with open(logfile, "w") as out:
        if _step(step, bounded.BUILD_S, f"building {backend.name}'s wheels", out, tmp, env=dict(os.environ, **flags)) != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tail = logfile.read_text().strip().splitlines()[-3:]
            raise EnvironmentFailed(f"building {backend.name}'s wheels failed: {' | '.join(tail)}")
        # The sources of what was compiled here (a wheel tagged linux_<arch>, not manylinux):
        # installers such as llamacpp's post_install read files that only the sdist ships.
        for wheel in tmp.glob(f"*-linux_{platform.machine()}.whl"):
            name, version = wheel.name.split("-")[:2]
            step = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
                    "--no-binary", name, f"{name}=={version}", "-d", str(tmp / "sdists")]  # not :all:: build deps stay wheels
            if _step(step, bounded.DOWNLOAD_S, f"fetching the sources of {name}", out, tmp) != 0:
                shutil.rmtree(tmp, ignore_errors=True)
                raise EnvironmentFailed(f"fetching the sources of {name} {version} failed: see {logfile}")
    _record_flags(tmp, flags)
    os.replace(tmp, house)  # last: a half-built wheelhouse is never reused
    return house


def _record_flags(house: Path, flags: dict) -> None:
    """The flags the wheels were compiled with, beside their sources (sdists/BUILD_FLAGS.json):
    what builds more from those sources (llamacpp's llama-server) builds it the same way."""
    path = house / "sdists" / "BUILD_FLAGS.json"
    if path.parent.is_dir() and not path.is_file():
        path.write_text(json.dumps(flags, sort_keys=True) + "\n")


def _step(argv: list, timeout_s: float, what: str, out, leftover: Path, **kwargs) -> int:
    """One build step under its deadline, logged to `out`; an overdue one leaves nothing half-built."""
    try:
        return bounded.run(argv, timeout_s, what, stdout=out, stderr=subprocess.STDOUT, **kwargs).returncode
    except bounded.Overdue as exc:
        shutil.rmtree(leftover, ignore_errors=True)
        raise EnvironmentFailed(str(exc)) from None


def describe(python: Path) -> str:
    return str(python.relative_to(REPO)) if python.is_relative_to(REPO) else str(python)


def on_target(backends: list[Backend], target) -> list[Backend]:
    """The backends as they run on `target`: with the interpreter its targets entry names for
    each (python = {backend = PATH} or default), fingerprinted once per path; --python (a path on
    this machine) wins on a local target and means nothing on an ssh one."""
    if target.transport not in ("local", "ssh"):
        return backends
    from evaluator.launch import ssh
    from evaluator.preflight import interpreter

    out, seen = [], {}
    for b in backends:
        path = target.python_for(b.name)
        if target.transport == "ssh":
            b = replace(b, given_python=())
        if path and not b.given_python:
            if path not in seen:
                what = f"target {target.name}: python {path}"
                seen[path] = ssh.interpreter(target, path) if target.transport == "ssh" else interpreter(what, Path(path))
            b = replace(b, given_python=(path, seen[path]))
        out.append(b)
    return out


def given(backends: list[Backend], pythons: list[str]) -> list[Backend]:
    """The backends with the interpreters given as --python BACKEND=PATH, each checked once: it
    must start, and what it holds (Python version, every installed package) becomes part of
    the backend's fingerprint, so a changed environment never reuses an older cell."""
    from evaluator.errors import UserError, unknown
    from evaluator.preflight import interpreter

    chosen = {}
    for item in pythons:
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise UserError(f"--python {item!r}: give BACKEND=PATH, e.g. pytorch_eager=/opt/envs/torch/bin/python")
        if name not in {b.name for b in backends}:
            raise unknown("backend for --python (one of this run's)", name, [b.name for b in backends])
        chosen[name] = (str(Path(path).expanduser()), interpreter(f"--python {item}", Path(path).expanduser()))
    return [replace(b, given_python=chosen[b.name]) if b.name in chosen else b for b in backends]

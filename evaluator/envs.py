"""Backend environments: one virtual environment per backend, built from its own requirements.

Backends pin conflicting versions (vLLM, TensorRT and llama.cpp never share a torch), so each
gets .venvs/<backend>/, made from backends/<backend>/<requirements> alone and rebuilt when
that file changes. A backend without requirements is stdlib-only and runs under the
evaluator's own interpreter.
"""
import hashlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from evaluator.catalog.backends import REPO, Backend

VENVS = REPO / ".venvs"


class EnvironmentFailed(Exception):
    """pip could not build a backend's environment; the message ends with pip's last lines."""


def python_for(backend: Backend, log=print) -> Path:
    """The interpreter that runs this backend's runner, building its environment if needed."""
    if backend.requirements is None:
        return Path(sys.executable)
    venv = VENVS / backend.name
    python = venv / "bin" / "python"
    stamp = venv / ".requirements.sha256"
    build_env = {k: str(v) for k, v in backend.build_env.get(platform.machine(), {}).items()}
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
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-r", str(backend.requirements)]
    if build_env:  # pip's wheel cache ignores build flags: a cached wheel would carry the old ones
        pip.insert(4, "--no-cache-dir")
        out_env = dict(os.environ, **build_env)
        log(f"  build flags: {' '.join(f'{k}={v}' for k, v in build_env.items())}")
    else:
        out_env = None
    with open(logfile, "w") as out:
        steps = [[sys.executable, "-m", "venv", str(venv)], pip]
        if backend.post_install:  # e.g. fetch a converter, remove what pip dragged in
            steps.append([str(python), str(backend.post_install)])
        for step in steps:
            if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, env=out_env).returncode != 0:
                tail = logfile.read_text().strip().splitlines()[-3:]
                shutil.rmtree(venv, ignore_errors=True)
                raise EnvironmentFailed(f"building .venvs/{backend.name} failed: {' | '.join(tail)}")
    stamp.write_text(want)  # last: a half-built environment has no stamp and is rebuilt
    return python


def describe(python: Path) -> str:
    return str(python.relative_to(REPO)) if python.is_relative_to(REPO) else str(python)

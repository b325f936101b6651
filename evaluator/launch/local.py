"""The local transport: a runner is a child process of the evaluator on this machine."""
import os
from pathlib import Path

from evaluator.catalog.backends import REPO, Backend
from evaluator.envs import VENVS
from evaluator.launch.process import RunnerProcess


def start(backend: Backend, python: Path, log_path: Path, startup_timeout_s: float) -> RunnerProcess:
    env = dict(os.environ)
    # The runner library travels as a path, not an install: the same folder goes into images.
    env["DEPLOY_EVAL_RUNNER_LIB"] = str(REPO)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONPATH", None)  # the host's packages must never leak into a backend's environment
    if python.is_relative_to(VENVS):
        # Environments deploy-eval built are installed without bytecode (envs.py): their first
        # runner writes it for what it imports, or every start would compile torch anew (+2 s).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    return RunnerProcess([str(python), str(backend.runner)], log_path, env=env, cwd=REPO,
                         startup_timeout_s=startup_timeout_s)

"""Preflight checks that touch the world, made before any runner starts: a remote target's
host answers over SSH (batch mode: no password prompt, host keys checked), and there is disk
for the run's results and derived artifacts. Each failure is one line for the user."""
import shutil
import subprocess
from pathlib import Path

from evaluator.errors import UserError

MIN_FREE_BYTES = 1 << 30  # results, logs and an artifact or two of a small model


def reachable(target) -> None:
    if target.transport != "ssh-docker" or not target.host:
        return
    host = target.host.removeprefix("ssh://")
    try:
        proc = subprocess.run(["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "StrictHostKeyChecking=yes",
                               *target.ssh_options, host, "docker version --format '{{.Server.Version}}'"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"target {target.name}: cannot reach {host} over SSH: {exc}") from None
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise UserError(f"target {target.name}: {host} is unreachable over SSH or has no Docker engine: {why}")


def disk_space(paths: list[Path], model_bytes: int) -> None:
    need = MIN_FREE_BYTES + 3 * model_bytes  # a converted copy and two quantizations of the model
    for path in paths:
        probe = path
        while not probe.exists():
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        if free < need:
            raise UserError(f"not enough disk for {path}: {free / 1e9:.1f} GB free, this run needs about "
                            f"{need / 1e9:.1f} GB (results, logs and derived model files)")

"""Preflight checks that touch the world, made before any runner starts: a Docker target's
engine answers, a remote target's host answers over SSH (batch mode: no password prompt, host
keys checked), and there is disk for the run's results and derived artifacts. Each failure is
one line for the user."""
import hashlib
import shutil
import subprocess
from pathlib import Path

from evaluator.errors import UserError

MIN_FREE_BYTES = 1 << 30  # results, logs and an artifact or two of a small model


def reachable(target) -> None:
    from evaluator.launch.docker import SOCKET, DockerEngine

    if target.power_log and not Path(target.power_log).is_file():
        raise UserError(f"target {target.name}: power_log {target.power_log} does not exist: start the meter's logging "
                        f"first, or remove power_log from the targets file")
    if target.transport == "docker":
        answer = DockerEngine().run("version", "--format", "{{.Server.Version}}")
        if answer.returncode != 0:
            raise UserError(f"target {target.name}: this machine's Docker engine does not answer on {SOCKET} "
                            f"(start it with docker/dockerd.sh, or set DEPLOY_EVAL_DOCKER_SOCK)")
        return
    if target.transport not in ("ssh-docker", "ssh"):
        return
    if not target.host:  # the mission's targets ship without one: a run there cannot start, so say how
        from evaluator.catalog.targets import USER_FILE
        raise UserError(f"target {target.name} has no host: set host = \"user@machine\" under [{target.name}] in "
                        f"{USER_FILE} (README, Targets)")
    if target.transport == "ssh" and not target.python:
        from evaluator.catalog.targets import USER_FILE
        raise UserError(f"target {target.name} runs runners with that machine's own interpreters: set python = "
                        f"{{default = \"/path/to/venv/bin/python\"}} under [{target.name}] in {USER_FILE} (README, Targets)")
    engine = DockerEngine(target)  # the same ssh command line every later step uses
    host = engine.host
    docker = target.transport == "ssh-docker"
    try:
        proc = subprocess.run(engine.ssh("docker version --format '{{.Server.Version}}'" if docker else "true",
                                         connect_timeout_s=5), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"target {target.name}: cannot reach {host} over SSH: {exc}") from None
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise UserError(f"target {target.name}: {host} is unreachable over SSH{' or has no Docker engine' if docker else ''}: {why}")


# What a given interpreter holds: its version and every installed distribution, one per line
PROBE = ("import sys, importlib.metadata as m; print(sys.version.split()[0]); "
         "print(*sorted(f'{d.metadata[\"Name\"]}=={d.version}' for d in m.distributions()), sep='\\n')")


def interpreter(what: str, path: Path) -> str:
    """A fingerprint of the Python at `path` (its version and packages), or one line saying it
    does not start."""
    try:
        proc = subprocess.run([str(path), "-c", PROBE], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"{what}: does not start ({type(exc).__name__}: {exc})") from None
    if proc.returncode != 0:
        raise UserError(f"{what}: does not start ({(proc.stderr.strip().splitlines() or ['no message'])[-1]})")
    return f"python {proc.stdout.split()[0]}, sha256 {hashlib.sha256(proc.stdout.encode()).hexdigest()[:16]}"


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


# The oldest driver each CUDA major version runs on under minor version compatibility (NVIDIA's
# CUDA Compatibility guide, table 1): a runtime of that major on an older driver does not start.
CUDA_MIN_DRIVER = {11: 450, 12: 525, 13: 580}


def cuda_driver(engine: dict) -> tuple[str | None, str | None]:
    """(why the engine cannot run here, a note to record) for a GPU engine's CUDA runtime against
    the machine's driver, from the runner's describe answer (build.cuda or build.torch_cuda, and
    the driver NVML reports). Unknown on either side: nothing to say."""
    build, drv = engine.get("build") or {}, engine.get("driver") or {}
    runtime = build.get("cuda") or build.get("torch_cuda")
    if not runtime or not drv.get("version"):
        return None, None
    major, minor = (int(x) for x in str(runtime).split(".")[:2])
    have_major = int(drv["version"].split(".")[0])
    need = CUDA_MIN_DRIVER.get(major)
    if need and have_major < need:
        return (f"the NVIDIA driver here ({drv['version']}, CUDA {drv['cuda']}) is older than the CUDA {runtime} runtime of "
                f"{engine.get('engine', 'this engine')} needs (driver {need} or newer): update the driver, or build the "
                f"environment with a CUDA {int(drv['cuda'].split('.')[0])} runtime"), None
    d_major, d_minor = (int(x) for x in drv["cuda"].split(".")[:2])
    if (d_major, d_minor) < (major, minor):
        return None, (f"CUDA {runtime} runtime on a driver for CUDA {drv['cuda']}: runs under minor version compatibility "
                      f"(no PTX JIT: kernels not built for this GPU fail)")
    return None, None

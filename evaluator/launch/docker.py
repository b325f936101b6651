"""The Docker transport: each backend in its own image; a runner is `docker run -i` of it.

Images are built from the backend's own Dockerfile (`[image] dockerfile` in its manifest) over
a build context staged here: the runner library, the backend's folder, this machine's CA
bundle (pip inside a build verifies TLS with it: PIP_CERT) and, for backends that pin torch,
the CPU wheel from pip's local index (PyPI's torch inside an image is the CUDA build). The base
image is a build argument (docker/base.sh makes one offline). An image is tagged by the content
hash of everything that went into it, so an unchanged backend is never rebuilt, and its image
ID is recorded in every result.

A measurement container runs with no network, the model mounted read-only, a non-root user,
and a name per cell, so a deadline kills it by name (`docker kill`), not just the client; an
out-of-memory kill is read back from the container's OOMKilled state.
"""
import hashlib
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from evaluator.catalog.backends import REPO, Backend
from evaluator.launch.process import RunnerFailure, RunnerProcess

SOCKET = os.environ.get("DEPLOY_EVAL_DOCKER_SOCK", "/run/deploy-eval/docker.sock")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
RUNNER_UID = "1000:1000"


def docker_cmd(host: str | None = None) -> list[str]:
    """The docker client aimed at the target's engine: this machine's private socket, or
    ssh://user@host for a remote one (the client tunnels over SSH in batch mode)."""
    return ["docker", "-H", host or f"unix://{SOCKET}"]


ARCH = {"x86_64": "amd64", "aarch64": "arm64"}  # target arch -> Docker platform


class ImageFailed(Exception):
    pass


def base_image(target) -> str:
    """The image every backend image builds on: $DEPLOY_EVAL_BASE_IMAGE, else the offline
    Debian base docker/base.sh makes for the target's architecture."""
    return os.environ.get("DEPLOY_EVAL_BASE_IMAGE") or f"deploy-eval/base:bookworm-{ARCH[target.arch]}"


def engine_host(target) -> str | None:
    """ssh://user@host for a remote engine (DOCKER_HOST syntax), None for this machine's."""
    if target.transport != "ssh-docker":
        return None
    return target.host if target.host.startswith("ssh://") else f"ssh://{target.host}"


def _stage_context(backend: Backend, ctx: Path) -> None:
    (ctx / "evaluator").mkdir(parents=True)
    shutil.copy(REPO / "evaluator" / "__init__.py", ctx / "evaluator" / "__init__.py")
    shutil.copytree(REPO / "evaluator" / "runner", ctx / "evaluator" / "runner",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(backend.folder, ctx / "backends" / backend.name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(CA_BUNDLE, ctx / "ca.crt")
    (ctx / "wheels").mkdir()
    requirements = backend.requirements.read_text() if backend.requirements else ""
    pinned = next((line.split("==")[1].strip() for line in requirements.splitlines() if line.startswith("torch==")), None)
    if pinned:  # the CPU wheel, from pip's local index, instead of PyPI's CUDA build
        subprocess.run(["pip", "download", f"torch=={pinned}", "--no-deps", "--quiet", "-d", str(ctx / "wheels")],
                       check=True, capture_output=True)


def _content_hash(ctx: Path, base: str, arch: str) -> str:
    h = hashlib.sha256(f"{base}\0{arch}\0".encode())
    for path in sorted(p for p in ctx.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(ctx)).encode() + b"\0")
        if path.suffix == ".whl":  # a wheel is named by its version: its name is its content
            continue
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def ensure_image(backend: Backend, base: str, arch: str = "amd64", host: str | None = None, log=print) -> dict:
    """Build the backend's image unless one with the same content hash exists; return
    {"tag", "id", "built_s", "reused"}."""
    import time

    if not backend.dockerfile:
        raise ImageFailed(f"{backend.name} has no [image] dockerfile in its manifest")
    with tempfile.TemporaryDirectory(prefix=f"deploy-eval-{backend.name}-") as tmp:
        ctx = Path(tmp)
        _stage_context(backend, ctx)
        tag = f"deploy-eval/{backend.name}:{_content_hash(ctx, base, arch)}-{arch}"
        docker = docker_cmd(host)
        found = subprocess.run([*docker, "image", "inspect", "-f", "{{.Id}}", tag], capture_output=True, text=True)
        if found.returncode == 0:
            return {"tag": tag, "id": found.stdout.strip(), "built_s": 0.0, "reused": True}
        log(f"building image {tag} from {backend.dockerfile.relative_to(REPO)} on {base} (once)")
        t0 = time.monotonic()
        build = subprocess.run([*docker, "build", "--network", "host", "--platform", f"linux/{arch}",
                                "--build-arg", f"BASE={base}", "-f", str(backend.dockerfile), "-t", tag, str(ctx)],
                               capture_output=True, text=True)
        if build.returncode != 0:
            tail = " | ".join((build.stdout + build.stderr).strip().splitlines()[-4:])
            raise ImageFailed(f"building {tag} failed: {tail}")
        image_id = subprocess.run([*docker, "image", "inspect", "-f", "{{.Id}}", tag],
                                  capture_output=True, text=True, check=True).stdout.strip()
        return {"tag": tag, "id": image_id, "built_s": time.monotonic() - t0, "reused": False}


class ContainerRunner(RunnerProcess):
    """A RunnerProcess whose process is `docker run -i`: killed by container name, and whose
    host paths are seen through the container's mounts."""

    def __init__(self, docker: list[str], name: str, mounts: dict[Path, str], *args, **kwargs):
        self.docker, self.name, self.mounts = docker, name, mounts
        super().__init__(*args, **kwargs)

    def container_path(self, path: Path) -> str:
        for host_dir, inside in self.mounts.items():
            if path == host_dir or host_dir in path.parents:
                return inside + "/" + str(path.relative_to(host_dir)) if path != host_dir else inside
        raise ValueError(f"{path} is not mounted into container {self.name}")

    def oom_killed(self) -> bool:
        state = subprocess.run([*self.docker, "inspect", "-f", "{{.State.OOMKilled}}", self.name],
                               capture_output=True, text=True)
        return state.stdout.strip() == "true"

    def _next_line(self, timeout_s: float, what: str) -> str:
        try:
            return super()._next_line(timeout_s, what)
        except RunnerFailure as exc:
            if exc.status == "crashed" and self.oom_killed():
                raise RunnerFailure("out-of-memory", f"the container was killed for exceeding its memory during {what}") from None
            raise

    def kill(self):
        subprocess.run([*self.docker, "kill", self.name], capture_output=True)
        super().kill()

    def close(self):
        super().close()
        subprocess.run([*self.docker, "rm", "-f", self.name], capture_output=True)


def start(backend: Backend, image: dict, target, mounts: dict[Path, str], log_path: Path, cell_id: str,
          startup_timeout_s: float) -> ContainerRunner:
    docker = docker_cmd(engine_host(target))
    name = f"deploy-eval-{cell_id[:80]}-{secrets.token_hex(3)}".replace("=", "-").replace("+", "-")
    argv = [*docker, "run", "-i", "--name", name, "--network", "none", "--user", RUNNER_UID,
            "--tmpfs", "/tmp", "-e", "HOME=/tmp", "-e", "PYTHONUNBUFFERED=1"]
    for host_dir, inside in mounts.items():
        argv += ["-v", f"{host_dir}:{inside}:{'rw' if inside == '/artifacts' else 'ro'}"]
    if target.accelerator == "cuda":
        argv += ["--gpus", "all"]
    argv.append(image["tag"])
    return ContainerRunner(docker, name, mounts, argv, log_path, startup_timeout_s=startup_timeout_s)

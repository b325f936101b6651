"""The Docker transports: each backend in its own image; a runner is `docker run -i` of it on
this machine's engine (`docker`), or `ssh host docker run -i` on a remote one (`ssh-docker`).

Images are built from the backend's own Dockerfile (`[image] dockerfile` in its manifest) over
a build context staged here: the runner library, the backend's folder, this machine's CA
bundle (pip inside a build verifies TLS with it: PIP_CERT) and what pip needs that PyPI would
get wrong. Which torch: PyPI's is the CUDA build (CUDA runtime included), right for a GPU
target; a CPU target gets this machine's CPU wheel, or, on another architecture, PyTorch's CPU
index (build arg TORCH_INDEX). What compiles (llama.cpp) comes as this machine's wheelhouse
for an image run here; a remote engine compiles it natively for its own CPU. The base image is
a build argument (docker/base.sh makes one offline). An image is tagged by the content hash of
everything that went into it, so an unchanged backend is never rebuilt, and its image ID is
recorded in every result.

A measurement container runs with no network, the model mounted read-only, a non-root user,
and a name per cell, so a deadline kills it by name (`docker kill`), not just the client (a
label names its evaluator, so the next run on that engine removes what a dead one left); an
out-of-memory kill is read back from the container's OOMKilled state. A remote target gets the
build context and the model as tar streams over SSH (the model once, by content hash), and the
results come home over the runner's own stdout.
"""
import hashlib
import os
import platform
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from evaluator import envs
from evaluator.errors import UserError
from evaluator.launch import bounded, cross, leftovers
from evaluator.launch.shipping import RUNNER_UID, ImageFailed, artifact_cache, fed_a_tar, owner, ship_model
from evaluator.catalog.backends import REPO, Backend
from evaluator.launch.process import RunnerFailure, RunnerProcess

SOCKET = os.environ.get("DEPLOY_EVAL_DOCKER_SOCK", "/run/deploy-eval/docker.sock")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}  # target arch -> Docker platform
# Compilers' caches in the artifact cache (per architecture, the containers' user's alone), not in
# the container's /tmp: a cell starts from the kernels the last one built instead of from zero.
COMPILE_CACHES = {"TORCHINDUCTOR_CACHE_DIR": "/artifacts/compile/inductor", "TRITON_CACHE_DIR": "/artifacts/compile/triton",
                  "VLLM_CACHE_ROOT": "/artifacts/compile/vllm"}
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"  # torch's CPU wheels for every architecture


class DockerEngine:
    """Where `docker` commands go: this machine's private engine (its socket), or a remote
    machine's through `ssh host docker ...` in batch mode with host keys checked: the same
    JSON-lines transport, one hop further. On a remote host its own DOCKER_HOST applies."""

    def __init__(self, target=None):
        self.remote = target is not None and target.transport in ("ssh-docker", "ssh")
        self.host = target.host.removeprefix("ssh://") if self.remote else None
        self.ssh_options = list(target.ssh_options) if self.remote else []

    def ssh(self, command: str, connect_timeout_s: int | None = None) -> list[str]:
        wait = ["-o", f"ConnectTimeout={connect_timeout_s}"] if connect_timeout_s else []
        return ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", *wait, *self.ssh_options, self.host, command]

    def argv(self, *args: str) -> list[str]:
        if self.remote:
            return self.ssh("docker " + " ".join(shlex.quote(a) for a in args))
        return ["docker", "-H", f"unix://{SOCKET}", *args]

    def run(self, *args: str, timeout_s: float = bounded.QUICK_S) -> subprocess.CompletedProcess:
        """A docker command under its deadline; an overdue one is an ImageFailed naming it."""
        try:
            return bounded.run(self.argv(*args), timeout_s, f"docker {args[0]} ({self.where()})", capture_output=True, text=True)
        except bounded.Overdue as exc:
            raise ImageFailed(str(exc)) from None

    def where(self) -> str:
        return f"{self.host}'s Docker engine" if self.remote else "this machine's Docker engine"


def base_image(target, backend: Backend | None = None) -> str:
    """The image a backend's image builds on: its manifest's own (an engine that ships in its
    vendor's image: TensorRT-LLM), else $DEPLOY_EVAL_BASE_IMAGE, else the target's base_image (a
    Debian-like python image from its registry), else the offline Debian base docker/base.sh
    makes. Other backends bring their CUDA libraries as pip packages, so a GPU target needs no
    CUDA base: the driver comes from the host (--gpus)."""
    return ((backend.base_image if backend else "") or os.environ.get("DEPLOY_EVAL_BASE_IMAGE") or target.base_image
            or f"deploy-eval/base:bookworm-{ARCH[target.arch]}")


def stage_runner_lib(backend: Backend, ctx: Path) -> None:
    """What a runner needs besides its engine, as a folder tree under ctx: the runner library
    and the backend's folder (and those whose runner it reuses)."""
    (ctx / "evaluator").mkdir(parents=True)
    shutil.copy(REPO / "evaluator" / "__init__.py", ctx / "evaluator" / "__init__.py")
    shutil.copytree(REPO / "evaluator" / "runner", ctx / "evaluator" / "runner",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in (backend.name, *backend.with_backends):
        shutil.copytree(backend.folder.parent / name, ctx / "backends" / name, ignore=shutil.ignore_patterns("__pycache__"))


def _stage_context(backend: Backend, ctx: Path, arch: str, remote: bool, cuda: bool, log=print) -> dict:
    """Stage the build context in ctx; return the build args it needs besides BASE."""
    stage_runner_lib(backend, ctx)
    shutil.copy(CA_BUNDLE, ctx / "ca.crt")
    (ctx / "wheels").mkdir()
    requirements = backend.requirements.read_text() if backend.requirements else ""
    pinned = next((line.split("==")[1].strip() for line in requirements.splitlines() if line.startswith("torch==")), None)
    foreign = ARCH.get(platform.machine()) != arch
    if foreign and not remote:  # an image for another architecture, run here under emulation: the engine alone
        if not backend.engine_packages:
            raise ImageFailed(f"{backend.name} cannot be built for {arch} on this {platform.machine()} machine: "
                              f"its manifest names no [image] engine_packages to cross-build")
        other = {v: k for k, v in ARCH.items()}[arch]
        flags = envs.build_flags(backend, other).get("CMAKE_ARGS", "")
        try:
            house = cross.wheelhouse(list(backend.engine_packages), arch, flags, log=log)
        except cross.CrossFailed as exc:
            raise ImageFailed(str(exc)) from None
        shutil.copytree(house, ctx / "wheels", dirs_exist_ok=True)
        (ctx / "wheels" / "ENGINE_ONLY").write_text(" ".join(backend.engine_packages) + "\n")
        (ctx / "wheels" / "WHEELHOUSE").write_text(house.name + "\n")  # its name carries the flags' hash
        return {}
    # This machine's wheelhouse is compiled for this machine's CPU (the manifest's flags): a
    # remote engine compiles for its own instead, once, in the image build.
    house = None if remote else envs.wheelhouse(backend, log=log)
    if house:  # compiled once on this machine, shared with the backend's local environment
        shutil.copytree(house, ctx / "wheels", dirs_exist_ok=True)
        (ctx / "wheels" / "WHEELHOUSE").write_text(house.name + "\n")  # its name carries the build flags' hash
        return {}
    if not pinned or cuda:  # a GPU target takes PyPI's torch: the CUDA build, its runtime libraries included
        return {}
    if not foreign:  # the CPU wheel, from pip's local index, instead of PyPI's CUDA build
        got = bounded.run([sys.executable, "-m", "pip", "download", f"torch=={pinned}", "--no-deps", "--quiet", "-d",
                           str(ctx / "wheels")], bounded.DOWNLOAD_S, f"pip download torch=={pinned}", capture_output=True)
        if got.returncode != 0:
            raise ImageFailed(f"pip download torch=={pinned} failed: {got.stderr.decode(errors='replace').strip()[-300:]}")
        return {}
    return {"TORCH_INDEX": TORCH_CPU_INDEX}  # another architecture's CPU wheel, fetched by its own engine


def _content_hash(ctx: Path, base: str, arch: str, args: dict) -> str:
    h = hashlib.sha256(f"{base}\0{arch}\0".encode() + (f"{sorted(args.items())}\0".encode() if args else b""))
    for path in sorted(p for p in ctx.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(ctx)).encode() + b"\0")
        if path.suffix == ".whl":  # a wheel is named by its version: its name is its content
            continue
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def ensure_image(backend: Backend, base: str, arch: str, engine: DockerEngine, cuda: bool = False, log=print) -> dict:
    """Build the backend's image on the target's engine unless one with the same content hash
    is there; return {"tag", "id", "built_s", "reused"}. The context goes to the engine as a
    tar stream (`docker build -`), so a remote engine needs none of this machine's files."""
    if not backend.dockerfile:
        raise ImageFailed(f"{backend.name} has no [image] dockerfile in its manifest")
    with tempfile.TemporaryDirectory(prefix=f"deploy-eval-{backend.name}-") as tmp:
        ctx = Path(tmp)
        args = _stage_context(backend, ctx, arch, engine.remote, cuda, log)
        tag = f"deploy-eval/{backend.name}:{_content_hash(ctx, base, arch, args)}-{arch}{'-cuda' if cuda else ''}"
        found = engine.run("image", "inspect", "-f", "{{.Id}}", tag)
        if found.returncode == 0:
            return {"tag": tag, "id": found.stdout.strip(), "built_s": 0.0, "reused": True}
        log(f"building image {tag} from {backend.dockerfile.relative_to(REPO)} on {base} in {engine.where()} (once)")
        t0 = time.monotonic()
        dockerfile = f"backends/{backend.name}/{backend.dockerfile.name}"
        build_args = [a for k, v in {"BASE": base, **args}.items() for a in ("--build-arg", f"{k}={v}")]
        build = fed_a_tar(ctx, engine.argv("build", "--network", "host", "--platform", f"linux/{arch}",
                                            *build_args, "-f", dockerfile, "-t", tag, "-"),
                           bounded.BUILD_S, f"building {tag}")
        if build.returncode != 0:
            # The builder's own chatter (context size, "Step n/m", layer ids) hides the error.
            chatter = ("Sending build context", "Step ", " ---> ", "Removing intermediate")
            lines = [line for line in (build.stdout + build.stderr).strip().splitlines()
                     if line.strip() and not line.startswith(chatter)
                     and "buildx" not in line and "legacy builder" not in line and "BuildKit" not in line]
            raise ImageFailed(f"building {tag} failed: {' | '.join(lines[-6:])}")
        image_id = engine.run("image", "inspect", "-f", "{{.Id}}", tag).stdout.strip()
        return {"tag": tag, "id": image_id, "built_s": time.monotonic() - t0, "reused": False}


@dataclass(frozen=True)
class Placement:
    """What a container of this backend needs on its engine: the image, and where the model
    folder and the artifact cache are on the engine's machine."""
    backend: Backend
    image: dict
    model_host: Path      # the model's folder on this machine
    model_engine: str     # the same folder on the engine's machine (a remote copy, or itself)
    cache_engine: str     # the artifact cache on the engine's machine
    user: str = RUNNER_UID  # uid:gid the containers run as: the cache's owner


_PREPARED: dict[tuple, "Placement | ImageFailed"] = {}  # this run's outcomes: once per backend, target and model


def prepare(backend: Backend, target, model_folder: Path, sha256: str, local_cache: Path, log=print) -> Placement:
    """The image built (or found), the model shipped (or found), the artifact cache made: once
    per run for each backend, target and model. Later cells reuse the outcome, a failure too
    (they would only fail the same way), without staging a context or asking the engine again."""
    key = (backend.name, target.name, str(model_folder), sha256)
    if key not in _PREPARED:
        try:
            _PREPARED[key] = _prepare(backend, target, model_folder, sha256, local_cache, log)
        except ImageFailed as exc:
            _PREPARED[key] = exc
            raise
        return _PREPARED[key]
    done = _PREPARED[key]
    if isinstance(done, ImageFailed):
        raise done
    return replace(done, image=dict(done.image, built_s=0.0, reused=True))


def _prepare(backend: Backend, target, model_folder: Path, sha256: str, local_cache: Path, log=print) -> Placement:
    engine = DockerEngine(target)
    try:
        for name in leftovers.sweep_containers(engine):
            log(f"removed {name}, a container of a run that ended without removing it")
    except UserError as exc:
        raise ImageFailed(str(exc)) from None
    image = ensure_image(backend, base_image(target, backend), ARCH[target.arch], engine, cuda=target.accelerator == "cuda", log=log)
    who = owner(engine)
    return Placement(backend, image, model_folder, ship_model(engine, model_folder, sha256, who, log),
                     artifact_cache(engine, local_cache, target.arch, who), who.user)


class ContainerRunner(RunnerProcess):
    """A RunnerProcess whose process is `docker run -i` (or `ssh host docker run -i`): killed
    by container name; the model folder is /model inside, the artifact cache /artifacts."""
    artifact_cache = "/artifacts"

    def __init__(self, engine: DockerEngine, name: str, model_host: Path, *args, **kwargs):
        self.engine, self.name, self.model_host = engine, name, model_host
        super().__init__(*args, **kwargs)

    def see(self, path: Path) -> str:
        if path == self.model_host:
            return "/model"
        if self.model_host in path.parents:
            return f"/model/{path.relative_to(self.model_host)}"
        raise ValueError(f"{path} is not mounted into container {self.name}")

    def oom_killed(self) -> bool:
        try:
            return self.engine.run("inspect", "-f", "{{.State.OOMKilled}}", self.name).stdout.strip() == "true"
        except ImageFailed:  # the engine did not answer in time: the crash stays a crash
            return False

    def _next_line(self, timeout_s: float, what: str) -> str:
        try:
            return super()._next_line(timeout_s, what)
        except RunnerFailure as exc:
            if exc.status == "crashed" and self.oom_killed():
                raise RunnerFailure("out-of-memory", f"the container was killed for exceeding its memory during {what}") from None
            raise

    def kill(self):
        self._engine_quietly("kill", self.name)  # the container, wherever it runs, not just the client
        super().kill()

    def close(self):
        super().close()
        self._engine_quietly("rm", "-f", self.name)

    def _engine_quietly(self, *args: str) -> None:
        """Best effort: an engine that does not answer in time leaves the container to the next
        start's clean-up by name, and the client process is killed regardless."""
        try:
            self.engine.run(*args)
        except ImageFailed:
            pass


def start(placement: Placement, target, log_path: Path, cell_id: str, startup_timeout_s: float) -> ContainerRunner:
    """`docker run -i` of the backend's image: no network, the model read-only, user 1000."""
    engine = DockerEngine(target)
    name = f"deploy-eval-{cell_id[:80]}-{secrets.token_hex(3)}".replace("=", "-").replace("+", "-")
    args = ["run", "-i", "--name", name, "--label", leftovers.container_label(), "--network", "none", "--user", placement.user,
            "--tmpfs", "/tmp:exec", "-e", "HOME=/tmp", "-e", "PYTHONUNBUFFERED=1",  # exec: inductor loads its kernels from there
            *(a for k, v in COMPILE_CACHES.items() for a in ("-e", f"{k}={v}")),
            "-v", f"{placement.model_engine}:/model:ro", "-v", f"{placement.cache_engine}:/artifacts:rw"]
    if target.accelerator == "cuda":
        args += ["--gpus", "all"]
    args.append(placement.image["tag"])
    return ContainerRunner(engine, name, placement.model_host, engine.argv(*args), log_path,
                           startup_timeout_s=startup_timeout_s)

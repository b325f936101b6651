"""Targets: where runners run. The file format describes remote devices already; transports
other than `local` are validated here and carried out by evaluator/launch."""
import os
import platform
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

from evaluator.catalog import schema
from evaluator.errors import UserError, unknown

BUILTIN = Path(__file__).with_name("targets.toml")
USER_FILE = Path(os.environ.get("DEPLOY_EVAL_TARGETS", "~/.config/deploy-eval/targets.toml")).expanduser()
ARCHS = ("x86_64", "aarch64")


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    transport: str
    host: str
    arch: str
    accelerator: str
    gpu: str
    memory_gb: float
    memory_bandwidth_gbs: float | None
    ssh_options: tuple = ()  # extra ssh arguments for ssh-docker, e.g. ["-p", "2222", "-i", "~/.ssh/lab"]
    base_image: str = ""     # what every backend image builds on there; "" = docker/base.sh's offline base
    python: tuple = ()       # (backend or "default", interpreter path there) pairs: prepared environments
    power_log: str = ""      # an external meter's log on this machine (CSV: unix time, watts)

    def python_for(self, backend: str) -> str | None:
        """The interpreter this target's entry names for a backend (its own, else `default`)."""
        table = dict(self.python)
        return table.get(backend) or table.get("default")

    @property
    def device(self) -> str:
        """The torch-style device a runner is asked to use."""
        return "cuda" if self.accelerator == "cuda" else "cpu"


def _local_gpu() -> tuple[str, float | None]:
    """The first NVIDIA GPU's name and memory in GB, or ("", None) (no torch on the host: ask the driver)."""
    if not shutil.which("nvidia-smi"):
        return "", None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "", None
    if not out.strip():
        return "", None
    name, _, mib = out.strip().splitlines()[0].rpartition(",")
    try:
        return name.strip(), round(float(mib) * 2**20 / 1e9, 1)
    except ValueError:
        return out.strip().splitlines()[0], None


def _ram_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9


def _parse(name: str, entry: dict, where: str) -> Target:
    e = schema.parse(schema.TargetEntry, entry, f"{where} [{name}]")
    local = e.transport in ("local", "docker")
    arch = platform.machine() if e.arch == "auto" and local else e.arch
    if arch not in ARCHS:
        raise UserError(f"{where} [{name}]: arch {arch!r} (\"auto\" is for this machine's targets); valid: {', '.join(ARCHS)}")
    gpu, accelerator, card_gb = e.gpu, e.accelerator, None
    if accelerator == "auto":
        if not local:
            raise UserError(f"{where} [{name}]: accelerator must be none or cuda for a remote target")
        found, card_gb = _local_gpu()
        gpu = gpu or found
        accelerator = "cuda" if gpu else "none"
    elif accelerator == "cuda" and local:
        card_gb = _local_gpu()[1]
    if e.python and e.transport not in ("local", "ssh"):
        raise UserError(f"{where} [{name}]: python is for the local and ssh transports (a {e.transport} target "
                        f"runs each backend in its image)")
    memory = e.memory_gb
    if memory == "auto":
        if not local:
            raise UserError(f"{where} [{name}]: memory_gb must be a number for a remote target")
        # what a model must fit in: the card's memory on a GPU target, RAM on a CPU one
        memory = card_gb if accelerator == "cuda" and card_gb else round(_ram_gb(), 1)
    return Target(name, e.description, e.transport, e.host, arch, accelerator, gpu, float(memory),
                  e.memory_bandwidth_gbs, tuple(e.ssh_options), e.base_image, tuple(sorted(e.python.items())),
                  str(Path(e.power_log).expanduser()) if e.power_log else "")


def _read(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from None


def memory_sizes(include_user: bool = True) -> dict[str, float]:
    """Each known target's memory in GB, for the report's "what fits where": recorded in run.json
    when a run starts, so a report rebuilt later does not read the user's live targets file."""
    entries = all_targets() if include_user else _read(BUILTIN)
    return {name: t["memory_gb"] for name, t in entries.items() if isinstance(t.get("memory_gb"), (int, float))}


def all_targets() -> dict[str, dict]:
    entries = _read(BUILTIN)
    if "DEPLOY_EVAL_TARGETS" in os.environ and not USER_FILE.is_file():  # named, so meant: not silently skipped
        raise UserError(f"DEPLOY_EVAL_TARGETS names {USER_FILE}, which does not exist")
    if USER_FILE.is_file():
        entries.update({k: dict(v, _file=str(USER_FILE)) for k, v in _read(USER_FILE).items()})
    return entries


def resolve(names: list[str]) -> list[Target]:
    entries = all_targets()
    targets = []
    for name in names:
        if name not in entries:
            raise unknown("target", name, entries)
        entry = dict(entries[name])
        where = entry.pop("_file", "targets.toml")
        targets.append(_parse(name, entry, where))
    return targets

"""The shapes of the three configuration files: backends/*/backend.toml, the targets files and
the model catalog, checked with pydantic (host side only; the runner library stays standard
library). Unknown keys and wrong types are errors, never ignored: a typo must not change a
result. parse() turns pydantic's report into the one line the CLI prints, with a did-you-mean
for a misspelt key and the valid choices for a wrong value.

What needs more than one file (a runner that must exist, a reference that must be a variant)
is checked where the file is read: catalog/backends.py, targets.py, models.py.
"""
import difflib
import types
import typing
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evaluator.errors import UserError

Arch = Literal["x86_64", "aarch64"]
Device = Literal["cpu", "cuda"]
Scalar = str | int | float | bool
Positive = Annotated[float, Field(gt=0)]


class Strict(BaseModel):
    # strict: "8" is not 8 and "true" is not true; an int is still a float
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# -- backends/<name>/backend.toml -----------------------------------------------------------
class Environment(Strict):
    requirements: str | None = None
    build_env: dict[Arch, dict[str, str]] = {}      # variables set while its environment is built
    cpu_features: dict[Arch, dict[str, str]] = {}   # CMake option -> the CPU flag it needs
    post_install: str | None = None


class Need(Strict):
    when: dict[str, Scalar] = {}
    devices: list[Device]
    why: str = ""


class MadeBy(Strict):
    """A variant whose weights another backend makes (a calibrated checkpoint), this one runs."""
    name: str
    options: dict[str, Scalar] = {}
    backend: str    # the backend whose runner makes them: its load answers the artifact's path
    variant: str    # that backend's variant


class Variants(Strict):
    axes: dict[str, Annotated[list[Scalar], Field(min_length=1)]] = Field(min_length=1)
    reference: str | None = None
    defaults: list[str] | None = None
    needs: list[Need] = []
    made_by: list[MadeBy] = []


class Image(Strict):
    dockerfile: str | None = None
    base_image: str | None = None   # the engine ships in its vendor's image: built on that, whatever the target says
    engine_packages: list[str] = []
    with_backends: list[str] = []


class Manifest(Strict):
    name: str
    description: str
    protocol: int
    runner: str
    formats: list[Literal["hf", "gguf"]]
    devices: list[Device]
    archs: list[Arch]
    environment: Environment
    variants: Variants
    default: bool = True
    fake: bool = False
    image: Image = Image()
    min_head_dim: Annotated[int, Field(gt=0)] | None = None
    weight_group_size: Annotated[int, Field(gt=0)] | None = None
    serving_unsupported: Annotated[str, Field(min_length=20)] | None = None  # why its runner cannot serve


# -- targets.toml (built in, and the user's) ------------------------------------------------
class TargetEntry(Strict):
    description: str = ""
    transport: Literal["local", "docker", "ssh-docker", "ssh"] = "local"
    host: str = ""
    arch: Literal["auto", "x86_64", "aarch64"] = "auto"
    accelerator: Literal["auto", "none", "cuda"] = "none"
    gpu: str = ""
    memory_gb: Literal["auto"] | Positive = "auto"
    memory_bandwidth_gbs: Positive | None = None
    ssh_options: list[str] = []     # extra ssh arguments, e.g. ["-p", "2222"]
    base_image: str = ""
    python: dict[str, str] = {}     # backend name (or "default") -> an interpreter on that machine
    power_log: str = ""             # an external meter's log on this machine: CSV of unix time, watts


# -- models.toml ----------------------------------------------------------------------------
class CatalogEntry(Strict):
    description: str = ""
    path: str | None = None
    hub: str | None = None
    revision: str | None = None
    gguf: str | None = None
    reference_greedy: str | None = None
    license: str | None = None
    synthetic: dict[str, int | bool] | None = None


M = typing.TypeVar("M", bound=BaseModel)


def parse(cls: type[M], data: dict, where: str) -> M:
    """`data` as a `cls`, or one UserError line saying what is wrong where."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise UserError(_one_line(cls, exc, where)) from None


def _one_line(cls: type[BaseModel], exc: ValidationError, where: str) -> str:
    errors = exc.errors()
    # a misspelt key is both unknown and missing: name the typo first, with its correction
    errors.sort(key=lambda e: e["type"] != "extra_forbidden")
    missing = [_dotted(e["loc"]) for e in errors if e["type"] == "missing"]
    e = errors[0]
    if missing and e["type"] != "extra_forbidden":
        return f"{where}: missing keys {missing}"
    if e["type"] == "extra_forbidden":
        *parent, key = e["loc"]
        allowed = sorted(_model_at(cls, parent).model_fields)
        close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        inside = f"{where} [{_dotted(parent)}]" if parent else where
        return f"{inside}: unknown key {key!r}{hint}; valid keys: {', '.join(allowed)}"
    name = _dotted(e["loc"])
    # a union (memory_gb = "auto" or a number) fails once per member: say every way it could be right
    msgs = [x["msg"] for x in errors if _dotted(x["loc"]) == name]
    what = "key" if e["loc"][-1] == "[key]" else ""
    return f"{where}: {name}{' ' + what if what else ''} {e['input']!r}: {', or '.join(dict.fromkeys(msgs))}"


# pydantic names a union member, or a dict's key, in an error's location: not a key of the file
_TAGS = {"literal['auto']", "float", "constrained-float", "int", "str", "bool", "none", "[key]"}


def _dotted(loc) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc if p not in _TAGS).lstrip(".")


def _model_at(cls: type[BaseModel], loc) -> type[BaseModel]:
    """The model whose keys are at `loc` (list indices and dict keys skipped)."""
    for part in loc:
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        inner = _model_in(field.annotation) if field else None
        if inner is not None:
            cls = inner
    return cls


def _model_in(annotation):
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (list, dict, Union, types.UnionType, Annotated):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None

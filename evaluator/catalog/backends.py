"""Backend discovery: list backends/*/ and read each backend.toml, never importing backend code.

A folder without a readable, valid manifest is reported as broken, loudly; it is never
silently skipped (the trap lm-evaluation-harness fell into with malformed task YAML).
"""
import itertools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from evaluator.errors import UserError, check_keys, unknown

REPO = Path(__file__).resolve().parents[2]
BACKENDS_DIR = REPO / "backends"

TOP_KEYS = {"name", "description", "protocol", "runner", "formats", "devices", "archs", "default", "fake",
            "environment", "image", "variants", "min_head_dim"}
REQUIRED = ("name", "description", "protocol", "runner", "formats", "devices", "archs", "environment", "variants")


@dataclass(frozen=True)
class Variant:
    name: str
    options: dict
    needs_devices: tuple = ()  # empty: runs on every device the backend runs on
    why: str = ""

    def unsupported_reason(self, device: str) -> str | None:
        if self.needs_devices and device not in self.needs_devices:
            return self.why or f"needs a device in {list(self.needs_devices)}, target has {device}"
        return None


@dataclass(frozen=True)
class Backend:
    name: str
    folder: Path
    description: str
    runner: Path
    formats: tuple
    devices: tuple
    archs: tuple
    default: bool
    fake: bool                 # reads no weights (the null backend): exempt from reference checks
    requirements: Path | None
    build_env: dict            # {arch: {VAR: value}} set while its environment is built
    cpu_features: dict         # {arch: {CMake option: CPU flag}}: an option is ON only where the CPU has the flag
    post_install: Path | None  # a script run by the environment's python after pip
    dockerfile: Path | None
    reference_variant: str
    engine_packages: tuple = ()   # [image] engine_packages: an image for another architecture
    with_backends: tuple = ()     # [image] with_backends: sibling folders its runner reuses (staged too)
    variants: tuple = field(default_factory=tuple)
    default_variants: tuple = ()  # what a run without --variants measures
    min_head_dim: int | None = None  # its attention kernels refuse narrower heads: known before any environment is built

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise unknown(f"variant of {self.name}", name, [v.name for v in self.variants])


def _expand_variants(where: str, table: dict) -> tuple[str, tuple, tuple]:
    check_keys(f"{where} [variants]", table, {"reference", "axes", "needs", "defaults"})
    axes = table.get("axes")
    if not isinstance(axes, dict) or not axes or not all(isinstance(v, list) and v for v in axes.values()):
        raise UserError(f"{where}: [variants] axes must map each option to a non-empty list of values")
    needs = table.get("needs", [])
    for i, need in enumerate(needs):
        check_keys(f"{where} [[variants.needs]] #{i + 1}", need, {"when", "devices", "why"})
        for k, v in need.get("when", {}).items():
            if k not in axes or v not in axes[k]:
                raise UserError(f"{where}: [[variants.needs]] when {k}={v!r} matches no axis value")
    variants = []
    for values in itertools.product(*axes.values()):
        options = dict(zip(axes, values))
        name = "-".join(str(v) for v in values)
        devices, why = (), ""
        for need in needs:
            if all(options.get(k) == v for k, v in need.get("when", {}).items()):
                devices, why = tuple(need["devices"]), need.get("why", "")
        variants.append(Variant(name, options, devices, why))
    names = [v.name for v in variants]
    reference = table.get("reference", names[0])
    if reference not in names:
        raise UserError(f"{where}: reference variant {reference!r} is not one of the variants")
    defaults = table.get("defaults", names)
    unknown_defaults = [d for d in defaults if d not in names]
    if unknown_defaults:
        raise UserError(f"{where}: defaults {unknown_defaults} are not variants; valid: {', '.join(names)}")
    return reference, tuple(variants), tuple(defaults)


def load_manifest(folder: Path) -> Backend:
    where = f"backends/{folder.name}/backend.toml"
    path = folder / "backend.toml"
    if not path.is_file():
        raise UserError(f"{where}: missing (every backend folder needs a manifest)")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{where}: not valid TOML: {exc}") from None
    check_keys(where, data, TOP_KEYS)
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise UserError(f"{where}: missing keys {missing}")
    if data["name"] != folder.name:
        raise UserError(f"{where}: name {data['name']!r} differs from its folder name {folder.name!r}")
    if data["protocol"] != 1:
        raise UserError(f"{where}: protocol {data['protocol']!r} is not supported; this evaluator speaks protocol 1")
    runner = folder / data["runner"]
    if not runner.is_file():
        raise UserError(f"{where}: runner {data['runner']!r} does not exist")
    env = data["environment"]
    check_keys(f"{where} [environment]", env, {"requirements", "build_env", "cpu_features", "post_install"})
    build_env = env.get("build_env", {})
    for arch, table in build_env.items():
        if arch not in ("x86_64", "aarch64") or not isinstance(table, dict):
            raise UserError(f"{where}: [environment.build_env.{arch}] must be x86_64 or aarch64, a table of variables")
    requirements = folder / env["requirements"] if env.get("requirements") else None
    if requirements and not requirements.is_file():
        raise UserError(f"{where}: requirements file {env['requirements']!r} does not exist")
    post_install = folder / env["post_install"] if env.get("post_install") else None
    if post_install and not (post_install.is_file() and requirements):
        raise UserError(f"{where}: post_install {env['post_install']!r} must be a file, beside a requirements file")
    image = data.get("image", {})
    check_keys(f"{where} [image]", image, {"dockerfile", "engine_packages", "with_backends"})
    for sibling in image.get("with_backends", []):
        if not (folder.parent / sibling / "runner.py").is_file():
            raise UserError(f"{where} [image]: with_backends names {sibling!r}, which is not a backend folder beside it")
    dockerfile = folder / image["dockerfile"] if image.get("dockerfile") else None
    if dockerfile and not dockerfile.is_file():
        raise UserError(f"{where}: dockerfile {image['dockerfile']!r} does not exist")
    reference, variants, defaults = _expand_variants(where, data["variants"])
    return Backend(
        name=data["name"], folder=folder, description=data["description"], runner=runner,
        formats=tuple(data["formats"]), devices=tuple(data["devices"]), archs=tuple(data["archs"]),
        default=bool(data.get("default", True)), fake=bool(data.get("fake", False)), requirements=requirements, build_env=build_env,
        cpu_features=env.get("cpu_features", {}),
        post_install=post_install, dockerfile=dockerfile, engine_packages=tuple(image.get("engine_packages", ())),
        with_backends=tuple(image.get("with_backends", ())),
        reference_variant=reference, variants=variants, default_variants=defaults,
        min_head_dim=data.get("min_head_dim"),
    )


def discover(root: Path = BACKENDS_DIR) -> tuple[dict[str, Backend], dict[str, str]]:
    """All backends under root: ({name: Backend}, {folder: why it is broken})."""
    good, broken = {}, {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        try:
            good[folder.name] = load_manifest(folder)
        except UserError as exc:
            broken[folder.name] = str(exc)
    return good, broken


def select(names: list[str] | None, root: Path = BACKENDS_DIR) -> list[Backend]:
    """The backends named (all default ones when None); an unknown or broken name is an error."""
    good, broken = discover(root)
    if names is None:
        return [b for b in good.values() if b.default]
    chosen = []
    for name in names:
        if name in broken:
            raise UserError(f"backend {name!r} has a broken manifest: {broken[name]}")
        if name not in good:
            raise unknown("backend", name, list(good) + list(broken))
        chosen.append(good[name])
    return chosen


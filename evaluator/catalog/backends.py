"""Backend discovery: list backends/*/ and read each backend.toml (its shape: schema.Manifest),
never importing backend code.

A folder without a readable, valid manifest is reported as broken, loudly; it is never
silently skipped (the trap lm-evaluation-harness fell into with malformed task YAML).
"""
import itertools
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from evaluator.catalog import schema
from evaluator.errors import UserError, unknown

REPO = Path(__file__).resolve().parents[2]
BACKENDS_DIR = REPO / "backends"



@dataclass(frozen=True)
class Variant:
    name: str
    options: dict
    needs_devices: tuple = ()  # empty: runs on every device the backend runs on
    why: str = ""
    made_by: tuple = ()  # (backend, variant) names whose runner makes this variant's weights; empty: the model's own
    maker: tuple = ()    # the same as (Backend, Variant), resolved once by discover()

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
    base_image: str = ""          # [image] base_image: its vendor's image, which its own images build on
    with_backends: tuple = ()     # [image] with_backends: sibling folders its runner reuses (staged too)
    variants: tuple = field(default_factory=tuple)
    default_variants: tuple = ()  # what a run without --variants measures
    min_head_dim: int | None = None  # its attention kernels refuse narrower heads: known before any environment is built
    weight_group_size: int | None = None  # weights quantized in groups of this many input features
    serving_unsupported: str | None = None  # why its runner has no serving path: known before any environment is built
    given_python: tuple = ()  # (path, fingerprint of its packages): an environment the user gave (--python), used as is

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise unknown(f"variant of {self.name}", name, [v.name for v in self.variants])


def _expand_variants(where: str, table: schema.Variants) -> tuple[str, tuple, tuple]:
    axes = table.axes
    for need in table.needs:
        for k, v in need.when.items():
            if k not in axes or v not in axes[k]:
                raise UserError(f"{where}: [[variants.needs]] when {k}={v!r} matches no axis value")
    variants = []
    for values in itertools.product(*axes.values()):
        options = dict(zip(axes, values))
        name = "-".join(str(v) for v in values)
        devices, why = (), ""
        for need in table.needs:
            if all(options.get(k) == v for k, v in need.when.items()):
                devices, why = tuple(need.devices), need.why
        variants.append(Variant(name, options, devices, why))
    for made in table.made_by:  # the options name the maker, so a cell's key and record say whose weights ran
        variants.append(Variant(made.name, dict(made.options, weights=f"{made.backend}:{made.variant}"),
                                made_by=(made.backend, made.variant)))
    names = [v.name for v in variants]
    if len(set(names)) < len(names):
        raise UserError(f"{where}: variant names repeat: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    reference = table.reference or names[0]
    if reference not in names:
        raise UserError(f"{where}: reference variant {reference!r} is not one of the variants")
    defaults = names if table.defaults is None else table.defaults
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
        m = schema.parse(schema.Manifest, tomllib.loads(path.read_text()), where)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{where}: not valid TOML: {exc}") from None
    if m.name != folder.name:
        raise UserError(f"{where}: name {m.name!r} differs from its folder name {folder.name!r}")
    if m.protocol != 1:
        raise UserError(f"{where}: protocol {m.protocol!r} is not supported; this evaluator speaks protocol 1")
    runner = folder / m.runner
    if not runner.is_file():
        raise UserError(f"{where}: runner {m.runner!r} does not exist")
    env = m.environment
    requirements = folder / env.requirements if env.requirements else None
    if requirements and not requirements.is_file():
        raise UserError(f"{where}: requirements file {env.requirements!r} does not exist")
    post_install = folder / env.post_install if env.post_install else None
    if post_install and not (post_install.is_file() and requirements):
        raise UserError(f"{where}: post_install {env.post_install!r} must be a file, beside a requirements file")
    for sibling in m.image.with_backends:
        if not (folder.parent / sibling / "runner.py").is_file():
            raise UserError(f"{where} [image]: with_backends names {sibling!r}, which is not a backend folder beside it")
    dockerfile = folder / m.image.dockerfile if m.image.dockerfile else None
    if dockerfile and not dockerfile.is_file():
        raise UserError(f"{where}: dockerfile {m.image.dockerfile!r} does not exist")
    reference, variants, defaults = _expand_variants(where, m.variants)
    return Backend(
        name=m.name, folder=folder, description=m.description, runner=runner,
        formats=tuple(m.formats), devices=tuple(m.devices), archs=tuple(m.archs),
        default=m.default, fake=m.fake, requirements=requirements, build_env=env.build_env,
        cpu_features=env.cpu_features, post_install=post_install, dockerfile=dockerfile,
        engine_packages=tuple(m.image.engine_packages), with_backends=tuple(m.image.with_backends),
        base_image=m.image.base_image or "",
        reference_variant=reference, variants=variants, default_variants=defaults, min_head_dim=m.min_head_dim,
        weight_group_size=m.weight_group_size, serving_unsupported=m.serving_unsupported,
    )


def discover(root: Path = BACKENDS_DIR) -> tuple[dict[str, Backend], dict[str, str]]:
    """All backends under root: ({name: Backend}, {folder: why it is broken})."""
    good, broken = {}, {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        try:
            good[folder.name] = load_manifest(folder)
        except UserError as exc:
            broken[folder.name] = str(exc)
    for name, backend in list(good.items()):  # a variant made by another backend: its maker resolved once, here
        try:
            good[name] = replace(backend, variants=tuple(_with_maker(v, good) for v in backend.variants))
        except UserError as exc:
            broken[name] = f"backends/{name}/backend.toml: {exc}"
            del good[name]
    return good, broken


def _with_maker(variant: Variant, good: dict[str, Backend]) -> Variant:
    if not variant.made_by:
        return variant
    by = good.get(variant.made_by[0])
    made = next((v for v in by.variants if v.name == variant.made_by[1]), None) if by else None
    if made is None:
        raise UserError(f"variant {variant.name!r} is made by {':'.join(variant.made_by)}, which is not a variant of a "
                        "working backend")
    return replace(variant, maker=(by, made))


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


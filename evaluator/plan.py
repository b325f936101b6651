"""Planning: which cells a run has, in run order, and which of them cannot run here, known
before any environment is built or any runner starts (a reason instead of a measurement).

A cell is model x backend variant x target x scenario.
"""
import fnmatch
import platform
from dataclasses import dataclass

from evaluator import store
from evaluator.catalog import models
from evaluator.catalog.backends import Backend, Variant
from evaluator.catalog.targets import Target
from evaluator.errors import UserError
from evaluator.measure import fit, techniques
from evaluator.reference import Reference
from evaluator.score import quality

TECHNIQUES_WHY = ("the techniques (attention, train, flops, kv) are measured in plain PyTorch (pytorch_eager), which "
                  "exposes the model's layers; {backend} runs its own kernels")


@dataclass(frozen=True)
class Cell:
    id: str
    backend: Backend
    variant: Variant
    target: Target
    scenario: object
    unsupported: str | None  # known before anything runs
    engine_options: tuple = ()  # (key, value) pairs every runner gets on top of the variant's (--threads)
    model: str = ""  # the catalog name of the model this cell measures (a run may compare several)

    @property
    def options(self) -> dict:
        return dict(self.variant.options, **dict(self.engine_options))


def variants(backend: Backend, patterns: list[str] | None) -> list[Variant]:
    """The manifest's defaults without --variants; with it, every variant a glob matches."""
    if not patterns:
        return [v for v in backend.variants if v.name in backend.default_variants]
    return [v for v in backend.variants if any(fnmatch.fnmatchcase(v.name, p) for p in patterns)]


def unsupported(model: models.Model, backend: Backend, variant: Variant, target: Target) -> str | None:
    if target.transport == "ssh" and not backend.given_python:
        return (f"target {target.name} names no interpreter for {backend.name}: add {backend.name} (or default) to "
                f"its python table in the targets file")
    if target.transport in ("docker", "ssh-docker") and not backend.dockerfile:
        return f"{backend.name} has no image recipe ([image] dockerfile in its backend.toml), so it cannot run in Docker"
    if (target.transport == "docker" and target.arch != platform.machine() and backend.dockerfile
            and not backend.engine_packages):
        return (f"{backend.name} has no [image] engine_packages, so no {target.arch} image can be cross-built "
                f"on this {platform.machine()} machine")
    if target.arch not in backend.archs:
        return f"{backend.name} runs on {', '.join(backend.archs)}, target {target.name} is {target.arch}"
    if target.device not in backend.devices:
        return f"{backend.name} runs on {', '.join(backend.devices)}, target {target.name} offers {target.device}"
    if not set(backend.formats) & set(model.formats):
        return f"{backend.name} reads {', '.join(backend.formats)}; model {model.name} is available as {', '.join(model.formats)}"
    width = _head_dim(model)
    if backend.min_head_dim and width and width < backend.min_head_dim:
        return (f"{backend.name}'s attention kernels take heads at least {backend.min_head_dim} wide; {model.name}'s are "
                f"{width} (known from its config.json, so its environment is not built)")
    group, widths = backend.weight_group_size, _linear_inputs(model)
    if group and variant.options.get("quant", "fp32") != "fp32" and any(w % group for w in widths):
        return (f"{backend.name} quantizes weights in groups of {group} input features; {model.name}'s linear layers "
                f"take {' and '.join(map(str, sorted(widths)))} (its config.json says so: nothing installed)")
    if variant.maker:
        by, made = variant.maker
        why = unsupported(model, by, made, target)
        if why:
            return f"its weights are {by.name} {made.name}'s, which cannot be made here: {why}"
    return variant.unsupported_reason(target.device)


def _linear_inputs(model: models.Model) -> set[int]:
    """The input widths of a decoder's linear layers: the hidden size (q, k, v and the FFN's first
    layers), the attention output's (heads x head width) and the FFN's last layer's."""
    config, heads = model.config(), model.config().get("num_attention_heads")
    return {w for w in (config.get("hidden_size"), config.get("intermediate_size"),
                        heads and _head_dim(model) and heads * _head_dim(model)) if w}


def _head_dim(model: models.Model) -> int | None:
    config = model.config()
    heads = config.get("num_attention_heads")
    return config.get("head_dim") or (config["hidden_size"] // heads if heads and config.get("hidden_size") else None)


def fits(model: models.Model, variant: Variant, target: Target, scenario) -> str | None:
    """Preflight: weights + KV cache against the target's memory, before any runner starts."""
    tokens = getattr(scenario, "prompt_tokens", 0) + getattr(scenario, "new_tokens", 0)
    if isinstance(scenario, quality.Quality):
        tokens = scenario.ppl_window or min(model.config().get("max_position_embeddings", 1024), 1024)
    batch = max(getattr(scenario, "batch_sizes", (1,)))
    return fit.does_not_fit(model.config(), variant.options, tokens, batch, target.memory_gb, target.name)


def plan(model: models.Model, backends: list[Backend], variant_patterns: list[str] | None,
         target_list: list[Target], scenario_list: list, reference: Reference | None = None,
         engine_options: tuple = (), backends_on: dict | None = None) -> list[Cell]:
    """Every cell, in run order. With a quality scenario, the reference variant's quality cell
    is added on each target (or on the reference's own target) when the selection left it out.
    `backends_on` holds each target's own view of the backends (its prepared interpreters)."""
    cells = []
    for pattern in variant_patterns or []:
        if not any(fnmatch.fnmatchcase(v.name, pattern) for b in backends for v in b.variants):
            names = sorted({v.name for b in backends for v in b.variants})
            raise UserError(f"--variants {pattern!r} matches no variant of {', '.join(b.name for b in backends)}; "
                            f"available: {', '.join(names)}")
    for target in target_list:
        here = (backends_on or {}).get(target.name, backends)
        for backend in here:
            for variant in variants(backend, variant_patterns):
                for sc in scenario_list:
                    technique = sc.name in techniques.TECHNIQUES
                    if technique and variant.name != backend.reference_variant:
                        continue  # a technique sweeps its own axes: once per backend, on its reference variant
                    cid = store.cell_id(model.name, backend.name, variant.name, target.name, sc.name)
                    why = (unsupported(model, backend, variant, target) or fits(model, variant, target, sc)
                           or (TECHNIQUES_WHY.format(backend=backend.name) if technique and backend.name != "pytorch_eager"
                               else None)
                           or (backend.serving_unsupported if sc.name == "serving" else None))
                    cells.append(Cell(cid, backend, variant, target, sc, why, engine_options, model.name))
        quality_sc = next((sc for sc in scenario_list if isinstance(sc, quality.Quality)), None)
        if quality_sc and reference and reference.target in (None, target.name):
            variant = reference.variant
            backend = next((b for b in here if b.name == reference.backend.name), reference.backend)
            cid = store.cell_id(model.name, backend.name, variant.name, target.name, quality_sc.name)
            if cid not in {c.id for c in cells}:
                first = next(i for i, c in enumerate(cells) if c.target == target) if cells else 0
                cells.insert(first, Cell(cid, backend, variant, target, quality_sc,
                                         unsupported(model, backend, variant, target), engine_options, model.name))
    return cells

"""The reference every variant's quality is compared with: a configuration of this run (on
each target, or one target's for all), or one measured by an earlier run (`--reference-run`).

Quality depends only on the token ids the evaluator sends, so a reference measured elsewhere
is as good as one measured here, provided it scored the same weights, the same data files and
the same items and windows. An earlier run that did not is refused, saying what differs.
"""
import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from evaluator import store
from evaluator.catalog import backends as backend_catalog
from evaluator.catalog.backends import Backend, Variant
from evaluator.errors import UserError, unknown
from evaluator.score import hellaswag, perplexity
from evaluator.score.quality import Quality

# What must be equal for an earlier run's answers to pair with this run's, item by item.
# (top_k need not: a variant is sent the reference's own top ids, whatever their number.)
SAME_OPTIONS = ("seed", "ppl_window", "ppl_stride", "ppl_max_tokens", "fidelity_windows")


@dataclass(frozen=True)
class Reference:
    """The configuration every variant's quality is compared with: on each target its own
    (target None), or one target's for all (quality depends only on the token ids)."""
    backend: Backend
    variant: Variant
    target: str | None = None
    model: str | None = None  # with several models in a run, the first one's configuration

    @property
    def label(self) -> str:
        return f"{self.backend.name}:{self.variant.name}" + (f"@{self.target}" if self.target else "")

    def cell_for(self, cell, cells: list):
        """The reference quality cell `cell` is compared with, among `cells`."""
        where = self.target or cell.target.name
        return next((c for c in cells if isinstance(c.scenario, Quality) and c.backend.name == self.backend.name
                     and c.variant.name == self.variant.name and c.target.name == where
                     and self.model in (None, c.model)), None)


def parse_reference(text: str, target_names: list[str] | None = None) -> Reference:
    """`backend:variant[@target]`, e.g. pytorch_eager:fp32-sdpa-kv or llamacpp:f32@gpu-box."""
    spec, _, target = text.partition("@")
    if spec.count(":") != 1 or (_ and not target):
        raise UserError(f"--reference {text!r} must be BACKEND:VARIANT[@TARGET], e.g. pytorch_eager:fp32-sdpa-kv")
    name, variant = spec.split(":")
    backend = backend_catalog.select([name])[0]
    if target and target_names is not None and target not in target_names:
        raise UserError(f"--reference {text!r}: target {target!r} is not one of this run's targets: {', '.join(target_names)}")
    return Reference(backend, backend.variant(variant), target or None)


@cache
def data_hashes() -> dict:
    """The data files quality is scored on, by content."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (hellaswag.DATA, perplexity.DATA)}


@dataclass(frozen=True)
class Earlier:
    """A reference quality cell of an earlier run, standing in for one of this run."""
    id: str
    result: dict   # its cell result, `raw` made an absolute path


def load_earlier(run_id: str, reports: Path, reference: Reference, model_info: dict, sc: Quality) -> dict[str, Earlier]:
    """target name -> the earlier run's reference quality cell there, checked to pair with this run."""
    folder = Path(run_id) if (Path(run_id) / "run.json").is_file() else reports / run_id
    if not (folder / "run.json").is_file():
        raise unknown("run", run_id, sorted(p.parent.name for p in reports.glob("*/run.json")))
    other, cells = store.load_run(folder)
    what = f"--reference-run {run_id}"
    if other["model"].get("sha256") != model_info["sha256"]:
        raise UserError(f"{what} measured {other['model']['name']} ({str(other['model'].get('sha256'))[:12]}), this run "
                        f"{model_info['name']} ({model_info['sha256'][:12]}): quality pairs only on the same weights")
    if other.get("data") != data_hashes():
        raise UserError(f"{what} scored other data files than this checkout's ({', '.join(data_hashes())}), "
                        "or did not record them")
    refs = {c["target"]["name"]: c for c in cells if c["scenario"]["name"] == "quality" and c["status"] == "ok"
            and (c["backend"], c["variant"]) == (reference.backend.name, reference.variant.name)
            and reference.target in (None, c["target"]["name"])}
    if not refs:
        found = sorted({f"{c['backend']}:{c['variant']}@{c['target']['name']}" for c in cells
                        if c["scenario"]["name"] == "quality" and c["status"] == "ok"})
        raise UserError(f"{what} has no finished quality cell of {reference.label}; it has: {', '.join(found) or 'none'}")
    for target, c in refs.items():
        theirs = c["scenario"]["options"]
        for key in SAME_OPTIONS:
            if theirs.get(key) != getattr(sc, key):
                raise UserError(f"{what}: its reference on {target} used {key} = {theirs.get(key)!r}, this run "
                                f"{getattr(sc, key)!r}: the items or windows would not pair")
        if (theirs.get("items") == "auto") != sc.sequential:
            order = {True: "a seeded order (--quality-items auto)", False: "the files' own order"}
            raise UserError(f"{what}: its reference on {target} scored items and windows in {order[not sc.sequential]}, "
                            f"this run in {order[sc.sequential]}: they would not pair")
        scored = c["metrics"]["hellaswag"]["items"]
        if not sc.sequential and scored < sc.total_items:
            raise UserError(f"{what}: its reference on {target} scored {scored} HellaSwag items, this run asks for "
                            f"{sc.total_items} (--quality-items)")
    return {t: Earlier(f"{folder.name}/{c['cell_id']}", dict(c, raw=str(folder / c["raw"]))) for t, c in refs.items()}

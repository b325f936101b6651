"""Cell keys: the hash of everything that determines a cell's result (the model's bytes, every
file of its backend, the evaluator's measuring code, the data, the options, the target and this
machine). A resumed run keeps a finished cell only under an unchanged key, and a quality cell
takes an earlier run's answers only under it (score/reuse.py).
"""
import functools
import hashlib
import json

from evaluator import provenance
from evaluator.catalog import backends as backend_catalog
from evaluator.catalog.backends import Backend
from evaluator.measure import scenarios
from evaluator.plan import Cell
from evaluator.reference import data_hashes
from evaluator.score import quality


# The evaluator's code that takes part in producing a cell's numbers (the report's does not).
MEASURING_CODE = ("evaluator/runner", "evaluator/launch", "evaluator/measure", "evaluator/score", "evaluator/stats",
                  "evaluator/tokens.py", "evaluator/run.py", "evaluator/keys.py", "evaluator/weights.py", "evaluator/envs.py",
                  "evaluator/plan.py", "evaluator/evaluate.py", "evaluator/reference.py", "evaluator/store.py")


def _tree_hash(paths) -> str:
    h = hashlib.sha256()
    for path in sorted(paths):
        files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts) if path.is_dir() else [path]
        for f in files:
            h.update(str(f.relative_to(path.parent)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def backend_fingerprint(backend: Backend) -> str:
    """Everything of a backend that can change its answers: every file of its folder, and of
    each sibling folder its runner reuses ([image] with_backends: onnxruntime_gpu runs
    onnxruntime's runner and exporter)."""
    folders = {backend.folder, *(backend.folder.parent / name for name in backend.with_backends)}
    given = f"|given {backend.given_python[0]} ({backend.given_python[1]})" if backend.given_python else ""
    return _tree_hash(folders) + given


@functools.cache
def measuring_code_hash() -> str:
    return _tree_hash(backend_catalog.REPO / p for p in MEASURING_CODE)


def cell_key(cell: Cell, model_info: dict, check) -> str:
    """The hash of everything that determines a cell's result: a resumed run reuses a finished
    cell only while its key is unchanged (a changed model or backend never reuses a stale one),
    and a quality cell of a later run takes an earlier one's answers only under it (score/reuse.py)."""
    from evaluator.runner.protocol import PROTOCOL_VERSION

    what = {"protocol": PROTOCOL_VERSION, "model_sha256": model_info.get("sha256"),
            "backend": cell.backend.name, "backend_sha256": backend_fingerprint(cell.backend),
            # weights another backend makes change with that backend's files too
            "made_by": backend_fingerprint(cell.variant.maker[0]) if cell.variant.maker else None,
            "evaluator_sha256": measuring_code_hash(),
            "data": data_hashes() if isinstance(cell.scenario, quality.Quality) else None,
            "variant": cell.options, "target": vars(cell.target),
            "scenario": [cell.scenario.name, scenarios.options(cell.scenario)],
            "check_tokens": getattr(check, "new_tokens", None), "machine": provenance.machine_fingerprint()}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()

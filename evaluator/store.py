"""Run folders: reports/<run-id>/ holds run.json, cells/<cell-id>.json and index.html.

Every file is written atomically (temp file in the same folder, fsync, rename): a crash
never leaves half a result, and a finished cell is on disk the moment it finishes.
"""
import json
import os
import re
import secrets
import tempfile
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from evaluator.catalog.backends import REPO

SCHEMA_VERSION = 1
# Every status a cell can end with (run.py's docstring says what each means); the last nine are failures.
STATUSES = ("ok", "unsupported", "failed-preflight", "failed-load", "out-of-memory", "timeout",
            "crashed", "protocol-error", "invalid", "failed", "evaluator-error")
FAILED = frozenset(STATUSES) - {"ok", "unsupported"}
REPORTS = REPO / "reports"
# Converted and quantized models, keyed by (source hash, tool version, options); reused across runs.
ARTIFACTS = Path(os.environ.get("DEPLOY_EVAL_CACHE", REPO / ".cache" / "artifacts"))


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json(path: Path, obj, compact: bool = False) -> None:
    """Indented for a person to read; `compact` for bulk data (a quality cell's raw answers: an
    indented number per line would make them two and a half times larger)."""
    text = json.dumps(obj, separators=(",", ":")) if compact else json.dumps(obj, indent=1)
    write_atomic(path, text + "\n")


def new_run_id(model: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", model)[:40]
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}-{secrets.token_hex(2)}"


def cell_id(model: str, backend: str, variant: str, target: str, scenario: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", f"{model}__{backend}.{variant}__{target}__{scenario}")


def run_dir(run_id: str, root: Path = REPORTS) -> Path:
    return root / run_id


class Named(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str


class CellResult(BaseModel):
    """What every cell file holds, whatever its scenario: the fields every reader relies on
    (the scenario's own numbers ride along as extra fields, read by their scenario's code)."""
    model_config = ConfigDict(extra="allow")
    cell_id: str
    backend: str
    variant: str
    target: Named
    scenario: Named
    status: Literal[STATUSES]
    reason: str | None = None

    @model_validator(mode="after")
    def _said_why(self):
        if self.status != "ok" and not self.reason:
            raise ValueError(f"a cell that ends {self.status} must say why")
        return self


def read_cell(path: Path) -> dict | None:
    """One stored cell result, the one place cell files are read; None where there is none, or
    where the file is not a cell result (a cell is written atomically, so that is damage)."""
    try:
        cell = json.loads(path.read_text())
        CellResult.model_validate(cell)
    except (OSError, ValueError):  # pydantic's ValidationError is a ValueError
        return None
    return cell


def write_cell(path: Path, cell: dict) -> None:
    """A cell result, checked against CellResult first: a result no reader could read is the
    evaluator's bug, raised here, never stored."""
    CellResult.model_validate(cell)
    write_json(path, cell)


def load_run(path: Path) -> tuple[dict, list[dict]]:
    """run.json and every finished cell, in the order they were planned."""
    run = json.loads((path / "run.json").read_text())
    cells = [c for p in sorted((path / "cells").glob("*.json")) if (c := read_cell(p))]
    order = {cid: i for i, cid in enumerate(run.get("planned_cells", []))}
    cells.sort(key=lambda c: order.get(c["cell_id"], len(order)))
    return run, cells


def log_evaluator_bug(path: Path, doing: str) -> Path:
    """Append the exception being handled, with its traceback, to the run's logs/evaluator.log
    (a bug of the evaluator's own, never a runner's); returns the log's path."""
    import traceback

    log = path / "logs" / "evaluator.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as f:
        f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} evaluator bug while {doing} ---\n{traceback.format_exc()}\n")
    return log

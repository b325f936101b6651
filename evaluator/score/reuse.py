"""Quality answers kept across runs, so a run repeated on the same machine does not score again
what an identical configuration already scored.

A quality cell's answers (per HellaSwag item, per WikiText-2 window, the fidelity
distributions) are a function of its key (keys.cell_key: the model's bytes, every file of the
backend, the evaluator's measuring code, the data, the variant's options, the target, the
scenario's options and this machine) and of its reference's (a variant scores the ids its
reference ranked). Only cells on this machine take part (a remote target's identity is not
ours to fingerprint). After a run, each ok quality cell's answers are kept under that pair of
keys in the artifact cache; a later run whose cell has the same key starts from them
as if resuming: the quality budget scores only the items its verdicts still need, and a cell
whose kept answers already decide it starts no runner at all. Only the answers are taken: the
earlier session's load time, memory and phases are not, so every such number in a report was
measured in its own run. The report names each cell that took answers, and from which run;
`--rescore` scores everything again (lm-evaluation-harness's request cache, `--use_cache`,
plays the same part).
"""
import fcntl
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

from evaluator import provenance, store
from evaluator.score import stored


def root() -> Path:
    """Where answers are kept: beside the artifacts, or DEPLOY_EVAL_ANSWERS."""
    return Path(os.environ.get("DEPLOY_EVAL_ANSWERS") or store.ARTIFACTS / "quality-answers")


def items(result: dict) -> int:
    return result["metrics"]["hellaswag"]["items"]


def reused_from(result: dict) -> dict | None:
    """The earlier run whose answers this cell started from, if it did."""
    return next((r["reused_from"] for r in result.get("rounds") or [] if r.get("reused_from")), None)


def key(cell_key: str, reference_key: str | None) -> str:
    """What a quality cell's answers depend on: its own cell key, and its reference's (a
    variant's answers hold the log-probabilities of the ids its reference ranked, and their KL
    against it; a reference's hold its own top lists: None)."""
    return hashlib.sha256(f"{cell_key}|{reference_key or 'reference'}".encode()).hexdigest()


def take(answers_key: str, cell_id: str, run_path: Path, run_id: str, model_info: dict) -> dict | None:
    """The cell result that starts from the answers kept under `answers_key`, its raw answers
    placed in this run's folder; None where none are kept (or what is kept cannot be read)."""
    kept = store.read_cell(root() / f"{answers_key}.json")
    if not kept or kept.get("answers_key") != answers_key:
        return None
    raw = f"raw/{cell_id}.json"
    try:
        stored.read(root() / kept["raw"])
        _place(root() / kept["raw"], run_path / raw)
    except (stored.Malformed, OSError):  # damaged, or replaced by another run meanwhile: score instead
        return None
    n, order = items(kept), kept["metrics"]["hellaswag"]["order"]
    origin = {"run_id": kept["run_id"], "cell_id": kept["cell_id"], "started_at": kept.get("started_at"), "items": n}
    # The answers only: not the earlier session's measurements, nor what it said of itself.
    result = {k: v for k, v in kept.items() if k not in (
        "load", "memory", "phases", "fidelity", "fidelity_llamacpp", "quality_gate", "quality_gate_error",
        "answers_key", "finished_at", "log_tail")}
    # Final only where nothing is left to score: whether its verdict is known is the gate's to
    # say again, against this run's reference and allowed loss.
    stopped = f"{n:,} answers reused from run {kept['run_id']}"
    result["metrics"] = dict(kept["metrics"], hellaswag=dict(
        kept["metrics"]["hellaswag"], order=dict(order, stopped=stopped, final=n >= order["planned"])))
    result.update(run_id=run_id, cell_id=cell_id, raw=raw, wall_s=0.0, model=model_info,
                  started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), evaluator_revision=provenance.git_revision(),
                  rounds=[{"upto": n, "scored": n, "stopped": stopped, "wall_s": 0.0, "phases": {}, "reused_from": origin}])
    return result


def keep(run_path: Path, result: dict, answers_key: str) -> bool:
    """Keep an ok quality cell's answers under `answers_key`, unless as many are kept already
    (and readable). One run keeps at a time (a lock): entries never pair one run's record with
    another's answers."""
    if result.get("status") != "ok" or not result.get("raw"):
        return False
    root().mkdir(parents=True, exist_ok=True)
    with open(root() / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        kept = store.read_cell(root() / f"{answers_key}.json")
        if kept and kept.get("answers_key") == answers_key and items(kept) >= items(result) and _readable(root() / kept["raw"]):
            return False
        raw = f"{answers_key}.{items(result)}.raw.json"
        _place(run_path / result["raw"], root() / raw)
        store.write_json(root() / f"{answers_key}.json", dict(result, raw=raw, answers_key=answers_key))
        if kept and kept.get("raw") != raw:
            (root() / kept["raw"]).unlink(missing_ok=True)
    return True


def _readable(path: Path) -> bool:
    try:
        stored.read(path)
    except stored.Malformed:
        return False
    return True


def _place(source: Path, dest: Path) -> None:
    """`dest` becomes a copy of `source`, atomically; a hard link where both are on one
    filesystem (answers files are replaced whole, never written into, so a link is safe)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.unlink(tmp)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, dest)
        Path(tmp).unlink(missing_ok=True)  # already a link to dest's file: rename() does nothing
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


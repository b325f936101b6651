"""Quality answers kept across runs (score/reuse.py): a repeated run starts from an identical
configuration's answers and starts no runner for them; `--rescore` and any change of the key
score again; what is kept is only ever replaced by more."""
import json

import pytest

from evaluator.score import reuse
from tests.conftest import run_cli
from tests.test_eval import cells, run_folder

QUICK = ["stories260k", "--backends", "pytorch_eager", "--variants", "fp32-sdpa-kv,bf16-sdpa-kv",
         "--scenarios", "quality", "--limit", "60", "--ppl-tokens", "3000"]


@pytest.fixture(scope="module")
def kept(tmp_path_factory):
    """One run that keeps its answers in a folder of its own, and its report folder."""
    answers, reports = tmp_path_factory.mktemp("answers"), tmp_path_factory.mktemp("reports")
    env = {"DEPLOY_EVAL_ANSWERS": str(answers)}
    proc = run_cli("eval", *QUICK, "--reports", str(reports), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return env, reports, run_folder(proc.stderr, reports)


def _quality(folder):
    return {c["variant"]: c for c in cells(folder).values() if c["scenario"]["name"] == "quality"}


def test_a_repeated_run_reuses_the_answers_and_starts_no_runner_for_them(kept):
    env, reports, first = kept
    proc = run_cli("eval", *QUICK, "--reports", str(reports), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = run_folder(proc.stderr, reports)
    before, after = _quality(first), _quality(again)
    for variant, cell in after.items():
        origin = reuse.reused_from(cell)
        assert origin and origin["run_id"] == first.name and origin["items"] == 60, variant
        assert cell["metrics"]["hellaswag"]["acc_norm"] == before[variant]["metrics"]["hellaswag"]["acc_norm"]
        assert "load" not in cell and "memory" not in cell, "the earlier session's measurements are not carried over"
        assert not (again / "logs" / f"{cell['cell_id']}.log").exists(), "no runner was started"
        assert (again / cell["raw"]).is_file()
    # The comparison is made again, against this run's reference, with the same answers.
    assert after["bf16-sdpa-kv"]["quality_gate"]["verdict"] == before["bf16-sdpa-kv"]["quality_gate"]["verdict"]
    assert after["bf16-sdpa-kv"]["fidelity"]["kl_mean"] == before["bf16-sdpa-kv"]["fidelity"]["kl_mean"]
    assert "reused" in proc.stderr and "--rescore scores them again" in proc.stderr
    assert "Quality answers reused" in (again / "index.html").read_text()


def test_rescore_a_changed_key_and_another_reference_score_again(kept):
    env, reports, first = kept
    # (another reference: a variant's answers hold the ids its reference ranked, and their KL)
    for extra in (["--rescore"], ["--seed", "7"], ["--reference", "pytorch_eager:bf16-sdpa-kv"]):
        proc = run_cli("eval", *QUICK, *extra, "--reports", str(reports), env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        folder = run_folder(proc.stderr, reports)
        for cell in _quality(folder).values():
            assert reuse.reused_from(cell) is None, extra
            assert (folder / "logs" / f"{cell['cell_id']}.log").exists(), extra


def test_only_more_answers_replace_what_is_kept_and_damage_is_mended(kept, tmp_path, monkeypatch):
    env, _, first = kept
    monkeypatch.setenv("DEPLOY_EVAL_ANSWERS", str(tmp_path / "answers"))
    cell = _quality(first)["fp32-sdpa-kv"]
    key = reuse.key(cell["key"], None)
    assert reuse.keep(first, cell, key) and not reuse.keep(first, cell, key), "as many items: kept once"
    fewer = json.loads(json.dumps(cell))
    fewer["metrics"]["hellaswag"]["items"] = 30
    assert not reuse.keep(first, fewer, key)
    more = json.loads(json.dumps(cell))
    more["metrics"]["hellaswag"]["items"] = 90
    assert reuse.keep(first, more, key)
    files = sorted(p.name for p in (tmp_path / "answers").iterdir() if not p.name.startswith("."))
    assert files == sorted([f"{key}.json", f"{key}.90.raw.json"]), "the replaced answers are removed"
    # Damaged kept answers are not taken (the cell is scored instead), and the next keep mends them.
    damaged = tmp_path / "answers" / f"{key}.90.raw.json"
    damaged.unlink()  # a hard link to the run's own file: replaced, as every writer here replaces
    damaged.write_text("{not json")
    assert reuse.take(key, cell["cell_id"], tmp_path / "run", "now", cell["model"]) is None
    assert reuse.keep(first, more, key)
    assert reuse.take(key, cell["cell_id"], tmp_path / "run", "now", cell["model"])["metrics"]["hellaswag"]["items"] == 90
    # A variant's answers are kept under its reference's key too: another reference, another key.
    assert reuse.key(cell["key"], "one reference") != reuse.key(cell["key"], "another") != key

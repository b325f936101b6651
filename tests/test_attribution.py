"""Failures attributed to the right party: an evaluator bug is the evaluator's (in a cell,
between cells, in a result no reader could read), never a runner's, and never loses the
finished cells or the report; a dead run's runner is named before anything is measured."""
from conftest import run_cli


def test_an_evaluator_bug_ends_its_cell_as_evaluator_error_not_as_the_runners(tmp_path, monkeypatch):
    """A TypeError in the evaluator's own code, after every runner answer passed its shape check:
    the cell says evaluator-error with the traceback in its log, never protocol-error."""
    from evaluator import plan, run, store
    from evaluator.catalog import backends, models, targets
    from evaluator.measure import scenarios
    from evaluator.tokens import HostTokenizer

    model = models.resolve("stories260k")
    null = backends.select(["null"])[0]
    sc = scenarios.Latency(min_iterations=2, min_duration_s=0, warmup=0, new_tokens=4, precision=1e9)
    cell = plan.Cell(store.cell_id("stories260k", "null", "none", "local", "latency"), null, null.variant("none"),
                    targets.resolve(["local"])[0], sc, None)

    def broken(*args, **kwargs):
        return 1 + None  # the kind of slip a refactoring leaves behind

    monkeypatch.setattr(scenarios, "run_latency", broken)
    result = run.run_cell(cell, model, {"name": "stories260k"}, HostTokenizer(model.hf_path), tmp_path, "t",
                          scenarios.Check(new_tokens=4), run.Deadlines())
    assert result["status"] == "evaluator-error" and "TypeError" in result["reason"], result
    assert "deploy-eval evaluator traceback" in (tmp_path / "logs" / f"{cell.id}.log").read_text()


def test_an_evaluator_bug_between_cells_keeps_the_finished_cells_and_writes_the_report(tmp_path, monkeypatch, capsys):
    """A slip in the evaluator after the timing cells ran (outside any one cell): exit 1, the
    cells on disk, the report written, the traceback in logs/evaluator.log."""
    from evaluator import cli, evaluate

    real = evaluate._side_by_side

    def slips_after(cells, work):
        real(cells, work)
        return {}["planned"]  # a KeyError of the evaluator's own

    monkeypatch.setattr(evaluate, "_side_by_side", slips_after)
    rc = cli.main(["eval", "stories260k", "--backends", "null", "--scenarios", "latency", "--variants", "none",
                   "--min-iterations", "2", "--min-duration", "0", "--warmup", "0", "--precision", "1e9",
                   "--new-tokens", "4", "--reports", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1, err
    (run_dir,) = tmp_path.iterdir()
    assert rc == 1 and "evaluator bug: KeyError" in err and "1 of 1 cells finished and kept" in err, err
    assert len(list((run_dir / "cells").glob("*.json"))) == 1 and (run_dir / "index.html").is_file()
    assert "Traceback" in (run_dir / "logs" / "evaluator.log").read_text()


def test_a_run_refuses_to_measure_beside_a_dead_runs_runner(tmp_path):
    """A runner whose evaluator is gone (it carries that evaluator's pid) still holds the machine:
    the next run names it and refuses, before it writes anything."""
    import os
    import subprocess
    import sys

    from evaluator.launch.process import OWNER_ENV

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # an evaluator that has died
    orphan = subprocess.Popen(["sleep", "120"], env=dict(os.environ, **{OWNER_ENV: str(gone.pid)}))
    try:
        proc = run_cli("eval", "stories260k", "--backends", "null", "--reports", str(tmp_path / "r"))
    finally:
        orphan.kill()
        orphan.wait()
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"pid {orphan.pid}: sleep 120" in proc.stderr and f"kill -9 {orphan.pid}" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_a_cell_result_is_typed_where_it_is_written_and_where_it_is_read(tmp_path):
    """store.write_cell refuses what no reader could read; store.read_cell (the one reader: the
    run, the resume and the report) skips a damaged file instead of losing the report."""
    import pytest

    from evaluator import store

    good = {"cell_id": "c1", "backend": "b", "variant": "v", "target": {"name": "local"},
            "scenario": {"name": "latency"}, "status": "ok"}
    store.write_cell(tmp_path / "cells" / "c1.json", good)
    for bad in (dict(good, status="fine"), dict(good, status="crashed"), {k: v for k, v in good.items() if k != "backend"}):
        with pytest.raises(ValueError):
            store.write_cell(tmp_path / "cells" / "c2.json", bad)
    assert not (tmp_path / "cells" / "c2.json").exists()
    (tmp_path / "cells" / "c3.json").write_text('{"cell_id": "c3", "status": ')  # damage from outside
    store.write_json(tmp_path / "run.json", {"planned_cells": ["c1", "c3"]})
    _, cells = store.load_run(tmp_path)
    assert [c["cell_id"] for c in cells] == ["c1"] and store.read_cell(tmp_path / "cells" / "c3.json") is None

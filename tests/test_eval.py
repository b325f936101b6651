"""`just eval` end to end, as a user runs it: real runners, real files, real exit codes."""
import json
from html.parser import HTMLParser

import pytest

from tests.conftest import REPO, run_cli

FAST = ["--min-iterations", "3", "--min-duration", "0", "--warmup", "1", "--new-tokens", "8", "--batch-sizes", "1,2",
        "--precision", "1e9"]  # plumbing, not stability: a few tiny requests scatter


def run_folder(stderr: str, reports):
    line = next(x for x in stderr.splitlines() if x.startswith("run "))
    return reports / line.split()[1].rstrip(":")


def cells(folder):
    return {p.stem: json.loads(p.read_text()) for p in (folder / "cells").glob("*.json")}


@pytest.fixture(scope="module")
def eager_run(tmp_path_factory):
    reports = tmp_path_factory.mktemp("reports")
    proc = run_cli("eval", "stories260k", "--backends", "pytorch_eager", "--variants", "fp32-sdpa-kv,fp16-sdpa-kv,bf16-sdpa-kv",
                   "--scenarios", "latency,throughput", "--reports", str(reports), *FAST)
    return proc, run_folder(proc.stderr, reports)


def test_eval_writes_one_result_per_cell_and_an_html_page(eager_run):
    proc, folder = eager_run
    assert proc.returncode == 0, proc.stderr
    results = cells(folder)
    assert len(results) == 6  # 3 variants x 2 scenarios on the local target
    run = json.loads((folder / "run.json").read_text())
    assert sorted(run["planned_cells"]) == sorted(results)
    assert run["host"]["cpu"] and run["host"]["git_revision"] and run["model"]["sha256"]
    assert (folder / "index.html").stat().st_size > 1000
    assert not list(folder.rglob("*.tmp")), "no half-written files"


def test_fp32_cell_checks_the_reference_then_measures_everything(eager_run):
    _, folder = eager_run
    c = cells(folder)["stories260k__pytorch_eager.fp32-sdpa-kv__local__latency"]
    assert c["status"] == "ok" and c["schema"] == 1
    assert c["check"]["matches_reference"] is True and len(c["check"]["tokens"]) == 256
    m = c["metrics"]
    for key in ("e2e_ms", "ttft_ms", "itl_ms", "tpot_ms", "prefill_tokens_per_s", "decode_tokens_per_s"):
        assert m[key]["n"] >= 1 and m[key]["mean"] > 0 and len(m[key]["samples"]) == m[key]["n"], key
        lo, hi = m[key]["p50_ci"]
        # Each interval holds its own estimate (a skewed sample's mean may sit below the median's interval).
        assert lo <= m[key]["p50"] <= hi and m[key]["mean_ci"][0] <= m[key]["mean"] <= m[key]["mean_ci"][1], key
        assert (m[key]["p95"] is None) == (m[key]["n"] < 72) and (m[key]["p99"] is None) == (m[key]["n"] < 368), key
    assert c["validity"]["valid"] and c["validity"]["rules"][0] == {"rule": "at least 3 requests", "met": True,
                                                                    "value": str(c["iterations"])}
    assert c["iterations"] >= 3 and m["itl_ms"]["n"] == 7 * c["iterations"]
    assert m["ttft_ms"]["mean"] < m["e2e_ms"]["mean"]
    assert c["memory"]["peak_rss_bytes"] >= c["load"]["rss_bytes"] > 0
    assert c["parameters"] == 260032 and c["model"]["size_bytes"] == 1044992
    assert c["engine"]["versions"]["torch"].startswith("2.13.0") and c["environment"] == ".venvs/pytorch_eager/bin/python"


def test_throughput_cell_sweeps_batch_sizes(eager_run):
    _, folder = eager_run
    c = cells(folder)["stories260k__pytorch_eager.fp32-sdpa-kv__local__throughput"]
    assert [b["batch_size"] for b in c["metrics"]["per_batch"]] == [1, 2]
    assert c["metrics"]["best_tokens_per_s"] > 0


def test_fp16_on_cpu_is_listed_as_unsupported_with_its_reason(eager_run):
    _, folder = eager_run
    c = cells(folder)["stories260k__pytorch_eager.fp16-sdpa-kv__local__latency"]
    assert c["status"] == "unsupported" and "GPU" in c["reason"] and "metrics" not in c


def test_html_is_well_formed_and_carries_the_numbers(eager_run):
    _, folder = eager_run
    page = (folder / "index.html").read_text()

    class Checker(HTMLParser):
        stack, errors = [], []
        VOID = {"meta", "br", "hr", "img", "link", "input"}

        def handle_starttag(self, tag, attrs):
            if tag not in self.VOID:
                self.stack.append(tag)

        def handle_endtag(self, tag):
            if not self.stack or self.stack.pop() != tag:
                self.errors.append(tag)

    checker = Checker()
    checker.feed(page)
    assert not checker.errors and not checker.stack
    c = cells(folder)["stories260k__pytorch_eager.fp32-sdpa-kv__local__latency"]
    from evaluator.report.tables import fmt
    assert fmt(c["metrics"]["e2e_ms"]["p50"]) in page and "fp16-sdpa-kv" in page and "✔ greedy text matches" in page


def test_report_rebuilds_the_page_from_stored_results(eager_run):
    _, folder = eager_run
    before = (folder / "index.html").read_text()
    (folder / "index.html").unlink()
    proc = run_cli("report", str(folder))
    assert proc.returncode == 0 and (folder / "index.html").read_text() == before


def test_a_dying_runner_fails_its_cell_and_the_run_goes_on(tmp_path):
    proc = run_cli("eval", "stories260k", "--backends", "null", "--scenarios", "latency",
                   "--variants", "crash_on_generate,hang_on_generate,none,garbage_on_generate,wrong_token_count",
                   "--request-timeout", "3", "--reports", str(tmp_path), *FAST)
    assert proc.returncode == 1, proc.stderr
    results = {c["variant"]: c for c in cells(run_folder(proc.stderr, tmp_path)).values()}
    expected = {"crash_on_generate": "crashed", "hang_on_generate": "timeout", "none": "ok",
                "garbage_on_generate": "protocol-error", "wrong_token_count": "invalid"}
    assert {v: c["status"] for v, c in results.items()} == expected
    crashed = results["crash_on_generate"]
    assert "exited with code 3" in crashed["reason"] and "metrics" not in crashed and crashed["log_tail"] is not None
    assert "4 of 5 cells failed" in proc.stderr and "crash_on_generate" in proc.stderr


@pytest.mark.parametrize("args, words", [
    (["eval", "stories260"], "unknown model 'stories260'. Did you mean: stories260k?"),
    (["eval", "stories260k", "--backends", "pytorch-eager"], "Did you mean: pytorch_eager?"),
    (["eval", "stories260k", "--targets", "rpi"], "Did you mean: rpi5?"),
    (["eval", "stories260k", "--variants", "fp64-*"], "matches no variant"),
    (["eval", "stories260k", "--scenarios", "latencyy"], "Did you mean: latency?"),
    (["eval", "stories260k", "--new-tokens", "0"], "must be >= 1"),
    (["eval", "stories260k", "--batch-sizes", "1,x"], "not an integer"),
    (["eval", "stories260k", "--prompt-tokens", "500"], "exceeds the model's context of 512"),
    (["eval", "stories260k", "--model-path", "/no/such/dir"], "no such file or folder"),
    (["eval", "stories260k", "--request-timeout", "0"], "must be > 0"),
    (["eval"], "eval needs a MODEL"),
    (["report", "no-such-run"], "unknown run 'no-such-run'"),
    (["compare", "no-such-run", "other"], "unknown run 'no-such-run'"),
    (["eval", "stories260k", "--objective", "fastest"], "unknown objective 'fastest'; valid: decode, latency"),
    (["eval", "stories260k", "--memory-budget", "-8"], "--memory-budget must be > 0"),
    (["eval", "stories260k", "--max-quality-loss", "-1"], "--max-quality-loss must be >= 0"),
    (["eval", "stories260k", "--max-latency-ms", "0"], "must be > 0"),
    (["eval", "stories260k", "--precision", "0"], "--precision must be > 0 percent"),
    (["eval", "stories260k", "--max-time", "-1"], "--max-time must be > 0 seconds"),
    (["eval", "stories260k", "--quality-items", "some"], "'some' is not auto, all or a positive number of items"),
    (["eval", "stories260k", "--reference", "pytorch_eager:fp32-sdpa-kv@gpu"], "target 'gpu' is not one of this run's targets"),
    (["eval", "stories260k", "--cell-timeout", "-1"], "--cell-timeout must be > 0"),
    (["eval", "stories260k", "--reference", "pytorch_eager"], "must be BACKEND:VARIANT"),
    (["eval", "stories260k", "--reference", "pytorch_eager:fp64"], "fp64"),
    (["eval", "stories260k", "--ppl-window", "4096"], "exceeds stories260k's context of 512"),
    (["eval", "stories260k", "--ppl-window", "64", "--ppl-stride", "64"], "must be smaller than --ppl-window"),
    (["eval", "synthetic:hidden_size=7"], "synthetic"),
    (["fly"], "invalid choice"),
])
def test_bad_input_gives_one_line_and_exit_2_and_writes_nothing(tmp_path, args, words):
    extra = ["--reports", str(tmp_path)] if args[0] in ("eval", "report") and len(args) > 1 else []
    proc = run_cli(*args, *extra)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], proc.stderr
    assert not list(tmp_path.iterdir()), "a refused run writes nothing"


def test_a_remote_target_without_a_host_is_bad_input_naming_the_file_and_key(tmp_path):
    proc = run_cli("eval", "stories260k", "--backends", "null", "--variants", "none", "--targets", "local,rtx3090",
                   "--scenarios", "latency", "--reports", str(tmp_path), *FAST)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "target rtx3090 has no host" in lines[0] and "[rtx3090]" in lines[0] and "targets.toml" in lines[0]
    assert not list(tmp_path.iterdir()), "a refused run writes nothing"


def test_tensorrt_llm_cells_here_are_unsupported_with_the_reason_and_build_nothing(tmp_path):
    proc = run_cli("eval", "stories260k", "--backends", "tensorrt_llm", "--scenarios", "latency", "--reports", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    found = cells(run_folder(proc.stderr, tmp_path)).values()
    assert {c["variant"] for c in found} == {"bf16-pytorch", "bf16-engine"}
    assert all(c["status"] == "unsupported" and "cuda" in c["reason"] for c in found)
    assert "setting up the tensorrt_llm environment" not in proc.stderr


def test_backends_command_lists_every_backend():
    proc = run_cli("backends")
    assert proc.returncode == 0 and "pytorch_eager" in proc.stdout and "null" in proc.stdout and "tensorrt_llm" in proc.stdout
    assert "BROKEN" not in proc.stderr


def test_a_malformed_answer_fails_its_cell_not_the_run(tmp_path):
    proc = run_cli("eval", "stories260k", "--backends", "null", "--variants", "malformed_score", "--scenarios", "quality",
                   "--limit", "5", "--ppl-tokens", "600", "--reports", str(tmp_path))
    assert proc.returncode == 1, proc.stderr
    results = {c["backend"]: c for c in cells(run_folder(proc.stderr, tmp_path)).values()}
    assert results["null"]["status"] == "protocol-error" and "malformed answer" in results["null"]["reason"]
    assert results["pytorch_eager"]["status"] == "ok"  # the reference joined the run and completed


def test_a_killed_run_resumes_where_it_stopped_and_keeps_finished_cells(tmp_path):
    """kill -9 of the evaluator itself mid-run, then --resume: finished cells survive untouched,
    the rest run, and nothing half-written is left."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = [sys.executable, "-m", "evaluator", "eval", "stories260k", "--backends", "null", "--scenarios", "latency",
            "--variants", "none,slow_tokens", "--min-iterations", "60", "--min-duration", "0", "--warmup", "0", "--precision", "1e9",
            "--new-tokens", "8", "--reports", str(tmp_path)]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("*/cells/*none*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # slow_tokens is mid-measurement: 60 x 8 x 20 ms
    proc.wait()
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    first = cells(folder)
    assert list(first) == ["stories260k__null.none__local__latency"]
    before = (folder / "cells" / "stories260k__null.none__local__latency.json").read_text()

    resumed = run_cli("eval", "--resume", folder.name, "--reports", str(tmp_path))
    assert resumed.returncode == 0, resumed.stderr
    assert "kept from before the resume" in resumed.stderr
    after = cells(folder)
    assert sorted(after) == sorted(json.loads((folder / "run.json").read_text())["planned_cells"])
    assert all(c["status"] == "ok" for c in after.values())
    assert (folder / "cells" / "stories260k__null.none__local__latency.json").read_text() == before
    assert json.loads((folder / "run.json").read_text())["resumed_at"]
    assert not list(folder.rglob("*.tmp"))


def test_resume_refuses_other_arguments_and_unknown_runs(tmp_path):
    assert "takes no model or other options (given: stories260k)" in run_cli(
        "eval", "stories260k", "--resume", "x", "--reports", str(tmp_path)).stderr
    proc = run_cli("eval", "--resume", "x", "--rescore", "--reports", str(tmp_path))
    assert proc.returncode == 2 and "takes no model or other options (given: --rescore)" in proc.stderr
    proc = run_cli("eval", "--resume", "nope", "--reports", str(tmp_path))
    assert proc.returncode == 2 and "unknown run 'nope'" in proc.stderr


def test_truncated_safetensors_and_corrupt_gguf_fail_their_cells_with_the_reason(tmp_path):
    import shutil

    model = tmp_path / "broken"
    shutil.copytree(REPO / "data" / "stories260k" / "hf", model)
    weights = (REPO / "data" / "stories260k" / "hf" / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    (model / "model.gguf").write_bytes((REPO / "data" / "stories260k" / "stories260K.gguf").read_bytes()[:4000])
    env = {"DEPLOY_EVAL_CACHE": str(tmp_path / "cache")}
    proc = run_cli("eval", "broken", "--model-path", str(model), "--variants", "fp32-sdpa-kv,q8_0", "--scenarios", "latency",
                   "--reports", str(tmp_path / "reports"), *FAST, env=env)
    assert proc.returncode == 1, proc.stderr
    results = {c["backend"]: c for c in cells(run_folder(proc.stderr, tmp_path / "reports")).values()}
    assert results["pytorch_eager"]["status"] == "failed-load" and "SafetensorError" in results["pytorch_eager"]["reason"]
    assert results["llamacpp"]["status"] == "failed-load" and "complete GGUF" in results["llamacpp"]["reason"]
    assert not list((tmp_path / "cache").glob("*"))
    assert "2 of 2 cells failed" in proc.stderr


def test_ctrl_c_stops_the_run_at_once_and_keeps_the_finished_cells_and_a_report(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import runners_of

    args = [sys.executable, "-m", "evaluator", "eval", "stories260k", "--backends", "null", "--scenarios", "latency",
            "--variants", "none,slow_tokens", "--min-iterations", "200", "--min-duration", "0", "--warmup", "0",
            "--precision", "1e9", "--new-tokens", "8", "--reports", str(tmp_path)]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("*/cells/*none*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1)  # slow_tokens is mid-measurement: 200 x 8 x 20 ms
    sent = time.monotonic()
    os.kill(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert time.monotonic() - sent < 15, "a running cell is stopped, not waited for"
    folder = run_folder(stderr, tmp_path)
    assert list(cells(folder)) == ["stories260k__null.none__local__latency"]
    assert "interrupted: 1 of 2 cells finished and kept" in stderr and (folder / "index.html").is_file()
    assert f"just eval --resume {folder.name}" in stderr
    assert runners_of(proc.pid) == [] and not list(folder.rglob("*.tmp"))


def test_a_second_eval_on_the_same_machine_is_refused_before_it_writes_anything(tmp_path):
    from evaluator.launch import leftovers

    with leftovers.hold_machine("run of a test"):
        proc = run_cli("eval", "stories260k", "--backends", "null", "--reports", str(tmp_path / "r"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "another deploy-eval run is measuring on this machine (pid" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_a_change_to_a_sibling_runner_re_runs_the_cell_on_resume(tmp_path, monkeypatch):
    """onnxruntime_gpu runs backends/onnxruntime's runner: a change there must not let --resume
    keep a result measured with the old code; nor a change to the evaluator's scoring code."""
    import shutil

    from evaluator import keys, plan, run, store
    from evaluator.catalog import backends, models, targets
    from evaluator.measure import scenarios

    copy = tmp_path / "backends"
    for name in ("onnxruntime", "onnxruntime_gpu"):
        shutil.copytree(backends.BACKENDS_DIR / name, copy / name)
    monkeypatch.setattr(backends, "BACKENDS_DIR", copy)
    gpu = backends.load_manifest(copy / "onnxruntime_gpu")
    model = models.resolve("stories260k")
    sc = scenarios.Latency()
    cell = plan.Cell(store.cell_id("stories260k", "onnxruntime_gpu", "cuda-fp16", "local", "latency"), gpu,
                    gpu.variant("cuda-fp16"), targets.resolve(["local"])[0], sc, None)
    info, check = {"name": "stories260k", "sha256": model.content_hash()}, scenarios.Check()
    store.write_json(tmp_path / "cells" / f"{cell.id}.json", {
        "cell_id": cell.id, "backend": gpu.name, "variant": "cuda-fp16", "target": {"name": "local"},
        "scenario": {"name": "latency"}, "status": "ok", "key": keys.cell_key(cell, info, check)})
    assert run.finished(tmp_path, cell, info, check), "unchanged: kept"
    runner = copy / "onnxruntime" / "runner.py"
    runner.write_text(runner.read_text() + "\n# a change to the runner onnxruntime_gpu reuses\n")
    assert run.finished(tmp_path, cell, info, check) is None, "the sibling changed: re-run"


def test_a_backend_that_cannot_run_the_model_is_planned_out_without_its_environment(tmp_path):
    """vLLM's CPU kernels need heads at least 32 wide; stories260K's are 8: every vLLM cell is
    unsupported at planning, so no runner starts and no 3 GB environment is built to say so."""
    proc = run_cli("eval", "stories260k", "--backends", "vllm", "--scenarios", "latency", "--reports", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "setting up the vllm environment" not in proc.stderr
    got = cells(run_folder(proc.stderr, tmp_path))
    assert {c["status"] for c in got.values()} == {"unsupported"}
    assert all("heads at least 32 wide; stories260k's are 8" in c["reason"] and "environment" not in c for c in got.values())

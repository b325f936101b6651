"""Trust: every fault of the null backend ends its cell in its exact status while its siblings
complete; noisy or inconsistent measurements are INVALID with their reasons; deadlines kill;
a configuration that cannot fit is marked before anything runs."""
import json

import pytest

from tests.conftest import run_cli
from tests.test_eval import cells, run_folder

QUIET = ["--min-iterations", "5", "--min-duration", "0", "--warmup", "1", "--new-tokens", "8", "--check-tokens", "8",
         "--precision", "100000"]  # plumbing, not precision: the null engine answers in microseconds

# fault -> (status, words in the reason)
MATRIX = {
    "none": ("ok", None),
    "crash_on_load": ("crashed", "exited with code 3 during load"),
    "crash_on_generate": ("crashed", "exited with code 3"),
    "hang_on_generate": ("timeout", "no answer to generate within 3 s"),
    "oom_on_load": ("out-of-memory", "simulated out of memory"),
    "alloc_beyond_limit": ("out-of-memory", "1 GiB refused under a 256 MiB address-space limit"),
    "garbage_on_generate": ("protocol-error", "not a JSON object"),
    "truncated_on_generate": ("protocol-error", '{"id": 99, "ok": tr'),
    "wrong_token_count": ("invalid", "asked for 1 x 8 tokens, got [7]"),
    "inconsistent_tokens": ("invalid", "is not what scoring the same prompt ranks first"),
    "slow_tokens": ("ok", None),
}


@pytest.fixture(scope="module")
def fault_run(tmp_path_factory):
    reports = tmp_path_factory.mktemp("reports")
    proc = run_cli("eval", "stories260k", "--backends", "null", "--scenarios", "latency", "--variants", ",".join(MATRIX),
                   "--request-timeout", "3", "--reports", str(reports), *QUIET)
    return proc, {c["variant"]: c for c in cells(run_folder(proc.stderr, reports)).values()}


@pytest.mark.parametrize("fault", MATRIX)
def test_each_fault_ends_in_its_exact_status_with_a_reason_and_no_numbers(fault_run, fault):
    _, results = fault_run
    status, words = MATRIX[fault]
    c = results[fault]
    assert c["status"] == status, c.get("reason")
    if status == "ok":
        assert c["metrics"]["e2e_ms"]["n"] >= 5 and c["validity"]["valid"] and c["consistency"]["misses"] == []
    else:
        assert words in c["reason"] and "metrics" not in c and "memory" not in c


def test_the_run_reports_every_failed_cell_and_exits_1(fault_run):
    proc, results = fault_run
    failed = [f for f, (s, _) in MATRIX.items() if s != "ok"]
    assert proc.returncode == 1
    assert f"{len(failed)} of {len(MATRIX)} cells failed:" in proc.stderr
    for fault in failed:
        assert f"null.{fault}__local__latency: {MATRIX[fault][0]}" in proc.stderr


def test_heavy_tailed_jitter_beyond_the_cap_is_invalid_with_the_precision_it_reached(tmp_path):
    proc = run_cli("eval", "stories260k", "--backends", "null", "--scenarios", "latency", "--variants", "noisy_latency",
                   "--reports", str(tmp_path), *QUIET[:-2], "--precision", "2", "--max-time", "3")
    (noisy,) = cells(run_folder(proc.stderr, tmp_path)).values()
    validity = noisy["validity"]
    assert noisy["status"] == "ok" and not validity["valid"] and validity["stopped_by"] == "time cap"
    rules = {r["rule"]: r for r in validity["rules"]}
    assert rules["at least 5 requests"]["met"] and not rules["e2e_ms median within ±2% (95% interval)"]["met"]
    reached = noisy["metrics"]["e2e_ms"]["precision"]
    assert reached > 0.02 and rules["e2e_ms median within ±2% (95% interval)"]["value"] == f"±{100 * reached:.2f}%"
    assert "Result is : INVALID" in proc.stderr and "e2e_ms median within ±2% (95% interval): NO (±" in proc.stderr
    assert "1 timing cells did not reach ±2% within --max-time 3 s" in proc.stderr
    assert proc.returncode == 0, "answers were right; the numbers carry the precision they reached"


def test_min_duration_not_met_before_the_request_cap_is_invalid(tmp_path):
    proc = run_cli("eval", "stories260k", "--backends", "null", "--scenarios", "latency", "--variants", "none",
                   "--reports", str(tmp_path), *QUIET[:4], "--check-tokens", "8", "--min-duration", "100000",
                   "--precision", "100000", "--max-time", "1", "--new-tokens", "2")
    (c,) = cells(run_folder(proc.stderr, tmp_path)).values()
    assert not c["validity"]["valid"] and c["validity"]["stopped_by"] == "request cap"
    assert {"rule": "at least 100000 s", "met": False} == {k: v for k, v in c["validity"]["rules"][1].items() if k != "value"}


def test_the_whole_cell_deadline_kills_the_runner(tmp_path):
    proc = run_cli("eval", "stories260k", "--backends", "null", "--scenarios", "latency", "--variants", "slow_tokens",
                   "--cell-timeout", "2", "--reports", str(tmp_path), *QUIET[:4], "--check-tokens", "8", "--min-iterations", "100",
                   "--new-tokens", "8", "--precision", "100000")
    (c,) = cells(run_folder(proc.stderr, tmp_path)).values()
    assert c["status"] == "timeout" and "cell's deadline" in c["reason"] and proc.returncode == 1


def test_a_configuration_that_cannot_fit_the_target_is_marked_before_it_runs(tmp_path, monkeypatch):
    targets = tmp_path / "targets.toml"
    targets.write_text('[tiny]\ndescription = "a 1 MB device"\ntransport = "local"\narch = "auto"\n'
                       'accelerator = "none"\nmemory_gb = 0.001\n')
    proc = run_cli("eval", "stories260k", "--backends", "pytorch_eager,llamacpp", "--variants", "fp32-sdpa-kv,q4_k_m",
                   "--targets", "tiny", "--scenarios", "latency", "--reports", str(tmp_path / "r"), *QUIET,
                   env={"DEPLOY_EVAL_TARGETS": str(targets)})
    assert proc.returncode == 0, proc.stderr
    results = {c["variant"]: c for c in cells(run_folder(proc.stderr, tmp_path / "r")).values()}
    fp32 = results["fp32-sdpa-kv"]
    assert fp32["status"] == "unsupported" and fp32["reason"].startswith("does not fit: at least 0.00") \
        and "tiny's 0.001 GB" in fp32["reason"] and "environment" not in fp32, "no runner started"
    assert results["q4_k_m"]["status"] == "ok", "q4_k_m's weights (0.16 MB) and KV cache fit in 1 MB"


def test_results_survive_kill_9_of_the_evaluator_mid_fault_matrix(tmp_path):
    """kill -9 while a hanging cell waits on its deadline: the finished cells are on disk, whole,
    and --resume runs only the rest."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO, holding, runners_of

    args = [sys.executable, "-m", "evaluator", "eval", "stories260k", "--backends", "null", "--scenarios", "latency",
            "--variants", "none,crash_on_load,hang_on_generate", "--request-timeout", "10", "--reports", str(tmp_path), *QUIET]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("*/cells/*.json"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert runners_of(proc.pid) == [] and holding(tmp_path) == [], "the hanging runner outlived its evaluator"
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    before = cells(folder)
    assert {c["variant"]: c["status"] for c in before.values()} == {"none": "ok", "crash_on_load": "crashed"}
    kept = (folder / "cells" / "stories260k__null.none__local__latency.json").read_text()
    resumed = run_cli("eval", "--resume", folder.name, "--reports", str(tmp_path))
    after = {c["variant"]: c for c in cells(folder).values()}
    assert after["hang_on_generate"]["status"] == "timeout" and after["crash_on_load"]["status"] == "crashed"
    assert (folder / "cells" / "stories260k__null.none__local__latency.json").read_text() == kept
    assert resumed.returncode == 1 and not list(folder.rglob("*.tmp"))
    assert json.loads((folder / "run.json").read_text())["resumed_at"]


def test_an_unreachable_remote_host_is_refused_before_anything_runs(tmp_path):
    targets = tmp_path / "targets.toml"
    targets.write_text('[far]\ntransport = "ssh-docker"\nhost = "nobody@127.0.0.1"\narch = "x86_64"\n'
                       'accelerator = "none"\nmemory_gb = 8\n')  # no SSH server listens on this machine's port 22
    proc = run_cli("eval", "stories260k", "--backends", "null", "--targets", "far", "--reports", str(tmp_path / "r"),
                   env={"DEPLOY_EVAL_TARGETS": str(targets)})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "target far: nobody@127.0.0.1 is unreachable over SSH" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_a_docker_target_whose_engine_does_not_answer_is_refused_before_anything_runs(tmp_path):
    proc = run_cli("eval", "stories260k", "--backends", "null", "--targets", "docker-local", "--reports", str(tmp_path / "r"),
                   env={"DEPLOY_EVAL_DOCKER_SOCK": str(tmp_path / "no-engine.sock")})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "this machine's Docker engine does not answer" in proc.stderr and "docker/dockerd.sh" in proc.stderr
    assert not (tmp_path / "r").exists()

"""Derived model files (quantized GGUFs) are built once, keyed by content, and reused."""
import json

from tests.conftest import run_cli

ARGS = ["eval", "stories260k", "--backends", "llamacpp", "--variants", "q4_0", "--scenarios", "latency",
        "--min-iterations", "2", "--min-duration", "0", "--new-tokens", "4"]


def artifact(reports):
    (cell,) = [json.loads(p.read_text()) for p in reports.glob("*/cells/*.json")]
    return cell["load"]["artifact"]


def test_a_second_eval_reuses_the_cached_artifact_and_says_so(tmp_path):
    env = {"DEPLOY_EVAL_CACHE": str(tmp_path / "cache")}
    first = run_cli(*ARGS, "--reports", str(tmp_path / "a"), env=env)
    assert first.returncode == 0, first.stderr
    assert "[artifact gguf q4_0: built in" in first.stderr
    second = run_cli(*ARGS, "--reports", str(tmp_path / "b"), env=env)
    assert second.returncode == 0 and "[artifact gguf q4_0: reused from cache]" in second.stderr
    a, b = artifact(tmp_path / "a"), artifact(tmp_path / "b")
    assert (a["reused"], b["reused"]) == (False, True) and a["key"] == b["key"] and a["path"] == b["path"]
    assert a["build_s"] > 0 and b["build_s"] is None and a["size_bytes"] == b["size_bytes"] > 0
    assert list((tmp_path / "cache").glob("*.gguf")) and not list((tmp_path / "cache").glob("*.tmp"))

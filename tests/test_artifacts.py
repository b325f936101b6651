"""Derived model files (quantized GGUFs, GGUFs converted from Hugging Face folders, ONNX
exports and their int8 quantization) are built once, keyed by content, and reused."""
import json
import shutil
import subprocess

import pytest

from evaluator.catalog import models
from evaluator.launch.process import RunnerFailure
from tests.conftest import REPO, run_cli, start_runner

FAST = ["--scenarios", "latency", "--min-iterations", "2", "--min-duration", "0", "--new-tokens", "4", "--warmup", "0",
        "--precision", "1e9"]  # plumbing, not stability: a few tiny requests scatter


def artifacts(reports):
    (cell,) = [json.loads(p.read_text()) for p in reports.glob("*/cells/*.json")]
    art = cell["load"]["artifact"]
    return [*art.get("built_from", []), art]


def twice(tmp_path, args, env=None):
    env = dict(env or {}, DEPLOY_EVAL_CACHE=str(tmp_path / "cache"))
    first = run_cli(*args, *FAST, "--reports", str(tmp_path / "a"), env=env)
    assert first.returncode == 0, first.stderr
    second = run_cli(*args, *FAST, "--reports", str(tmp_path / "b"), env=env)
    assert second.returncode == 0, second.stderr
    return first, second, artifacts(tmp_path / "a"), artifacts(tmp_path / "b")


def assert_built_then_reused(first, second, a, b, kinds):
    assert [x["kind"] for x in a] == kinds
    for kind in kinds:
        assert f"[artifact {kind}: built in" in first.stderr
    assert f"[artifact {kinds[-1]}: reused from cache]" in second.stderr  # what it was built from is not even needed
    last_a, last_b = a[-1], b[-1]
    assert (last_a["reused"], last_b["reused"]) == (False, True) and last_a["key"] == last_b["key"]
    assert last_a["path"] == last_b["path"] and last_a["build_s"] > 0 and last_b["build_s"] is None
    assert last_a["size_bytes"] == last_b["size_bytes"] > 0


def test_a_quantized_gguf_is_built_once_and_reused(tmp_path):
    first, second, a, b = twice(tmp_path, ["eval", "stories260k", "--backends", "llamacpp", "--variants", "q4_0"])
    assert_built_then_reused(first, second, a, b, ["gguf q4_0"])
    assert list((tmp_path / "cache").glob("*.gguf")) and not list((tmp_path / "cache").glob("*.tmp"))


def test_a_hugging_face_folder_is_converted_by_llama_cpp_once_then_quantized(tmp_path):
    """A folder without a GGUF: llama.cpp's convert_hf_to_gguf.py makes the f32 GGUF, and
    llama_model_quantize makes q8_0 from it; both cached."""
    folder = tmp_path / "model"
    shutil.copytree(REPO / "data" / "stories260k" / "hf", folder)
    first, second, a, b = twice(tmp_path, ["eval", "s260k-hf", "--model-path", str(folder), "--backends", "llamacpp",
                                           "--variants", "q8_0"])
    assert_built_then_reused(first, second, a, b, ["gguf f32 (converted)", "gguf q8_0"])
    assert "convert_hf_to_gguf.py" in a[0]["tool"]
    cell = json.loads(next((tmp_path / "a").glob("*/cells/*.json")).read_text())
    assert cell["check"]["tokens"], "the converted model generates"


def test_the_converted_gguf_generates_what_the_shipped_gguf_generates(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(REPO / "data" / "stories260k" / "hf", folder)
    env = {"DEPLOY_EVAL_CACHE": str(tmp_path / "cache")}
    args = ["--backends", "llamacpp", "--variants", "f32", *FAST, "--check-tokens", "256"]
    converted = run_cli("eval", "s260k-hf", "--model-path", str(folder), *args, "--reports", str(tmp_path / "c"), env=env)
    shipped = run_cli("eval", "stories260k", *args, "--reports", str(tmp_path / "s"), env=env)
    assert converted.returncode == 0 and shipped.returncode == 0, converted.stderr + shipped.stderr
    tokens = [json.loads(next((tmp_path / d).glob("*/cells/*.json")).read_text())["check"]["tokens"] for d in "cs"]
    assert tokens[0] == tokens[1]


def test_onnx_export_and_its_int8_quantization_are_built_once_and_reused(tmp_path):
    first, second, a, b = twice(tmp_path, ["eval", "stories260k", "--backends", "onnxruntime", "--variants", "int8"])
    assert_built_then_reused(first, second, a, b, ["onnx fp32", "onnx int8"])
    assert all((tmp_path / "cache" / p.name / "model.onnx").is_file() for p in (tmp_path / "cache").glob("onnx-*"))
    assert not list((tmp_path / "cache").glob("*.tmp"))
    # The first run exported (in a child of its runner): its measurement peak is the cached run's.
    built, cached = (json.loads(next((tmp_path / r).glob("*/cells/*.json")).read_text()) for r in ("a", "b"))
    assert built["memory"]["peak_since"] == cached["memory"]["peak_since"] == "load"
    assert built["memory"]["peak_rss_bytes"] == pytest.approx(cached["memory"]["peak_rss_bytes"], rel=0.05)
    assert built["load"]["load_peak_rss_bytes"] >= built["load"]["rss_bytes"] > 0


@pytest.mark.parametrize("bad", ["hidden_size=abc", "colour=3"])
def test_a_bad_synthetic_shape_is_one_line_and_exit_2(tmp_path, bad):
    done = run_cli("eval", f"synthetic:{bad}", "--reports", str(tmp_path / "r"))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "synthetic shape" in done.stderr and not (tmp_path / "r").exists()


def test_the_repository_holds_no_derived_artifact():
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout: {listed.stderr.strip()}")
    shipped = {"data/stories260k/stories260K.gguf"}  # the published model itself, not derived here
    derived = [f for f in listed.stdout.splitlines() if f not in shipped and
               (".deploy-eval-artifacts" in f or f.endswith((".gguf", ".onnx", ".onnx.data")))]
    assert not derived, f"derived artifacts are committed: {derived}"


@pytest.mark.parametrize("name", ["onnxruntime", "llamacpp"])
def test_an_engine_that_derives_models_refuses_a_load_without_a_hash_and_a_cache(name, tmp_path):
    model = models.resolve("stories260k")
    fmt = "gguf" if name == "llamacpp" else "hf"
    with start_runner(name, tmp_path) as runner:
        with pytest.raises(RunnerFailure, match="needs model.sha256 and model.artifact_cache"):
            runner.request("load", 120, model={"path": str(model.artifact(fmt)), "format": fmt}, options={})
    assert not list(model.hf_path.parent.rglob(".deploy-eval-artifacts")), "nothing is written beside the source"

"""GPTQ and AWQ W4A16 through llm-compressor, for real, on a CPU: each checkpoint is calibrated
on the model's own text, cached by content, loaded by transformers, and moves the numbers a
little; a model whose widths the 128-wide groups do not divide is refused before anything is
installed."""
import json

import pytest

from evaluator.catalog import models
from evaluator.tokens import HostTokenizer
from tests.conftest import REPO, run_cli, start_runner

STUDENT = models.resolve("stories260k-student")  # hidden 256, FFN 768: multiples of the 128-wide groups


def _model(cache) -> dict:
    return {"path": str(STUDENT.hf_path), "format": "hf", "sha256": STUDENT.content_hash(), "artifact_cache": str(cache)}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """Per method: (load answer, log-probabilities of one WikiText-2 window), and a second load of
    GPTQ (from the cache)."""
    cache = tmp_path_factory.mktemp("artifacts")
    window = HostTokenizer(STUDENT.hf_path).prompts(128, 1)[0]
    out = {}
    with start_runner("llmcompressor", tmp_path_factory.mktemp("llmc")) as runner:
        for method in ("fp32", "gptq-w4a16", "awq-w4a16", "gptq-w4a16 again"):
            load = runner.request("load", 900, model=_model(cache), options={"quant": method.split()[0]})
            (scored,) = runner.request("score", 120, sequences=[window], start=1, top_k=0)["results"]
            out[method] = (load, scored["logprobs"])
    out["cache"] = cache
    return out


@pytest.mark.parametrize("method", ["gptq-w4a16", "awq-w4a16"])
def test_each_method_builds_a_smaller_checkpoint_that_moves_the_numbers_a_little(loaded, method):
    load, got = loaded[method]
    art = load["artifact"]
    assert art["reused"] is False and art["calibration_s"] > 0 and "sampled from the model itself" in art["calibration"]
    # 4-bit weights and their scales against 12.5 MiB of fp32 (the tied embedding stays full precision)
    assert art["size_bytes"] < 0.35 * STUDENT.size_bytes(), (art["size_bytes"], STUDENT.size_bytes())
    assert load["settings"]["scheme"] == {"gptq-w4a16": "W4A16", "awq-w4a16": "W4A16_ASYM"}[method]
    # what memory holds after load matches what the result says it holds
    held, fp32 = load["weight_bytes"], loaded["fp32"][0]["weight_bytes"]
    said = load["settings"]["compressed_layers"]
    assert (held > 0.9 * fp32) if "4-bit on disk only" in said else (held < 0.35 * fp32), (said, held, fp32)
    diffs = [abs(a - b) for a, b in zip(got, loaded["fp32"][1], strict=True)]
    mean = sum(diffs) / len(diffs)
    assert 0 < mean < 0.5, f"{method}: mean |Δ log p| {mean:.4f} nats against fp32 (0: not applied; large: broken)"


def test_a_checkpoint_is_reused_by_its_key_and_gives_the_same_numbers(loaded):
    first, again = loaded["gptq-w4a16"], loaded["gptq-w4a16 again"]
    assert again[0]["artifact"]["reused"] is True and again[0]["artifact"]["key"] == first[0]["artifact"]["key"]
    assert again[1] == first[1]


def test_vllm_runs_the_checkpoint_llmcompressor_made_with_its_own_4_bit_kernels(loaded, tmp_path):
    """vLLM's gptq-w4a16 is made by llmcompressor's runner (here: found in the cache the fixture
    filled), loaded by vLLM as compressed-tensors, and scored against pytorch_eager fp32."""
    proc = run_cli("eval", "stories260k-student", "--backends", "vllm", "--variants", "gptq-w4a16", "--scenarios", "quality",
                   "--limit", "20", "--ppl-tokens", "2000", "--reports", str(tmp_path),
                   env={"DEPLOY_EVAL_CACHE": str(loaded["cache"])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (cell,) = [json.loads(p.read_text()) for p in tmp_path.glob("*/cells/*vllm.gptq-w4a16*.json")]
    assert cell["status"] == "ok", cell["reason"]
    made = cell["load"]["artifact"]
    assert (made["backend"], made["variant"], made["reused"]) == ("llmcompressor", "gptq-w4a16", True)
    assert made["key"] == loaded["gptq-w4a16"][0]["artifact"]["key"]
    assert cell["variant_options"] == {"dtype": "bf16", "weights": "llmcompressor:gptq-w4a16"}
    assert cell["load"]["settings"]["quantization"] == "compressed-tensors"
    # the 4-bit weights ran, not the model's own: its distributions moved (bf16 alone moves them ~2e-4)
    assert 2e-3 < cell["fidelity"]["kl_mean"] < 0.2, cell["fidelity"]["kl_mean"]


def test_a_model_the_groups_do_not_divide_is_refused_before_its_environment_is_built(tmp_path):
    proc = run_cli("eval", "stories260k", "--backends", "llmcompressor", "--scenarios", "quality", "--limit", "20",
                   "--ppl-tokens", "2000", "--reports", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    cells = [json.loads(p.read_text()) for p in tmp_path.glob("*/cells/*llmcompressor*.json")]
    assert len(cells) == 2 and all(c["status"] == "unsupported" for c in cells)
    assert all("groups of 128 input features" in c["reason"] and "64 and 172" in c["reason"] for c in cells)
    assert "setting up the llmcompressor environment" not in proc.stderr
    assert (REPO / "backends" / "llmcompressor" / "backend.toml").is_file()

"""Synthetic models: a real Llama architecture with seeded random weights, built once, loaded
by the real engines, and marked synthetic everywhere a number about it appears."""
import hashlib
import json
import struct

import pytest

from evaluator.catalog import models, synthetic
from evaluator.errors import UserError
from tests.conftest import run_cli

SMALL = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 600}


def header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def test_the_folder_is_a_llama_with_every_tensor_at_its_shape_and_the_stated_parameter_count(tmp_path):
    cfg = synthetic.config(SMALL)
    folder = synthetic.build(cfg, tmp_path / "m")
    tensors = {k: v for k, v in header(folder / "model.safetensors").items() if k != "__metadata__"}
    count = sum(int.__mul__(*v["shape"]) if len(v["shape"]) == 2 else v["shape"][0] for v in tensors.values())
    assert count == synthetic.parameters(cfg)
    assert tensors["model.layers.1.self_attn.k_proj.weight"]["shape"] == [2 * 64, 256]
    assert tensors["lm_head.weight"]["shape"] == [600, 256]
    data_end = max(v["data_offsets"][1] for v in tensors.values())
    with open(folder / "model.safetensors", "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    assert (folder / "model.safetensors").stat().st_size == 8 + n + data_end
    assert json.loads((folder / "config.json").read_text())["head_dim"] == 64
    assert (folder / "tokenizer.json").is_file()


def test_the_same_shape_and_seed_give_the_same_bytes_and_another_seed_does_not(tmp_path):
    digest = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        folder = synthetic.build(synthetic.config(dict(SMALL, seed=seed)), tmp_path / name)
        digest.append(hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest())
    assert digest[0] == digest[1] != digest[2]


@pytest.mark.parametrize("shape, words", [
    ({**SMALL, "num_attention_heads": 3}, "must divide"),
    ({**SMALL, "vocab_size": 100}, "at least 512"),
    ({k: v for k, v in SMALL.items() if k != "hidden_size"}, "lacks hidden_size"),
])
def test_impossible_shapes_are_refused_with_the_reason(shape, words):
    with pytest.raises(UserError, match=words):
        synthetic.config(shape)


def test_a_named_shape_parses_and_resolves_to_a_synthetic_model(tmp_path, monkeypatch):
    monkeypatch.setattr("evaluator.store.ARTIFACTS", tmp_path)
    m = models.resolve("synthetic:hidden_size=256,intermediate_size=512,num_hidden_layers=1,"
                       "num_attention_heads=4,vocab_size=512")
    assert m.synthetic and m.formats == ("hf",) and (m.hf_path / "model.safetensors").is_file()
    assert models.is_synthetic("synthetic-tiny") and not models.is_synthetic("stories260k")


def test_an_eval_of_a_synthetic_model_says_synthetic_in_results_and_report_and_skips_quality(tmp_path):
    done = run_cli("eval", "synthetic-tiny", "--backends", "pytorch_eager", "--variants", "fp32-sdpa-kv",
                   "--min-iterations", "2", "--min-duration", "0", "--batch-sizes", "1,2", "--precision", "1e9", "--reports", str(tmp_path),
                   env={"DEPLOY_EVAL_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr
    assert "quality is left out" in done.stderr
    (run_dir,) = [p for p in tmp_path.iterdir() if p.name != "cache"]
    cells = [json.loads(p.read_text()) for p in (run_dir / "cells").glob("*.json")]
    assert sorted(c["scenario"]["name"] for c in cells) == ["latency", "throughput"]
    assert all(c["model"]["synthetic"] is True and c["status"] == "ok" for c in cells)
    assert "Synthetic model" in (run_dir / "index.html").read_text()

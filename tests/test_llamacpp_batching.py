"""llama.cpp's fast scoring path, checked against its simple one: a HellaSwag item's endings
decoded together as parallel sequences over one shared copy of the context give the same
log-probabilities as scoring each context + ending on its own."""
import pytest

from evaluator.catalog import models
from evaluator.score import hellaswag
from evaluator.tokens import HostTokenizer
from tests.conftest import start_runner

MODEL = models.resolve("stories260k")


@pytest.mark.parametrize("quant, tolerance", [("f32", 1e-4), ("q8_0", 1e-3)])
def test_endings_decoded_together_equal_endings_scored_alone(tmp_path, quant, tolerance):
    # f32 differs only by float32 summation order across the batch (1e-5 seen); q8_0 also
    # rounds activations to 8 bits per block of the batch it is in, so its bound is looser.
    tok = HostTokenizer(MODEL.hf_path)
    reqs = hellaswag.requests(hellaswag.select(hellaswag.load(), 20, 7), tok)
    with start_runner("llamacpp", tmp_path) as runner:
        runner.request("load", 300, model={"path": str(MODEL.gguf_path), "format": "gguf", "sha256": MODEL.content_hash(),
                                           "artifact_cache": str(tmp_path)}, options={"quant": quant})
        for req in reqs:
            together = runner.request("score", 60, prefix=req["prefix"], sequences=req["sequences"], top_k=0)["results"]
            alone = runner.request("score", 60, sequences=[req["prefix"] + s for s in req["sequences"]],
                                   start=len(req["prefix"]), top_k=0)["results"]
            for t, a in zip(together, alone, strict=True):
                assert len(t["logprobs"]) == len(a["logprobs"])
                assert max(abs(x - y) for x, y in zip(t["logprobs"], a["logprobs"])) < tolerance

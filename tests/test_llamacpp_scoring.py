"""llama.cpp's fast paths. Scoring, checked against its simple one: a HellaSwag item's context
evaluated once, the KV cache rewound to it before each ending, gives the same log-probabilities
as scoring each context + ending on its own.

With an f32 KV cache and no flash attention (the f32 variant, or kv_type=f32) that holds
exactly, quantized weights included. With llama.cpp's defaults for quantized models (f16 K/V,
flash attention) llama.cpp itself is not invariant to how the same tokens are grouped into
decode calls: one call or two moved stories260K's log-probabilities by up to 0.25 nats here.
That is the engine, so it is documented, not asserted.

Decoding the four endings as four parallel sequences in one llama_decode (a unified KV cache
sharing the context's cells) was tried and dropped: 25% faster, but with q8_0 weights it moved
log-probabilities by up to 0.1 nats even with an f32 cache, so it failed this very check.

Loading: the context is sized for what the session sends (load's context_tokens), not the
model's training context."""
import pytest

from evaluator.catalog import models
from evaluator.score import hellaswag
from evaluator.tokens import HostTokenizer
from tests.conftest import run_cli, start_runner
from tests.test_eval import cells, run_folder

MODEL = models.resolve("stories260k")


@pytest.mark.parametrize("quant", ["f32", "q8_0", "q4_k_m"])
def test_endings_decoded_together_equal_endings_scored_alone(tmp_path, quant):
    tolerance = 1e-5  # exact in practice (0.0 seen); float32 rounding is the only allowance
    tok = HostTokenizer(MODEL.hf_path)
    reqs = hellaswag.requests(hellaswag.order(hellaswag.load(), 7)[:20], tok)
    with start_runner("llamacpp", tmp_path) as runner:
        runner.request("load", 300, model={"path": str(MODEL.gguf_path), "format": "gguf", "sha256": MODEL.content_hash(),
                                           "artifact_cache": str(tmp_path)}, options={"quant": quant, "kv_type": "f32"})
        for req in reqs:
            together = runner.request("score", 60, prefix=req["prefix"], sequences=req["sequences"], top_k=0)["results"]
            alone = runner.request("score", 60, sequences=[req["prefix"] + s for s in req["sequences"]],
                                   start=len(req["prefix"]), top_k=0)["results"]
            for t, a in zip(together, alone, strict=True):
                assert len(t["logprobs"]) == len(a["logprobs"])
                assert max(abs(x - y) for x, y in zip(t["logprobs"], a["logprobs"])) < tolerance


LONG_CONTEXT = ("synthetic:hidden_size=256,intermediate_size=768,num_hidden_layers=1,num_attention_heads=4,"
                "vocab_size=512,max_position_embeddings=131072")


def test_llama_cpp_allocates_for_the_scenario_not_the_training_context(tmp_path):
    """A model trained for 131,072 tokens, timed on 32 + 64: the context is what the cell sends
    (the greedy check's 257 tokens), not the model's whole window."""
    proc = run_cli("eval", LONG_CONTEXT, "--backends", "llamacpp", "--variants", "f32", "--scenarios", "latency",
                   "--min-iterations", "2", "--min-duration", "0", "--warmup", "0", "--precision", "1e9",
                   "--reports", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    (cell,) = cells(run_folder(proc.stderr, tmp_path)).values()
    assert 257 <= cell["load"]["n_ctx"] <= 512 and cell["load"]["settings"]["n_ctx"] == cell["load"]["n_ctx"]

"""Every backend that runs here, fed the same token ids, against pytorch_eager fp32 on the real
stories260K: same greedy tokens, the same log-probabilities within a justified tolerance, and
quantized variants measurably further away.

Tolerance: two fp32 engines computing the same network differ only in the order of float32
sums (BLAS blocking, fused kernels). Relative error ~1e-6 per op over 5 layers of width 64
moves a log-probability by ~1e-5 nats; 2e-3 nats is two orders of magnitude above that and
still ten times below the smallest change a real precision step makes (bf16: ~5e-2, below).
"""
import pytest

from evaluator.catalog import backends, models, targets
from evaluator.run import _unsupported
from evaluator.tokens import HostTokenizer
from tests.conftest import start_runner

MODEL = models.resolve("stories260k")
TOK = HostTokenizer(MODEL.hf_path)
LOCAL = targets.resolve(["local"])[0]
PROMPT = TOK.prompts(24, 1)[0]
WINDOW = TOK.prompts(160, 2)[1]
TOLERANCE_NATS = 2e-3

# (backend, its fp32 variant, its quantized variants from least to most compressed)
LADDERS = {"pytorch_eager": ("fp32-sdpa-kv", ["bf16-sdpa-kv"]), "llamacpp": ("f32", ["q8_0", "q4_0"])}


def answers(name: str, variant_name: str, tmp_path):
    backend = backends.select([name])[0]
    variant = backend.variant(variant_name)
    why = _unsupported(MODEL, backend, variant, LOCAL)
    if why:
        pytest.skip(why)
    fmt = next(f for f in backend.formats if MODEL.artifact(f))
    with start_runner(name, tmp_path) as runner:
        runner.request("load", 600, model={"path": str(MODEL.artifact(fmt)), "format": fmt,
                                           "sha256": MODEL.content_hash(), "artifact_cache": str(tmp_path / "artifacts")},
                       options=dict(variant.options, device="cpu"))
        tokens = runner.request("generate", 120, prompts=[PROMPT], max_new_tokens=64)["tokens"][0]
        scored = runner.request("score", 120, sequences=[WINDOW], start=1, top_k=1)["results"][0]["logprobs"]
    return tokens, scored


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return answers("pytorch_eager", "fp32-sdpa-kv", tmp_path_factory.mktemp("ref"))


def distance(a, b):
    return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)


@pytest.mark.parametrize("name", sorted(LADDERS))
def test_fp32_variants_agree_with_pytorch_eager(name, reference, tmp_path):
    tokens, scored = answers(name, LADDERS[name][0], tmp_path)
    assert tokens == reference[0], f"{name} greedy tokens differ from pytorch_eager's"
    assert max(abs(x - y) for x, y in zip(scored, reference[1])) < TOLERANCE_NATS


@pytest.mark.parametrize("name", sorted(LADDERS))
def test_quantized_variants_move_away_from_the_reference(name, reference, tmp_path):
    fp32, quantized = LADDERS[name]
    distances = []
    for v in [fp32, *quantized]:
        (tmp_path / v).mkdir()
        distances.append(distance(answers(name, v, tmp_path / v)[1], reference[1]))
    assert distances[0] < TOLERANCE_NATS
    assert all(d > 10 * TOLERANCE_NATS for d in distances[1:]), distances
    assert distances == sorted(distances), f"more compression should not be closer: {distances}"

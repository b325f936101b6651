"""pytorch_eager on the real stories260K: the published greedy text, and log-probabilities equal
to a plain transformers forward pass."""
import json
import subprocess

import pytest

from evaluator import envs
from evaluator.catalog import backends
from evaluator.tokens import HostTokenizer
from tests.conftest import EXPECTED_GREEDY, REPO, STORIES, start_runner

MODEL = {"path": str(STORIES / "hf"), "format": "hf"}
TOK = HostTokenizer(STORIES / "hf")


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    with start_runner("pytorch_eager", tmp_path_factory.mktemp("eager")) as r:
        yield r


@pytest.mark.parametrize("attn, kv_cache", [("sdpa", "kv"), ("sdpa", "nokv"), ("eager", "kv")])
def test_fp32_greedy_from_bos_reproduces_the_published_256_tokens(runner, attn, kv_cache):
    runner.request("load", 120, model=MODEL, options={"dtype": "fp32", "attn": attn, "kv_cache": kv_cache})
    tokens = runner.request("generate", 120, prompts=[[TOK.bos]], max_new_tokens=256)["tokens"][0]
    assert len(tokens) == 256
    assert TOK.decode(tokens) == EXPECTED_GREEDY


def test_bf16_generates_the_asked_number_of_tokens_and_starts_like_fp32(runner):
    runner.request("load", 120, model=MODEL, options={"dtype": "bf16"})
    tokens = runner.request("generate", 120, prompts=[[TOK.bos]] * 2, max_new_tokens=64)["tokens"]
    assert [len(t) for t in tokens] == [64, 64] and tokens[0] == tokens[1]
    assert EXPECTED_GREEDY.startswith(TOK.decode(tokens[0][:8]))


def test_batched_generation_equals_one_prompt_at_a_time(runner):
    runner.request("load", 120, model=MODEL, options={"dtype": "fp32"})
    prompts = TOK.prompts(16, 3)
    batched = runner.request("generate", 120, prompts=prompts, max_new_tokens=16)["tokens"]
    single = [runner.request("generate", 120, prompts=[p], max_new_tokens=16)["tokens"][0] for p in prompts]
    assert batched == single


def test_score_equals_a_plain_transformers_forward_pass(runner):
    seq = TOK.prompts(48, 1)[0]
    runner.request("load", 120, model=MODEL, options={"dtype": "fp32"})
    got = runner.request("score", 120, sequences=[seq], start=1, top_k=5)["results"][0]
    # The reference, computed the simplest way in the same environment, in float64.
    code = f"""
import json, torch, transformers
m = transformers.AutoModelForCausalLM.from_pretrained({str(STORIES / 'hf')!r}, dtype=torch.float64)
ids = torch.tensor([{seq}])
lp = torch.log_softmax(m(ids).logits[0, :-1], -1)
print(json.dumps([lp[i, t].item() for i, t in enumerate(ids[0, 1:].tolist())]))
"""
    python = envs.python_for(backends.discover()[0]["pytorch_eager"])
    ref = json.loads(subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True,
                                    cwd=REPO).stdout.strip().splitlines()[-1])
    assert len(got["logprobs"]) == len(ref) == 47
    # fp32 against float64: the difference is rounding, far below any real model change.
    assert max(abs(a - b) for a, b in zip(got["logprobs"], ref)) < 1e-4
    assert all(t[0][1] >= lp - 1e-6 for t, lp in zip(got["top"], got["logprobs"]))
    assert all(t[0][1] >= t[-1][1] for t in got["top"])


def test_unknown_dtype_and_missing_folder_are_bad_requests(runner):
    from evaluator.launch.process import RunnerFailure

    with pytest.raises(RunnerFailure, match="dtype 'fp8'"):
        runner.request("load", 60, model=MODEL, options={"dtype": "fp8"})
    with pytest.raises(RunnerFailure, match="does not exist"):
        runner.request("load", 60, model={"path": "/nonexistent", "format": "hf"}, options={})
    with pytest.raises(RunnerFailure, match="unsupported"):
        runner.request("load", 60, model={"path": str(STORIES / "stories260K.gguf"), "format": "gguf"}, options={})


@pytest.mark.parametrize("kv_cache", ["kv", "nokv"])
def test_shared_prefix_scoring_equals_scoring_each_full_sequence(runner, kv_cache):
    runner.request("load", 120, model=MODEL, options={"dtype": "fp32", "kv_cache": kv_cache})
    prefix = TOK.prompts(20, 1)[0]
    endings = [TOK.encode(" " + e) for e in ("she went home.", "the dog barked loudly at the cat", "yes")]
    shared = runner.request("score", 60, prefix=prefix, sequences=endings, top_k=3)["results"]
    plain = runner.request("score", 60, sequences=[prefix + e for e in endings], start=len(prefix), top_k=3)["results"]
    for s, p, e in zip(shared, plain, endings):
        assert len(s["logprobs"]) == len(e)
        assert max(abs(a - b) for a, b in zip(s["logprobs"], p["logprobs"])) < 1e-4
        assert [t[0][0] for t in s["top"]] == [t[0][0] for t in p["top"]]


@pytest.mark.parametrize("kv_cache", ["kv", "nokv"])
def test_many_items_in_one_grouped_request_equal_each_ending_scored_alone(runner, kv_cache):
    """The batched form pads contexts of different lengths into one KV cache, hides the padding
    with a mask and scores the endings in several batches after copies of that cache: each
    ending must still see exactly its own context."""
    from evaluator.score import hellaswag

    runner.request("load", 120, model=MODEL, options={"dtype": "fp32", "kv_cache": kv_cache})
    reqs = hellaswag.requests(hellaswag.order(hellaswag.load(), 7)[:24], TOK)
    assert len({len(r["prefix"]) for r in reqs}) > 10  # contexts of many lengths, so padding is real
    rows = [(len(r["prefix"]), len(s)) for r in reqs for s in r["sequences"]]
    # more than runner.SHARED_TOKENS (16,384): the endings take several batches after one cache
    assert len(rows) * (max(p for p, _ in rows) + max(e for _, e in rows)) > 16384
    grouped = runner.request("score", 120, groups=reqs, top_k=0)["results"]
    worst = 0.0
    for req, answers in zip(reqs, grouped, strict=True):
        alone = runner.request("score", 60, sequences=[req["prefix"] + s for s in req["sequences"]],
                               start=len(req["prefix"]), top_k=0)["results"]
        for g, a in zip(answers, alone, strict=True):
            assert len(g["logprobs"]) == len(a["logprobs"])
            worst = max(worst, max(abs(x - y) for x, y in zip(g["logprobs"], a["logprobs"])))
    assert worst < 1e-4, f"a batched ending's log-probability moved by {worst:.2e} nats"

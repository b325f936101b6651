"""`--ppl-llamacpp` is llama-perplexity's number, checked against llama-perplexity itself.

The definition (evaluator/score/perplexity.py) has three parts that can each drift from the
tool: the text (llama.cpp's -f drops one trailing newline), the tokens (llama.cpp's tokenizer,
not the host's normalized one) and the chunks. The tokens are checked against the engine's own
tokenizer on the whole file; the whole definition against a llama-perplexity built from the
engine's own source and flags (benchmarks/llama_tools.py, minutes to build: `-m slow`), and the
KL divergence on its first chunks against its --kl-divergence."""
import json
import re
import subprocess
import sys

import pytest

from evaluator import envs
from evaluator.catalog import backends, models
from evaluator.score import perplexity
from evaluator.score.quality import KL_CHUNKS
from evaluator.tokens import HostTokenizer
from tests.conftest import REPO, run_cli
from tests.test_eval import cells, run_folder

MODEL = models.resolve("stories260k")
TOKENIZE = ("import json, sys, llama_cpp\n"
            "llm = llama_cpp.Llama(sys.argv[1], vocab_only=True, verbose=False)\n"
            "text = open(sys.argv[2], encoding='utf-8', newline='').read()\n"
            "print(json.dumps(llm.tokenize(text.encode(), add_bos=True, special=False)))\n")


def test_the_llamacpp_definition_tokenizes_wikitext_exactly_as_llama_cpp_does(tmp_path):
    text = perplexity.llamacpp_text()
    (tmp_path / "text").write_text(text, encoding="utf-8", newline="")
    python = envs.python_for(backends.discover()[0]["llamacpp"])
    proc = subprocess.run([str(python), "-c", TOKENIZE, str(MODEL.gguf_path), str(tmp_path / "text")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    engine = json.loads(proc.stdout)
    tok = HostTokenizer(MODEL.hf_path)
    ours = [tok.bos] + tok.encode_as_llamacpp(text)
    assert len(ours) == len(engine) and ours == engine
    assert ours != [tok.bos] + tok.encode(text), "the host's own tokenization differs (whitespace): the point of this one"


def llama_perplexity(bin_dir, gguf, chunks: int, kv_type: str, flash_attn: str, *extra: str) -> str:
    """What llama-perplexity prints, run with the settings of the runner's variant."""
    proc = subprocess.run([str(bin_dir / "llama-perplexity"), "-m", str(gguf), "-f", str(perplexity.DATA), "-c", "512",
                           "-b", "512", "--chunks", str(chunks), "-t", "2", "-ctk", kv_type, "-ctv", kv_type, "-fa", flash_attn,
                           *extra], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_ppl_llamacpp_equals_llama_perplexity_built_from_the_engines_source(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import llama_tools

    bin_dir = llama_tools.build()
    proc = run_cli("eval", "stories260k", "--backends", "llamacpp", "--variants", "f32,q8_0,q4_k_m", "--scenarios", "quality",
                   "--reference", "llamacpp:f32", "--limit", "20", "--ppl-tokens", "30000", "--ppl-llamacpp",
                   "--reports", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {c["variant"]: c for c in cells(run_folder(proc.stderr, tmp_path)).values()}
    for variant, kv_type, flash_attn in (("f32", "f32", "off"), ("q8_0", "f16", "on"), ("q4_k_m", "f16", "on")):
        ours = results[variant]["metrics"]["perplexity"]["llamacpp"]
        chunks = int(re.search(r"(\d+) chunks", ours["definition"]).group(1))
        gguf = results[variant]["load"]["artifact"]["path"]
        printed = llama_perplexity(bin_dir, gguf, chunks, kv_type, flash_attn)
        theirs = float(re.search(r"Final estimate: PPL = ([0-9.]+)", printed).group(1))
        # llama-perplexity prints 4 decimals: ~1e-5 relative at a PPL of ~130
        assert ours["token_perplexity"] == pytest.approx(theirs, rel=1e-4), variant
    # KL(f32 || variant) over the whole vocabulary on the same positions: llama-perplexity keeps
    # the base's log-probabilities as 16-bit steps, so "equal" is within 2%.
    base = tmp_path / "f32.kld"
    llama_perplexity(bin_dir, results["f32"]["load"]["artifact"]["path"], KL_CHUNKS, "f32", "off",
                     "--kl-divergence-base", str(base))
    for variant in ("q8_0", "q4_k_m"):
        printed = llama_perplexity(bin_dir, results[variant]["load"]["artifact"]["path"], KL_CHUNKS, "f16", "on",
                                   "--kl-divergence-base", str(base), "--kl-divergence")
        theirs = float(re.search(r"Mean\s+KLD:\s+([0-9.]+)", printed).group(1))
        ours = results[variant]["fidelity_llamacpp"]
        assert ours["top_k"] == 512 and ours["kl_mean"] == pytest.approx(theirs, rel=0.02), variant

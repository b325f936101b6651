"""The article's quantization methods as pytorch_quant's variants, on the real libraries
(bitsandbytes, torchao) through the runner protocol: each one quantizes (fewer weight bytes,
different log-probabilities), stays near fp32, and says which kernel it ran."""
import pytest

from conftest import start_runner
from evaluator.catalog import models
from evaluator.tokens import HostTokenizer

STUDENT = models.resolve("stories260k-student")  # widths that are multiples of 256: every kernel applies


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """Per method: (load answer, log-probabilities of one WikiText-2 window, greedy tokens)."""
    tok = HostTokenizer(STUDENT.hf_path)
    window = tok.prompts(128, 1)[0]
    out = {}
    with start_runner("pytorch_quant", tmp_path_factory.mktemp("quant")) as runner:
        for method in ("fp32", "bnb-int8", "bnb-nf4", "torchao-int8wo"):
            load = runner.request("load", 300, model={"path": str(STUDENT.hf_path), "format": "hf"},
                                  options={"quant": method})
            (scored,) = runner.request("score", 120, sequences=[window], start=1, top_k=0)["results"]
            tokens = runner.request("generate", 120, prompts=[[tok.bos]], max_new_tokens=32)["tokens"][0]
            out[method] = (load, scored["logprobs"], tokens)
    return out


def test_fp32_is_this_runner_unquantized_and_reproduces_the_published_text(loaded):
    load, _, tokens = loaded["fp32"]
    assert load["settings"]["quant"] == "fp32"
    expected = STUDENT.reference_greedy.read_text(encoding="utf-8")
    assert expected.startswith(HostTokenizer(STUDENT.hf_path).decode(tokens))


@pytest.mark.parametrize("method,most", [("bnb-int8", 0.35), ("torchao-int8wo", 0.35), ("bnb-nf4", 0.2)])
def test_each_method_stores_fewer_bytes_and_moves_the_numbers_a_little(loaded, method, most):
    base_load, base, _ = loaded["fp32"]
    load, got, _ = loaded[method]
    assert load["weight_bytes"] < most * base_load["weight_bytes"], (method, load["weight_bytes"], base_load["weight_bytes"])
    diffs = [abs(a - b) for a, b in zip(got, base, strict=True)]
    mean = sum(diffs) / len(diffs)
    assert 0 < mean < 0.5, f"{method}: mean |Δ log p| {mean:.4f} nats against fp32 (0: not applied; large: broken)"


def test_nf4_says_which_cpu_kernel_ran(loaded):
    kernel = loaded["bnb-nf4"][0]["settings"]["nf4_cpu_kernel"]
    assert kernel.startswith(("AVX512-BF16 packed for 28 of 28", "generic")), kernel


def test_the_techniques_table_has_a_row_per_method_with_its_paired_verdict():
    from evaluator.report import techniques

    def cell(backend, variant, scenario, **extra):
        return {"status": "ok", "backend": backend, "variant": variant, "scenario": {"name": scenario},
                "target": {"name": "local"}, "model": {"size_bytes": 4000}, **extra}

    tpot = {"p50": 10.0, "p50_ci": [9.9, 10.1]}
    gate = {"verdict": "PASS", "reference": "pytorch_eager.fp32-sdpa-kv@local",
            "hellaswag": {"acc_norm": {"loss": 0.004, "loss_ci": [-0.01, 0.008]}},
            "perplexity": {"loss": 0.02, "loss_ci": [0.015, 0.025]}}
    cells = [cell("pytorch_eager", "fp32-sdpa-kv", "latency", metrics={"tpot_ms": tpot}),
             cell("pytorch_quant", "bnb-int8", "latency", metrics={"tpot_ms": {"p50": 20.0, "p50_ci": [19.8, 20.2]}},
                  load={"weight_bytes": 1000}),
             cell("pytorch_quant", "bnb-int8", "quality", quality_gate=gate, load={"weight_bytes": 1000})]
    (row,) = techniques.section(cells)["summary"]
    assert row["technique"] == "quantization: bnb-int8" and row["memory"].startswith("75%")
    assert row["speedup"].startswith("0.50x") and "tied" not in row["speedup"]
    assert row["quality"].startswith("PASS: perplexity +2.00% [+1.50, +2.50]"), row["quality"]


def test_int4_is_planned_for_gpus_only_and_says_why_on_a_cpu():
    """torchao's int4 weight-only kernels are CUDA's: on a CPU target the plan says so before
    anything is built; on a GPU target the variant is planned (run there by benchmarks/gpu_check.sh)."""
    from evaluator.catalog import backends, targets
    from evaluator.plan import unsupported

    quant = backends.select(["pytorch_quant"])[0]
    int4 = quant.variant("torchao-int4wo")
    cpu = targets.resolve(["local"])[0]
    reason = unsupported(STUDENT, quant, int4, cpu)
    assert reason and "no CPU path for int4" in reason and "tinygemm" in reason
    assert unsupported(STUDENT, quant, int4, targets.resolve(["rtx3090"])[0]) is None

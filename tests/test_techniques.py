"""The article's techniques, measured through the runner protocol on the real PyTorch backend:
the attention sweep's memory exponents, training configurations checked against fp32,
accumulated gradients against the whole batch's, FLOPs per token from the configuration
against PyTorch's counter, and the report's Techniques section built from those results."""
import json
import subprocess
import tomllib

import pytest

from conftest import REPO, start_runner
from evaluator import envs
from evaluator.catalog import backends, models
from evaluator.measure import techniques
from evaluator.report import techniques as report_techniques
from evaluator.tokens import HostTokenizer

STORIES = REPO / "data" / "stories260k" / "hf"


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """One runner session: attention, training and FLOPs on stories260K, as a techniques run does."""
    tok = HostTokenizer(STORIES)
    train = techniques.Train()
    with start_runner("pytorch_eager", tmp_path_factory.mktemp("runner")) as runner:
        runner.request("load", 120, model={"path": str(STORIES), "format": "hf"}, options={})
        out = techniques.run_attention(runner, techniques.Attention(lengths=(512, 1024, 2048, 4096), passes=("forward",)), 600)
        out.update(techniques.run_train(runner, train, tok.prompts(train.sequence_tokens, train.batch * train.steps), 600))
        out.update(techniques.run_flops(runner, techniques.Flops(), models.resolve("stories260k").config(), 600))
        out.update(techniques.run_kv(runner, techniques.Kv(lengths=(8, 32), repeats=6), tok.prompts(16, 1)[0], 600))
    return out


def test_standard_attention_grows_quadratically_and_sdpa_flash_linearly(measured):
    fits = measured["attention"]["memory_exponent"]
    assert 1.8 < fits["standard forward"]["exponent"] < 2.2, fits["standard forward"]
    assert 0.6 < fits["sdpa-flash forward"]["exponent"] < 1.3, fits["sdpa-flash forward"]
    # Timed only after its output matched the standard form; what this CPU lacks is said, not timed.
    assert {r["impl"] for r in measured["attention"]["rows"]} >= {"standard", "sdpa-math", "sdpa-flash"}
    assert "sdpa-efficient" in measured["attention"]["unsupported"]


def test_training_configurations_are_checked_against_fp32(measured):
    by = {c["label"]: c for c in measured["train"]["configs"]}
    assert by["fp16"]["status"] == "unsupported" and "GPU" in by["fp16"]["reason"]
    assert by["bf16"]["loss_check"]["within"], by["bf16"]["loss_check"]
    assert by["bf16"]["loss_check"]["max_relative_deviation"] > 0, "bf16 autocast changed nothing: was it applied?"
    # Recomputing activations and splitting the batch reorder sums, nothing more.
    for label in ("fp32 + checkpointing", "fp32 + accumulation 2x"):
        assert by[label]["loss_check"]["max_relative_deviation"] < techniques.EXACT_LOSS_TOLERANCE
    grads = by["fp32 + accumulation 2x"]["gradient_check"]
    assert grads["within"] and grads["max_relative_difference"] < 1e-5, grads
    # Checkpointing keeps one activation per layer instead of all of them.
    assert by["fp32 + checkpointing"]["peak_bytes"] < 0.7 * by["fp32"]["peak_bytes"]
    assert len(by["fp32"]["losses"]) == techniques.Train.steps and by["fp32"]["step"]["n"] == techniques.Train.steps - 1


def test_a_loss_off_fp32_is_reported_outside_its_tolerance():
    """The check can fail: a runner whose bf16 losses drift 5% is flagged, not passed."""
    class Drifting:
        def request(self, op, timeout, name, params, batches):
            scale = 1.05 if params["precision"] == "bf16" else 1.0
            from evaluator.launch.process import RunnerFailure
            if params["precision"] == "fp16":
                raise RunnerFailure("unsupported", "no fp16 here")
            if params.get("checkpointing"):  # as process.py maps the runner's out_of_memory
                raise RunnerFailure("out-of-memory", "technique: out_of_memory: CUDA out of memory")
            return {"losses": [4.0 * scale] * len(batches), "seconds": [0.1] * len(batches), "peak_bytes": 1,
                    "tokens_per_step": 8, **({"gradient_max_rel_diff": 0.3} if "compare_gradients" in params else {})}
    sc = techniques.Train(steps=3, batch=2, micro_batch=1)
    out = {c["label"]: c for c in techniques.run_train(Drifting(), sc, [[1, 2]] * 6, 10)["train"]["configs"]}
    assert out["bf16"]["loss_check"]["within"] is False
    assert out["fp32 + accumulation 1x"]["gradient_check"]["within"] is False
    assert out["fp32 + checkpointing"]["status"] == "out-of-memory", "one configuration's OOM leaves the others standing"


def test_flops_per_token_from_the_configuration_match_pytorchs_counter(measured):
    f = measured["flops"]
    assert abs(f["agreement"]) < techniques.FLOPS_AGREEMENT, f
    assert f["peak_flops_per_s"] > 0 and 0 < f["mfu"] < 1.5


def test_flops_of_a_1b_model_match_the_counter_without_building_it():
    """synthetic-llama3.2-1b's shape, counted on the meta device inside the backend's environment."""
    shape = tomllib.loads((REPO / "evaluator" / "catalog" / "models.toml").read_text())["synthetic-llama3.2-1b"]["synthetic"]
    config = {k: v for k, v in shape.items() if k != "seed"} | {"max_position_embeddings": 2048}
    python = envs.python_for(backends.discover()[0]["pytorch_eager"])
    script = ("import json, sys, transformers; sys.path.insert(0, 'backends/pytorch_eager'); sys.path.insert(0, '.');"
              "import techniques; c = transformers.LlamaConfig(**json.loads(sys.argv[1]));"
              "print(json.dumps(techniques.count_flops(c, 512)[0]))")
    done = subprocess.run([str(python), "-c", script, json.dumps(config)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    counted = json.loads(done.stdout.strip().splitlines()[-1]) / 512
    formula = techniques.flops_per_token(config, 512)["total"]
    assert abs(counted / formula - 1) < techniques.FLOPS_AGREEMENT, (counted, formula)
    assert formula > 2e9  # about 2 FLOPs per weight of a 1.2B-weight model


def test_the_kv_sweep_times_both_settings_at_every_length_with_the_same_tokens(measured):
    rows = measured["kv"]["rows"]
    assert [r["new_tokens"] for r in rows] == [8, 32]
    for r in rows:
        assert r["with_cache"]["n"] == r["without_cache"]["n"] == 6 and r["same_tokens"] is True
        assert r["with_cache"]["p50_ci"] and r["speedup"] is not None


def test_the_memory_exponent_is_fitted_with_its_interval():
    exact = techniques.memory_exponent([256, 512, 1024, 2048], [n * n * 4.0 for n in (256, 512, 1024, 2048)])
    assert exact["exponent"] == pytest.approx(2.0) and exact["ci"][0] == pytest.approx(2.0)
    noisy = techniques.memory_exponent([256, 512, 1024, 2048], [1.0e6, 2.3e6, 3.9e6, 8.4e6])
    assert noisy["ci"][0] < noisy["exponent"] < noisy["ci"][1]
    assert techniques.memory_exponent([256, 512], [1.0, 2.0]) is None, "two points fit any line: no interval"


def test_the_report_fills_the_techniques_section_from_the_measurements(measured):
    cells = [{"status": "ok", "backend": "pytorch_eager", "variant": "fp32-sdpa-kv", "scenario": {"name": name}, **{name: measured[name]}}
             for name in ("attention", "train", "flops", "kv")]
    section = report_techniques.section(cells)
    techniques_shown = [r["technique"] for r in section["summary"]]
    assert "training: fp32 + checkpointing" in techniques_shown and any("sdpa-flash" in t for t in techniques_shown)
    assert any(r.get("unsupported") for r in section["summary"]), "fp16 training on a CPU is listed with its reason"
    assert any(t.startswith("KV cache") for t in techniques_shown) and len(section["figures"]) == 2
    assert section["figures"] and section["flops"]["agreement"].startswith(("+0.0", "-0.0"))
    assert report_techniques.section([dict(c, status="failed") for c in cells]) is None
    # Each target its own section: two machines' numbers are never mixed.
    two = [dict(c, target={"name": t}) for t in ("here", "there") for c in cells]
    assert [s["target"] for s in report_techniques.sections(two)] == ["here", "there"]
    # Nor two models' (a run comparing a teacher with its student).
    models_ = [dict(c, target={"name": "here"}, model={"name": m}) for m in ("teacher", "student") for c in cells]
    assert [s["target"] for s in report_techniques.sections(models_)] == ["here, teacher", "here, student"]


def test_a_techniques_run_plans_one_cell_per_backend_and_says_why_other_engines_sit_out():
    from evaluator import plan
    from evaluator.catalog import targets

    found = backends.discover()[0]
    cells = plan.plan(models.resolve("stories260k"), [found["pytorch_eager"], found["onnxruntime"]], ["fp32-*", "fp32"],
                      targets.resolve(["local"]), [techniques.Attention(), techniques.Train()])
    by = {(c.backend.name, c.variant.name, c.scenario.name): c for c in cells}
    assert set(by) == {("pytorch_eager", "fp32-sdpa-kv", "attention"), ("pytorch_eager", "fp32-sdpa-kv", "train"),
                       ("onnxruntime", "fp32", "attention"), ("onnxruntime", "fp32", "train")}
    assert by[("pytorch_eager", "fp32-sdpa-kv", "train")].unsupported is None
    assert "pytorch_eager" in by[("onnxruntime", "fp32", "attention")].unsupported

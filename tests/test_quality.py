"""Quality, scored once in the evaluator: HellaSwag, perplexity, fidelity and the gate, on the
real stories260K and the real data."""
import json
import math
from collections import Counter

import pytest

from evaluator import evaluate, plan, run, store
from evaluator.catalog import backends, models, targets
from evaluator.catalog.backends import Variant
from evaluator.stats.intervals import wilson_interval
from evaluator.score import fidelity, gate, hellaswag, perplexity
from evaluator.score.quality import Quality
from evaluator.tokens import HostTokenizer
from tests.conftest import run_cli

SMALL = ["--scenarios", "quality", "--limit", "200", "--ppl-tokens", "20000", "--ppl-llamacpp"]


def test_hellaswag_is_the_whole_validation_set():
    items = hellaswag.load()
    assert len(items) == 10042
    assert Counter(i.label for i in items) == {0: 2515, 1: 2485, 2: 2584, 3: 2458}
    assert all(len(i.endings) == 4 and i.context for i in items)


def test_items_are_scored_in_a_seeded_reproducible_order():
    items = hellaswag.load()
    a, b = hellaswag.order(items, 7), hellaswag.order(items, 7)
    assert [i.index for i in a] == [i.index for i in b] and sorted(i.index for i in a) == list(range(10042))
    assert [i.index for i in hellaswag.order(items, 8)][:100] != [i.index for i in a][:100]


def test_acc_norm_divides_by_ending_characters():
    item = hellaswag.Item(0, "ctx", 1, ("a", "a much longer ending", "b", "c"))
    # Raw sums favour the short ending 0; per character, the long ending 1 wins.
    out = hellaswag.summarize([item], [[-2.0, -10.0, -3.0, -3.0]])
    assert out["acc"]["value"] == 0.0 and out["acc_norm"]["value"] == 1.0


def test_wilson_interval_matches_the_textbook_value():
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)


@pytest.mark.parametrize("n, window, stride", [(1000, 128, 64), (1000, 128, 127), (100, 512, 256), (511, 512, 100)])
def test_rolling_windows_score_every_token_exactly_once(n, window, stride):
    tokens = list(range(10, 10 + n))
    scored = []
    for w in perplexity.rolling_windows(tokens, 1, window, stride):
        assert len(w.tokens) <= window and w.start >= 1
        scored += w.tokens[w.start:]
    assert scored == tokens


def test_llamacpp_windows_follow_llama_perplexity():
    tokens = list(range(5, 5 + 512 * 3 + 100))
    windows = perplexity.llamacpp_windows(tokens, 1)
    assert len(windows) == 3 and all(len(w.tokens) == 512 and w.tokens[0] == 1 and w.start == 257 for w in windows)
    assert windows[1].tokens[1:] == tokens[513:1024]


def test_fidelity_of_identical_answers_is_perfect_and_of_different_ones_is_not():
    window = {"logprobs": [math.log(0.5), math.log(0.9)],
              "top": [[[3, math.log(0.5)], [4, math.log(0.3)]], [[7, math.log(0.9)], [8, math.log(0.05)]]]}
    same = fidelity.compare([window], [window])
    assert same["kl_mean"] == 0 and same["top1_agreement"] == 1 and same["mean_abs_dp_correct"] == 0
    other = {"logprobs": [math.log(0.2), math.log(0.9)],
             "top": [[[4, math.log(0.6)], [3, math.log(0.2)]], [[7, math.log(0.9)], [8, math.log(0.05)]]]}
    diff = fidelity.compare([window], [other])
    assert diff["kl_mean"] > 0.1 and diff["top1_agreement"] == 0.5 and diff["mean_abs_dp_correct"] == pytest.approx(0.15)


def test_kl_over_the_references_top_ids_is_exact_with_the_whole_vocabulary_and_a_lower_bound_below_it():
    import random
    rng = random.Random(7)

    def softmax(xs):
        z = sum(math.exp(x) for x in xs)
        return [math.log(math.exp(x) / z) for x in xs]
    vocab = 40
    ref_lp = [softmax([rng.gauss(0, 2) for _ in range(vocab)]) for _ in range(30)]
    var_lp = [[lp + rng.gauss(0, 0.3) for lp in row] for row in ref_lp]
    var_lp = [softmax(row) for row in var_lp]
    exact = sum(sum(math.exp(p) * (p - q) for p, q in zip(r, v)) for r, v in zip(ref_lp, var_lp)) / len(ref_lp)

    def window(rows, k, want_from=None):
        tops = [sorted(enumerate(r), key=lambda t: -t[1])[:k] for r in rows]
        w = {"logprobs": [r[0] for r in rows], "top": [[[i, lp] for i, lp in t] for t in tops]}
        if want_from:
            w["wanted"] = [[row[i] for i, _ in top] for row, top in zip(rows, want_from["top"])]
        return w
    for k in (vocab, 5):
        ref = window(ref_lp, k)
        shared = fidelity.compare([ref], [window(var_lp, k, want_from=ref)], vocab)
        own = fidelity.compare([ref], [window(var_lp, k)], vocab)
        # as stored now: each position's KL computed while the reference is at hand, `wanted` dropped
        stored = fidelity.with_kl(window(var_lp, 1, want_from=ref), ref)
        assert "wanted" not in stored and len(stored["kl"]) == len(ref_lp)
        assert fidelity.compare([ref], [stored], vocab)["kl_mean"] == pytest.approx(shared["kl_mean"], rel=1e-12)
        assert shared["kl_partition"] == "shared" and own["kl_partition"] == "each side's top-k"
        if k == vocab:
            for result in (shared, own):  # each side's whole vocabulary is a shared partition too
                assert result["kl_mean"] == pytest.approx(exact, rel=1e-9) and result["reference_mass_covered"] == pytest.approx(1)
                assert result["kl_exact"] and "full vocabulary (exact)" in result["kl_definition"]
        else:
            assert own["kl_mean"] <= shared["kl_mean"] < exact
            assert not shared["kl_exact"] and "lower bound" in shared["kl_definition"]
    # windows are paired by the window they came from, never by position alone
    with pytest.raises(ValueError, match="window 3 is paired with the variant's 4"):
        fidelity.compare([dict(ref, window=3)], [dict(stored, window=4)], vocab)


def _raw(correct: list[bool], nll: list[float]) -> dict:
    """Raw answers for the first len(correct) items of the default order: right or wrong by choice."""
    items = hellaswag.order(hellaswag.load(), 1234)[: len(correct)]
    sums = [[0.0 if (j == it.label) == ok else -50.0 for j in range(4)] for it, ok in zip(items, correct)]
    return {"hellaswag": {"items": [it.index for it in items], "ending_logprob_sums": sums},
            "perplexity": {"rolling": {"window_nll": nll, "window_tokens": [100] * len(nll)}}}


def test_gate_verdicts_are_paired_and_three_way():
    ref = _raw([i % 2 == 0 for i in range(1000)], [300.0] * 20)
    same = _raw([i % 2 == 0 for i in range(1000)], [300.5, 299.5] * 10)
    worse = _raw([i % 2 == 0 and i % 10 != 0 for i in range(1000)], [330.0] * 20)
    close = _raw([i % 2 == 1 if i % 50 in (0, 1) else i % 2 == 0 for i in range(1000)], [300.0] * 20)  # 20 flips each way
    design = {"looks": [1000], "z": 1.96, "method": "one look"}
    assert gate.assess(ref, same, 0.01, design, 1000)["verdict"] == "PASS"
    bad = gate.assess(ref, worse, 0.01, design, 1000)
    assert bad["verdict"] == "FAIL" and len(bad["reasons"]) == 2
    assert bad["hellaswag"]["acc_norm"]["lost"] == 100 and bad["hellaswag"]["acc_norm"]["gained"] == 0
    assert bad["perplexity"]["ratio"] == pytest.approx(math.exp(30 / 100))
    unsure = gate.assess(ref, close, 0.01, design, 10042)
    assert unsure["verdict"] == "INCONCLUSIVE" and "items would likely decide it" in unsure["reasons"][0]
    assert "whole set would likely not" in gate.assess(ref, close, 0.01, design, 1000)["reasons"][0]


def quality_numbers(tmp_path):
    proc = run_cli("eval", "stories260k", "--variants", "fp32-sdpa-kv", "--reports", str(tmp_path), *SMALL)
    assert proc.returncode == 0, proc.stderr
    (cell,) = [json.loads(p.read_text()) for p in tmp_path.glob("*/cells/*quality.json")]
    return cell


def test_quality_on_stories260k_is_identical_across_reruns(tmp_path):
    a, b = quality_numbers(tmp_path / "a"), quality_numbers(tmp_path / "b")
    assert a["metrics"] == b["metrics"]
    hs = a["metrics"]["hellaswag"]
    assert hs["items"] == 200 and hs["order"]["mode"] == "200" and hs["order"]["seed"] == 1234
    assert 0.15 < hs["acc_norm"]["value"] < 0.40  # a 260K-parameter model is near chance (0.25)
    assert hs["acc_norm"]["wilson95"][0] < hs["acc_norm"]["value"] < hs["acc_norm"]["wilson95"][1]
    ppl = a["metrics"]["perplexity"]
    assert ppl["rolling"]["tokens"] == 20000 and 10 < ppl["rolling"]["token_perplexity"] < 1000
    # --ppl-tokens: words and bytes are those of the text its 20,000 tokens spell
    tok = HostTokenizer(models.resolve("stories260k").hf_path)
    part = tok.decode(tok.encode_cached("wikitext-2-test", perplexity.text())[:20000]).encode("utf-8")
    assert ppl["rolling"]["bytes"] == len(part) and ppl["rolling"]["bits_per_byte"] == pytest.approx(
        ppl["rolling"]["nll"] / (math.log(2) * len(part)))
    assert ppl["llamacpp"]["tokens"] == (20000 // 512) * 255
    assert "quality_gate" not in a, "the reference is what the others are judged against"


def test_a_damaged_variant_is_caught_by_fidelity_and_the_gate(tmp_path):
    model = models.resolve("stories260k")
    eager = backends.select(["pytorch_eager"])[0]
    local = targets.resolve(["local"])[0]
    tok = HostTokenizer(model.hf_path)
    sc = Quality(items="300", ppl_max_tokens=20000)
    reference = eager.variant("fp32-sdpa-kv")
    damaged = Variant("fp32-damaged", dict(reference.options, weight_noise=0.5))
    cells = [plan.Cell(store.cell_id("stories260k", "pytorch_eager", v.name, "local", "quality"), eager, v, local, sc, None)
             for v in (reference, damaged)]
    store.write_json(tmp_path / "run.json", {"planned_cells": [c.id for c in cells]})
    for cell in cells:
        result = run.run_cell(cell, model, {"name": "stories260k"}, tok, tmp_path, "t", None, run.Deadlines())
        assert result["status"] == "ok", result["reason"]
        store.write_json(tmp_path / "cells" / f"{cell.id}.json", result)
    updated = {c["variant"]: c for c in evaluate.finish_quality(tmp_path, run.Reference(eager, reference), 0.01, sc)}
    bad = updated["fp32-damaged"]
    assert "quality_gate_error" not in bad, bad["quality_gate_error"]
    assert bad["fidelity"]["kl_mean"] > 0.05 and bad["fidelity"]["top1_agreement"] < 0.9
    assert bad["fidelity"]["kl_mean_ci"][0] > 0
    assert bad["quality_gate"]["verdict"] == "FAIL" and any("perplexity" in r for r in bad["quality_gate"]["reasons"])


def test_the_reference_joins_the_run_when_the_selection_leaves_it_out(tmp_path):
    proc = run_cli("eval", "stories260k", "--variants", "bf16-sdpa-kv", "--reports", str(tmp_path), *SMALL,
                   "--limit", "50", "--ppl-tokens", "3000")
    assert proc.returncode == 0, proc.stderr
    variants = sorted(json.loads(p.read_text())["variant"] for p in tmp_path.glob("*/cells/*.json"))
    assert variants == ["bf16-sdpa-kv", "fp32-sdpa-kv"]
    assert "quality pytorch_eager.bf16-sdpa-kv@local vs pytorch_eager.fp32-sdpa-kv@local" in proc.stderr
    # --ppl-llamacpp on a 512-token vocabulary: the exact KL on llama-perplexity's chunks too
    (bf16,) = [c for c in map(lambda p: json.loads(p.read_text()), tmp_path.glob("*/cells/*.json")) if c["variant"] == "bf16-sdpa-kv"]
    kl = bf16["fidelity_llamacpp"]
    assert kl["top_k"] == 512 and kl["positions"] == "the first 4 llama-perplexity chunks" and kl["kl_mean"] > 0
    assert kl["kl_exact"], "both sides sent their whole distributions"
    # the default windows too, over the whole 512-token vocabulary: the variant, scored after the
    # reference, was sent all its ids (one shared partition) and stored each position's KL
    fid = bf16["fidelity"]
    assert fid["kl_partition"] == "shared" and fid["kl_exact"] and fid["kl_mean"] > 0
    assert fid["reference_mass_covered"] == pytest.approx(1, abs=1e-4)
    raw = json.loads((next(tmp_path.glob("*")) / bf16["raw"]).read_text())
    assert all("kl" in w and "wanted" not in w and len(w["top"][0]) == 1 for w in raw["fidelity_windows"])


TINY = ["--scenarios", "quality", "--limit", "50", "--ppl-tokens", "2000"]


def test_the_reference_can_live_on_another_target_of_the_run(tmp_path):
    targets = tmp_path / "targets.toml"
    targets.write_text('[edge]\ndescription = "a second local target"\ntransport = "local"\narch = "auto"\n'
                       'accelerator = "none"\nmemory_gb = 8\n')
    proc = run_cli("eval", "stories260k", "--backends", "pytorch_eager", "--variants", "bf16-sdpa-kv", "--targets", "local,edge",
                   "--reference", "pytorch_eager:fp32-sdpa-kv@local", "--reports", str(tmp_path / "r"), *TINY,
                   env={"DEPLOY_EVAL_TARGETS": str(targets)})
    assert proc.returncode == 0, proc.stderr
    got = {(c["variant"], c["target"]["name"]): c for c in map(lambda p: json.loads(p.read_text()),
                                                                 (tmp_path / "r").glob("*/cells/*.json"))}
    assert set(got) == {("fp32-sdpa-kv", "local"), ("bf16-sdpa-kv", "local"), ("bf16-sdpa-kv", "edge")}
    assert got[("bf16-sdpa-kv", "edge")]["quality_gate"]["reference"] == "pytorch_eager.fp32-sdpa-kv@local"


def test_the_reference_can_come_from_an_earlier_run_and_a_mismatch_is_refused(tmp_path):
    first = run_cli("eval", "stories260k", "--backends", "pytorch_eager", "--variants", "fp32-sdpa-kv",
                    "--reports", str(tmp_path), *TINY)
    assert first.returncode == 0, first.stderr
    (earlier,) = [p.parent.name for p in tmp_path.glob("*/run.json")]
    proc = run_cli("eval", "stories260k", "--backends", "llamacpp", "--variants", "q8_0", "--reference-run", earlier,
                   "--reports", str(tmp_path), *TINY)
    assert proc.returncode == 0, proc.stderr
    later = [json.loads(p.read_text()) for p in tmp_path.glob("*/cells/*.json") if earlier not in str(p)]
    assert [c["variant"] for c in later] == ["q8_0"], "the reference is not measured again"
    gate_ = later[0]["quality_gate"]
    assert gate_["reference"] == f"pytorch_eager.fp32-sdpa-kv@local of run {earlier}" and gate_["hellaswag"]["items"] == 50
    for args, words in ((["--ppl-tokens", "3000"], "ppl_max_tokens = 2000"),
                        (["--limit", "60"], "scored 50 HellaSwag items, this run asks for 60"),
                        (["--reference", "llamacpp:f32"], "no finished quality cell of llamacpp:f32"),
                        (["--quality-items", "auto"], "in the files' own order, this run in a seeded order")):
        bad = run_cli("eval", "stories260k", "--backends", "llamacpp", "--variants", "q8_0", "--reference-run",
                      str(tmp_path / earlier), "--reports", str(tmp_path / "bad"), *TINY, *args)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and words in bad.stderr, bad.stderr
        assert not (tmp_path / "bad").exists()


def test_result_files_hold_the_discordance_recomputed_from_the_raw_sums(tmp_path):
    """Independently of the evaluator's code: argmax per ending (by characters), the items each
    side gets right, and scipy's exact binomial test on the disagreements."""
    from scipy.stats import binomtest

    proc = run_cli("eval", "stories260k", "--backends", "pytorch_eager,llamacpp", "--variants", "fp32-sdpa-kv,q4_k_m",
                   "--reports", str(tmp_path), "--scenarios", "quality", "--limit", "400", "--ppl-tokens", "2000")
    assert proc.returncode == 0, proc.stderr
    folder = next(tmp_path.glob("*/"))
    cells = {json.loads(p.read_text())["variant"]: json.loads(p.read_text()) for p in folder.glob("cells/*.json")}
    items = hellaswag.load()

    def right(raw):
        h = raw["hellaswag"]
        return [max(range(4), key=lambda j: sums[j] / len(items[i].endings[j])) == items[i].label
                for i, sums in zip(h["items"], h["ending_logprob_sums"])]

    ref, var = (right(json.loads((folder / cells[v]["raw"]).read_text())) for v in ("fp32-sdpa-kv", "q4_k_m"))
    b = sum(v and not r for r, v in zip(ref, var))
    c = sum(r and not v for r, v in zip(ref, var))
    stored = cells["q4_k_m"]["quality_gate"]["hellaswag"]["acc_norm"]
    assert (stored["gained"], stored["lost"], stored["items"]) == (b, c, 400)
    assert stored["mcnemar_p"] == pytest.approx(binomtest(b, b + c, 0.5).pvalue if b + c else 1.0)


def test_a_malformed_stored_answer_loses_its_comparison_not_the_report(tmp_path):
    eager = backends.select(["pytorch_eager"])[0]
    reference = eager.variant("fp32-sdpa-kv")

    def cell(variant, raw):
        cid = store.cell_id("stories260k", "pytorch_eager", variant, "local", "quality")
        store.write_json(tmp_path / "raw" / f"{cid}.json", raw)
        return {"cell_id": cid, "backend": "pytorch_eager", "variant": variant, "target": {"name": "local"},
                "scenario": {"name": "quality"}, "status": "ok", "raw": f"raw/{cid}.json"}

    good = {"hellaswag": {"items": [], "ending_logprob_sums": []}, "fidelity_windows": [],
            "perplexity": {"rolling": {"window_nll": [1.0, 2.0], "window_tokens": [10, 10]}}}
    cells = [cell("fp32-sdpa-kv", good), cell("bf16-sdpa-kv", {"hellaswag": 3, "fidelity_windows": "?"})]
    for c in cells:
        store.write_json(tmp_path / "cells" / f"{c['cell_id']}.json", c)
    store.write_json(tmp_path / "run.json", {"planned_cells": [c["cell_id"] for c in cells]})
    (updated,) = evaluate.finish_quality(tmp_path, run.Reference(eager, reference), 0.01, Quality())
    assert "not compared with pytorch_eager.fp32-sdpa-kv@local" in updated["quality_gate_error"]
    assert "quality_gate" not in updated and "not compared" in evaluate.gate_line(updated)
    assert "malformed" in updated["quality_gate_error"] and "hellaswag" in updated["quality_gate_error"]
    stored = json.loads((tmp_path / "cells" / f"{updated['cell_id']}.json").read_text())
    assert stored["quality_gate_error"] == updated["quality_gate_error"]


def test_a_bug_in_the_comparison_is_called_the_evaluators_not_a_malformed_answer(tmp_path, monkeypatch):
    """Two well-formed stored answers and a comparison that raises: the cell says evaluator bug,
    with the traceback in logs/evaluator.log; the report's cells are still all there."""
    from evaluator.score import gate

    eager = backends.select(["pytorch_eager"])[0]
    good = {"hellaswag": {"items": [1], "ending_logprob_sums": [[-1.0, -2.0, -3.0, -4.0]]}, "fidelity_windows": [],
            "perplexity": {"rolling": {"window_nll": [1.0], "window_tokens": [10]}}}
    for variant in ("fp32-sdpa-kv", "bf16-sdpa-kv"):
        cid = store.cell_id("stories260k", "pytorch_eager", variant, "local", "quality")
        store.write_json(tmp_path / "raw" / f"{cid}.json", good)
        store.write_json(tmp_path / "cells" / f"{cid}.json", {
            "cell_id": cid, "backend": "pytorch_eager", "variant": variant, "target": {"name": "local"},
            "scenario": {"name": "quality"}, "status": "ok", "raw": f"raw/{cid}.json"})
    store.write_json(tmp_path / "run.json", {})
    monkeypatch.setattr(gate, "assess", lambda *a, **k: 1 / 0)
    monkeypatch.setattr(evaluate.fidelity, "compare", lambda *a, **k: {})
    (updated,) = evaluate.finish_quality(tmp_path, run.Reference(eager, eager.variant("fp32-sdpa-kv")), 0.01, Quality())
    assert "evaluator bug: ZeroDivisionError" in updated["quality_gate_error"], updated
    assert "malformed" not in updated["quality_gate_error"]
    assert "ZeroDivisionError" in (tmp_path / "logs" / "evaluator.log").read_text()

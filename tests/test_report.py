"""The report: a real run's page opened in a real headless browser (Debian's chromium, driven by
Playwright; nothing downloads a browser), the decision guide, `just compare`, and escaping."""
import json
import math
import shutil

import pytest

from evaluator import store
from evaluator.report import compare, configs, export, guide, html, tables
from evaluator.score import hellaswag
from evaluator.stats.intervals import summarize
from tests.conftest import run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
needs_browser = pytest.mark.skipif(not CHROMIUM, reason="chromium is not installed (.ci/run installs Debian's chromium)")
FAST = ["--min-iterations", "5", "--min-duration", "0", "--warmup", "1", "--new-tokens", "16", "--batch-sizes", "1,4",
        "--limit", "20", "--ppl-tokens", "2000", "--precision", "1e9"]
HOSTILE = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>"\'&amp;'


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    reports = tmp_path_factory.mktemp("reports")
    proc = run_cli("eval", "stories260k", "--backends", "pytorch_eager,llamacpp",
                   "--variants", "fp32-sdpa-kv,bf16-sdpa-kv,q8_0", "--reports", str(reports), *FAST)
    assert proc.returncode == 0, proc.stderr
    (folder,) = [p.parent for p in reports.glob("*/run.json")]
    return folder


def open_page(path, tmp_path):
    """(page text, console errors, requests made, number of rendered plots, plot divs, dialogs)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        errors, requests, dialogs = [], [], []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(path.as_uri())
        page.wait_for_function("[...document.querySelectorAll('div.plot')].every(d => d.querySelector('.main-svg'))",
                               timeout=30000)
        result = {
            "text": page.inner_text("body"), "errors": errors, "requests": requests, "dialogs": dialogs,
            "plots": page.locator("div.plot").count(),
            "rendered": page.evaluate("document.querySelectorAll('div.plot .main-svg').length > 0 && "
                                      "[...document.querySelectorAll('div.plot')].every(d => d.querySelector('.main-svg g.trace'))"),
            "pwned": page.evaluate("window.pwned === undefined ? null : window.pwned"),
            "injected": page.locator("img[src=x]").count(),
            "plot_text": page.evaluate("[...document.querySelectorAll('div.plot text')].map(t => t.textContent).join('\\n')"),
            "compare_cells": page.evaluate("[...document.querySelectorAll('table.compare td[data-metric]')]"
                                           ".map(td => [td.dataset.metric, td.textContent])"),
        }
        browser.close()
    return result


@needs_browser
def test_real_report_renders_every_plot_without_errors_or_network(real_run, tmp_path):
    seen = open_page(real_run / "index.html", tmp_path)
    assert seen["errors"] == []
    assert seen["plots"] >= 5 and seen["rendered"], "every plot div holds a rendered plotly figure"
    assert all(url.startswith(("file:", "data:", "about:")) for url in seen["requests"]), seen["requests"]


@needs_browser
def test_tables_carry_the_numbers_of_the_result_files(real_run, tmp_path):
    seen = open_page(real_run / "index.html", tmp_path)
    cells = {p.stem: json.loads(p.read_text()) for p in (real_run / "cells").glob("*.json")}
    lat = cells["stories260k__pytorch_eager.fp32-sdpa-kv__local__latency"]
    q = cells["stories260k__llamacpp.q8_0__local__quality"]
    shown = {(m, v) for m, v in seen["compare_cells"]}
    def shows(metric, value):
        return any(m == metric and v.startswith(tables.fmt(value)) for m, v in shown)

    assert shows("latency p50", lat["metrics"]["e2e_ms"]["p50"])
    assert shows("decode", lat["metrics"]["decode_tokens_per_s"]["p50"])
    assert shows("TTFT p50", lat["metrics"]["ttft_ms"]["p50"])
    assert ("p95", "needs 72 requests") in shown or shows("p95", lat["metrics"]["e2e_ms"]["p95"])
    assert shows("perplexity", q["metrics"]["perplexity"]["rolling"]["token_perplexity"])
    assert shows("KL vs ref", q["fidelity"]["kl_mean"])
    assert "Deploy " in seen["text"] and "baseline" in seen["text"]
    for name in ("TTFT", "Perplexity", "HellaSwag acc_norm", "git revision", "llama-cpp-python"):
        assert name in seen["text"], name


def test_the_comparison_table_shows_the_export_tables_numbers_with_their_intervals(real_run):
    """Built from the same rows `just export` writes: each number and its 95% interval (the KL's
    and acc_norm's intervals too, which the table once dropped)."""
    run, cfgs = _configs(real_run)
    rows, target = export.table(real_run), run["targets"][0]["name"]
    columns = {"decode": ("decode_tokens_per_s", "median"), "latency p50": ("e2e_ms", "median"),
               "TTFT p50": ("ttft_ms", "median"), "HellaSwag acc_norm": ("hellaswag_acc_norm", "share"),
               "perplexity": ("wikitext2_token_perplexity", "value"), "KL vs ref": ("kl", "mean"),
               "top-1 agree": ("top1_agreement", "mean")}
    with_interval = set()
    for row in tables.comparison(cfgs, target, run["reference"], 0.01):
        backend, variant = row["label"].split(" · ")
        for header, (metric, statistic) in columns.items():
            shown = dict(row["values"])[header]
            mine = [r for r in rows if (r["backend"], r["variant"], r["target"], r["metric"], r["statistic"])
                    == (backend, variant, target, metric, statistic)]
            if not mine:
                assert shown.text == "–", (row["label"], header)
                continue
            assert shown.text == tables.fmt(mine[0]["value"]), (row["label"], header)
            if mine[0]["ci_low"] is not None and mine[0]["value"]:
                assert shown.interval == f"[{tables.fmt(mine[0]['ci_low'])}, {tables.fmt(mine[0]['ci_high'])}]"
                with_interval.add(header)
    assert {"decode", "HellaSwag acc_norm", "KL vs ref"} <= with_interval


def test_page_is_one_file_rebuilt_from_results_alone(real_run, tmp_path):
    before = (real_run / "index.html").read_text()
    assert "<script src" not in before and "<link" not in before and "cdn" not in before.lower().split("<script>")[0]
    (real_run / "index.html").unlink()
    # A targets file written after the run does not reach the page: it is rebuilt from the run alone.
    later = tmp_path / "targets.toml"
    later.write_text('[box-added-later]\ndescription = "x"\ntransport = "ssh-docker"\nhost = "u@h"\narch = "x86_64"\n'
                     'accelerator = "none"\nmemory_gb = 13.37\n')
    proc = run_cli("report", str(real_run), env={"DEPLOY_EVAL_TARGETS": str(later)})
    assert proc.returncode == 0, proc.stderr
    assert (real_run / "index.html").read_text() == before


@needs_browser
def test_hostile_model_name_and_generated_text_show_as_text(real_run, tmp_path):
    folder = tmp_path / "hostile"
    shutil.copytree(real_run, folder)
    run = json.loads((folder / "run.json").read_text())
    run["model"]["name"] = HOSTILE
    store.write_json(folder / "run.json", run)
    for path in (folder / "cells").glob("*.json"):
        cell = json.loads(path.read_text())
        cell["model"]["name"] = HOSTILE
        cell["variant"] = cell["variant"] + HOSTILE
        if cell.get("check"):
            cell["check"]["text"] = "</script></pre>" + HOSTILE
        store.write_json(path, cell)
    html.build(folder)
    seen = open_page(folder / "index.html", tmp_path)
    assert seen["pwned"] is None and seen["injected"] == 0 and seen["dialogs"] == []
    assert seen["errors"] == []
    assert HOSTILE in seen["text"] and "</script></pre>" in seen["text"]
    assert 'onerror="window.pwned=1"' in seen["plot_text"], "plot labels show the name as text too"


def _configs(folder):
    run, cells = store.load_run(folder)
    return run, configs.group(cells)


def _winner_or_tied(decision, best):
    return decision["winner"] == best.label or (decision["tie"] and best.label in decision["why"] + decision["winner"])


def test_decision_guide_picks_the_best_that_meets_every_constraint(real_run):
    run, cfgs = _configs(real_run)
    target = run["targets"][0]
    free = guide.decide(cfgs, target, run["reference"], guide.Constraints(max_quality_loss_pct=100))
    fastest = max((c for c in cfgs if c.decode_tokens_per_s), key=lambda c: c.decode_tokens_per_s)
    assert _winner_or_tied(free, fastest)
    # A budget below every configuration's peak memory leaves nothing, and says why for each.
    tiny = guide.decide(cfgs, target, run["reference"], guide.Constraints(memory_budget_gb=0.001))
    assert tiny["winner"] is None and all("over the 0.001 GB budget" in r["reason"] for r in tiny["rows"])
    # A quality limit of 0%: whatever FAILs it (its whole loss interval above 0) is excluded, saying so.
    strict = guide.decide(cfgs, target, run["reference"], guide.Constraints(max_quality_loss_pct=0))
    for r in strict["rows"]:
        cfg = next(c for c in cfgs if c.label == r["label"])
        failed = (cfg.gate(0.0) or {}).get("verdict") == "FAIL"
        assert failed == (r["verdict"] == "excluded" and "fails the quality gate" in r["reason"])
    by_latency = guide.decide(cfgs, target, run["reference"], guide.Constraints(objective="latency", max_quality_loss_pct=100))
    quickest = min((c for c in cfgs if c.e2e_ms["p50"]), key=lambda c: c.e2e_ms["p50"])
    assert _winner_or_tied(by_latency, quickest)


def _config(label, decode, ci, memory):
    cell = {"status": "ok", "scenario": {"name": "latency"}, "memory": {"peak_rss_bytes": memory},
            "metrics": {"decode_tokens_per_s": {"p50": decode, "p50_ci": ci}, "e2e_ms": {"p50": 1.0, "p50_ci": [0.9, 1.1]}}}
    return configs.Config("b", label, {"name": "t", "memory_gb": 8}, {"latency": cell})


def test_a_winner_is_named_only_beyond_the_noise_and_a_tie_says_how_it_was_broken():
    target = {"name": "t", "memory_gb": 8}
    tied = guide.decide([_config("fast", 101, [99, 103], 2e8), _config("lean", 100, [98, 102], 1e8)], target, None,
                        guide.Constraints())
    assert tied["tie"] and tied["winner"] == "b · lean" and "tied within noise" in tied["why"] and "less memory" in tied["why"]
    assert tied["rows"][0]["verdict"] == "tied within noise"
    clear = guide.decide([_config("fast", 150, [147, 153], 2e8), _config("lean", 100, [98, 102], 1e8)], target, None,
                         guide.Constraints())
    assert not clear["tie"] and clear["winner"] == "b · fast" and "ahead of the next by 1.5x" in clear["why"]


def test_report_takes_constraints_and_refuses_bad_ones(real_run):
    proc = run_cli("report", str(real_run), "--memory-budget", "0.001")
    assert proc.returncode == 0 and "Nothing qualifies" in (real_run / "index.html").read_text()
    proc = run_cli("report", str(real_run), "--objective", "speed")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "valid: decode, latency" in proc.stderr
    run_cli("report", str(real_run))


def test_compare_marks_only_changes_beyond_the_runs_noise(real_run, tmp_path):
    rows, notes = compare.compare(real_run, real_run)
    assert rows and not any(r.changed for r in rows) and not notes
    assert any(r.metric.startswith("HellaSwag acc_norm") and "0 items right only in B, 0 only in A" in r.why for r in rows)

    # Timed samples under control: the real run's loops are a few requests each (fast test
    # settings), so their own spread would decide; here 20 requests within ±2% of 10 ms.
    def scaled(factor, name):
        out = tmp_path / name
        shutil.copytree(real_run, out)
        for path in (out / "cells").glob("*latency.json"):
            c = json.loads(path.read_text())
            if c["status"] == "ok":
                c["metrics"]["e2e_ms"] = summarize([factor * 10 * (1 + 0.02 * math.sin(i)) for i in range(20)], "ms")
                store.write_json(path, c)
        return out

    steady = scaled(1.0, "steady")
    slower = [r for r in compare.compare(steady, scaled(3.0, "slower"))[0] if r.metric.startswith("e2e")]
    assert slower and all(r.changed for r in slower) and all("B/A 3.0000" in r.why for r in slower)
    nudged = [r for r in compare.compare(steady, scaled(1.0001, "nudged"))[0] if r.metric.startswith("e2e")]
    assert nudged and not any(r.changed for r in nudged)


def test_compare_finds_the_items_a_changed_engine_flips(real_run, tmp_path):
    """The same items in both runs: a change that flips a few answers is found item by item."""
    out = tmp_path / "flipped"
    shutil.copytree(real_run, out)
    raw_path = next((out / "raw").glob("*pytorch_eager.bf16*"))
    raw = json.loads(raw_path.read_text())
    items = hellaswag.load()
    flips = 0
    for index, sums in zip(raw["hellaswag"]["items"], raw["hellaswag"]["ending_logprob_sums"]):
        gold, best = items[index].label, max(range(4), key=lambda j: sums[j] / len(items[index].endings[j]))
        if best != gold and flips < 6:  # make the gold ending win by far: wrong -> right
            sums[gold] = 0.0
            flips += 1
    store.write_json(raw_path, raw)
    (row,) = [r for r in compare.compare(real_run, out)[0]
              if r.cell.startswith("pytorch_eager.bf16") and r.metric.startswith("HellaSwag")]
    assert f"{flips} items right only in B, 0 only in A" in row.why and "flipped items: " in row.why
    assert row.changed == (flips >= 6 and "McNemar p = 0.031" in row.why)


def test_compare_command_on_two_real_runs(real_run, tmp_path):
    proc = run_cli("compare", str(real_run), str(real_run))
    assert proc.returncode == 0, proc.stderr
    assert "0 of" in proc.stdout.splitlines()[-1] and "within noise" in proc.stdout
    proc = run_cli("compare", str(real_run), "no-such-run")
    assert proc.returncode == 2 and "unknown run 'no-such-run'" in proc.stderr


def test_an_inconclusive_quality_verdict_stays_a_candidate_and_says_so():
    fast, lean = _config("fast", 150, [147, 153], 2e8), _config("lean", 100, [98, 102], 1e8)
    acc = {"loss": 0.004, "loss_ci": [-0.01, 0.02], "verdict": "INCONCLUSIVE", "delta": -0.001, "se": 0.0025,
           "reference": 0.25, "items": 1000, "gained": 10, "lost": 11, "mcnemar_p": 1.0, "items_to_decide": 6000}
    gate_ = {"margin": 0.01, "verdict": "INCONCLUSIVE", "reasons": ["acc_norm ... INCONCLUSIVE"], "total": 10042,
             "design": {"z": 1.96}, "hellaswag": {"acc_norm": acc}}
    fast.cells["quality"] = {"status": "ok", "scenario": {"name": "quality"}, "quality_gate": gate_,
                             "metrics": {"perplexity": {"rolling": {"token_perplexity": 10.0}}}}
    lean.cells["quality"] = {"status": "ok", "scenario": {"name": "quality"},
                             "metrics": {"perplexity": {"rolling": {"token_perplexity": 10.0}}}}
    d = guide.decide([fast, lean], {"name": "t", "memory_gb": 8}, "b:lean", guide.Constraints())
    assert d["winner"] == "b · fast" and "quality loss +0.40% [-1.00, +2.00] (INCONCLUSIVE)" in d["why"]
    # The same stored interval under a 3% allowance is a PASS, without re-running anything.
    assert fast.gate(0.03)["verdict"] == "PASS" and fast.gate(0.001)["verdict"] == "INCONCLUSIVE"
    failed = guide.decide([fast, lean], {"name": "t", "memory_gb": 8}, "b:lean",
                          guide.Constraints(max_quality_loss_pct=0.0))
    assert failed["winner"] == "b · fast", "a loss interval reaching below 0 is not a FAIL at 0%"


def test_the_vs_baseline_column_compares_quality_on_the_same_items():
    """The budget stops each variant apart: the reference scored 8,000 items, an identical variant
    2,000 of them. Their raw accuracies differ by item sampling alone; the paired change is zero."""
    base, same = _config("base", 100, [99, 101], 1e8), _config("same", 100, [99, 101], 1e8)
    base.cells["quality"] = {"status": "ok", "scenario": {"name": "quality"},
                             "metrics": {"hellaswag": {"acc_norm": {"value": 0.2423}, "items": 8000}}}
    acc = {"loss": 0.0, "loss_ci": [-0.005, 0.005], "verdict": "PASS", "reference": 0.2375, "variant": 0.2375}
    same.cells["quality"] = {"status": "ok", "scenario": {"name": "quality"},
                             "metrics": {"hellaswag": {"acc_norm": {"value": 0.2375}, "items": 2000}},
                             "quality_gate": {"margin": 0.01, "verdict": "PASS", "hellaswag": {"acc_norm": acc},
                                              "perplexity": {"ratio": 1.012, "loss": 0.012, "loss_ci": [0.01, 0.014], "verdict": "FAIL"}}}
    shown = ", ".join(d.text for d in tables.deltas(same, base))
    assert "acc_norm" not in shown.replace("+0.0% acc_norm", ""), shown
    assert "+1.2% ppl" in shown


@pytest.mark.parametrize("fmt", ["csv", "parquet", "md"])
def test_export_is_one_tidy_table_pandas_reads_with_the_numbers_of_the_cells(real_run, tmp_path, fmt):
    import pandas as pd

    out = tmp_path / f"results.{fmt}"
    proc = run_cli("export", str(real_run), "--format", fmt, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    if fmt == "md":
        text = out.read_text()
        assert text.startswith("| run_id | model | backend |") and "| e2e_ms | median |" in text
        return
    table = pd.read_csv(out) if fmt == "csv" else pd.read_parquet(out)
    assert list(table.columns)[:3] == ["run_id", "model", "backend"]
    cells = {(c["variant"], c["scenario"]["name"]): c for c in map(lambda p: json.loads(p.read_text()),
                                                                   real_run.glob("cells/*.json"))}
    row = table[(table.variant == "q8_0") & (table.metric == "e2e_ms") & (table.statistic == "median")].iloc[0]
    latency = cells[("q8_0", "latency")]["metrics"]["e2e_ms"]
    assert row.value == pytest.approx(latency["p50"]) and [row.ci_low, row.ci_high] == pytest.approx(latency["p50_ci"])
    acc = table[(table.variant == "q8_0") & (table.metric == "hellaswag_acc_norm")].iloc[0]
    assert acc.value == pytest.approx(cells[("q8_0", "quality")]["metrics"]["hellaswag"]["acc_norm"]["value"])
    assert set(table.valid.dropna()) <= {"VALID", "INVALID"}


def test_export_refuses_an_unknown_format_in_one_line(real_run, tmp_path):
    proc = run_cli("export", str(real_run), "--format", "xlsx", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Available: csv, md, parquet" in proc.stderr
    assert not (tmp_path / "x").exists()

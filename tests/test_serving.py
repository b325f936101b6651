"""The serving load: the harness's seeded arrivals, executed by the runner library against an
engine's asynchronous API, every token stamped, every request getting exactly its tokens."""
import json
import statistics

import pytest

from evaluator.launch.process import RunnerFailure
from evaluator.measure import arrivals
from evaluator.stats.intervals import summarize
from tests.conftest import REPO, STORIES, run_cli, start_runner
from tests.test_eval import cells, run_folder

MODEL = {"path": str(STORIES / "hf"), "format": "hf"}


@pytest.fixture
def null(tmp_path):
    with start_runner("null", tmp_path) as runner:
        yield runner


@pytest.mark.parametrize("burstiness", [1.0, 0.25, 4.0])
def test_the_gaps_have_the_asked_mean_and_spread_and_the_seed_fixes_them(burstiness):
    times = arrivals.offsets(rate=50.0, count=20001, seed=3, burstiness=burstiness)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert times[0] == 0 and all(g >= 0 for g in gaps)
    assert statistics.fmean(gaps) == pytest.approx(1 / 50, rel=0.05)
    # a gamma gap's coefficient of variation is 1 / sqrt(shape): 1 for Poisson arrivals
    assert statistics.pstdev(gaps) / statistics.fmean(gaps) == pytest.approx(burstiness ** -0.5, rel=0.05)
    assert arrivals.offsets(50.0, 100, seed=3, burstiness=burstiness) == times[:100]
    assert arrivals.offsets(50.0, 100, seed=4, burstiness=burstiness) != times[:100]


def test_arrivals_follow_the_schedule_and_every_request_gets_exactly_its_tokens(null):
    null.request("load", 60, model=MODEL, options={})
    at = arrivals.offsets(rate=400.0, count=300, seed=0)
    prompts = [[1, 2 + i % 50] for i in range(len(at))]
    wanted = [1 + i % 7 for i in range(len(at))]
    out = null.request("serving", 60, requests=[{"at_s": a, "prompt": p, "new_tokens": n}
                                                for a, p, n in zip(at, prompts, wanted)])
    submitted = [r["submitted_ns"] - out["start_ns"] for r in out["requests"]]
    assert all(s >= round(a * 1e9) for s, a in zip(submitted, at)), "a request was offered before its time"
    assert submitted == sorted(submitted)
    for req, prompt, n in zip(out["requests"], prompts, wanted):
        alone = null.request("generate", 60, prompts=[prompt], max_new_tokens=n)["tokens"][0]
        assert req["tokens"] == alone  # exactly its tokens: as many as asked, the same as one at a time
        assert req["submitted_ns"] <= req["token_ns"][0] and req["token_ns"] == sorted(req["token_ns"])
    assert out["end_ns"] >= max(r["token_ns"][-1] for r in out["requests"])


def test_a_closed_load_keeps_exactly_its_users_in_flight(null):
    """concurrency=3: three requests from the start, and each answer lets the next one in."""
    null.request("load", 60, model=MODEL, options={})
    wanted = [2 + i % 5 for i in range(12)]
    out = null.request("serving", 60, concurrency=3, requests=[{"prompt": [1, 2 + i], "new_tokens": n}
                                                              for i, n in enumerate(wanted)])
    reqs = out["requests"]
    assert [len(r["tokens"]) for r in reqs] == wanted
    for began, _ in out["steps"]:  # every engine step runs with 3 in flight, or all that remain
        done = sum(1 for r in reqs if r["token_ns"][-1] <= began)
        offered = sum(1 for r in reqs if r["submitted_ns"] <= began)
        assert offered - done == min(3, len(reqs) - done)


@pytest.mark.parametrize("requests_, words", [
    ([{"at_s": 0.1, "prompt": [1], "new_tokens": 2}, {"at_s": 0.0, "prompt": [1], "new_tokens": 2}], "non-decreasing"),
    ([{"at_s": 0.0, "prompt": [1], "new_tokens": 0}], "new_tokens"),
    ([{"at_s": 0.0, "prompt": [], "new_tokens": 1}], "non-empty"),
    ([], "non-empty list"),
])
def test_a_malformed_schedule_is_refused_and_the_runner_stays_up(null, requests_, words):
    null.request("load", 60, model=MODEL, options={})
    with pytest.raises(RunnerFailure, match=words):
        null.request("serving", 60, requests=requests_)
    assert null.request("describe", 60)["engine"] == "null"


def _staggered(runner) -> tuple[dict, list, list]:
    """Six requests 4 ms apart, each wanting a different number of tokens: they join while others
    decode. The answer, the prompts and the tokens wanted."""
    prompts = [[1, 400 + i] for i in range(6)]
    wanted = [5 + 3 * i for i in range(6)]
    out = runner.request("serving", 120, requests=[{"at_s": 0.004 * i, "prompt": p, "new_tokens": n}
                                                   for i, (p, n) in enumerate(zip(prompts, wanted))])
    return out, prompts, wanted


def test_pytorch_eager_serves_through_continuous_batching_each_request_its_greedy_tokens(tmp_path):
    """transformers' continuous batching: requests joining while others decode, each exactly the
    tokens the runner's own loop generates for it, each token stamped when the manager's thread
    made it (after its request was offered, in order)."""
    with start_runner("pytorch_eager", tmp_path) as runner:
        loaded = runner.request("load", 120, model=MODEL, options={})
        assert loaded["settings"]["continuous_batching"]["allow_block_sharing"] is False
        out, prompts, wanted = _staggered(runner)
        for req, prompt, n in zip(out["requests"], prompts, wanted):
            assert req["tokens"] == runner.request("generate", 60, prompts=[prompt], max_new_tokens=n)["tokens"][0]
            assert req["submitted_ns"] <= req["token_ns"][0] and req["token_ns"] == sorted(req["token_ns"])
            assert 0 <= req["queued_ns"] < req["token_ns"][0] - req["submitted_ns"]  # the manager's own count
        runner.request("load", 120, model=MODEL, options={"kv_cache": "nokv"})
        with pytest.raises(RunnerFailure, match="unsupported.*paged KV cache"):
            runner.request("serving", 60, requests=[{"at_s": 0.0, "prompt": [1], "new_tokens": 2}])


def test_vllm_serves_each_request_its_greedy_tokens_and_says_how_long_each_waited_in_its_queue(tmp_path):
    """vLLM's scheduler, stepped by the runner: requests joining while others decode, each
    exactly the tokens generate gives it, and vLLM's own count of its time in the queue (its
    per-request stats, on in every vLLM cell)."""
    student = {"path": str(REPO / "data" / "stories260k-student" / "hf"), "format": "hf", "context_tokens": 64}
    with start_runner("vllm", tmp_path) as runner:
        loaded = runner.request("load", 300, model=dict(student, scenario="serving"), options={"dtype": "fp32"})
        assert loaded["settings"]["log_stats"] is True and "vLLM's engine" in loaded["settings"]["serves_through"]
        out, prompts, wanted = _staggered(runner)
        for req, prompt, n in zip(out["requests"], prompts, wanted):
            assert req["tokens"] == runner.request("generate", 60, prompts=[prompt], max_new_tokens=n)["tokens"][0]
            assert 0 <= req["queued_ns"] < req["token_ns"][0] - req["submitted_ns"]
        # the latency scenario times the same engine: its stats on too
        loaded = runner.request("load", 300, model=dict(student, scenario="latency"), options={"dtype": "fp32"})
        assert loaded["settings"]["log_stats"] is True and "serves_through" not in loaded["settings"]


@pytest.mark.slow
def test_llamacpp_serves_through_llama_server_each_request_exactly_its_greedy_tokens(tmp_path):
    """llama.cpp's own server, built from the engine's sources on first use (minutes, then
    cached): requests joining while others decode in its slots, each exactly its tokens, the same
    greedy ids as the binding's own loop where the stream names them, stamped in order after the
    request went in; the server's memory counts with the runner's."""
    with start_runner("llamacpp", tmp_path) as runner:
        gguf = {"path": str(STORIES / "stories260K.gguf"), "format": "gguf", "sha256": "stories260k-gguf",
                "artifact_cache": str(tmp_path / "artifacts")}
        loaded = runner.request("load", 1800, model=dict(gguf, scenario="serving", context_tokens=64), options={"quant": "f32"})
        assert loaded["settings"]["server"] == "llama-server" and loaded["settings"]["cache_prompt"] is False
        assert loaded["vocab_size"] == 512 and runner.request("memory", 10)["engine_processes"]
        out, prompts, wanted = _staggered(runner)
        with pytest.raises(RunnerFailure, match="unsupported.*llama-server"):
            runner.request("generate", 10, prompts=[[1]], max_new_tokens=1)
        runner.request("load", 120, model=dict(gguf, context_tokens=64), options={"quant": "f32"})
        assert runner.request("memory", 10)["engine_processes"] == []
        for req, prompt, n in zip(out["requests"], prompts, wanted):
            own = runner.request("generate", 60, prompts=[prompt], max_new_tokens=n)["tokens"][0]
            assert len(req["tokens"]) == n and all(t in (s, -1) for t, s in zip(req["tokens"], own)), (req["tokens"], own)
            assert req["submitted_ns"] <= req["token_ns"][0] and req["token_ns"] == sorted(req["token_ns"])


def test_a_backend_without_a_serving_path_is_refused_by_the_plan_before_anything_is_built():
    from evaluator import plan
    from evaluator.catalog import backends, models, targets
    from evaluator.measure import serving

    found = backends.discover()[0]
    without = [b for b in found.values() if b.serving_unsupported]
    assert {"onnxruntime", "pytorch_compile"} <= {b.name for b in without}
    cells = plan.plan(models.resolve("stories260k"), [found["pytorch_eager"], found["onnxruntime"]], ["fp32-sdpa-kv", "fp32"],
                      targets.resolve(["local"]), [serving.Serving()])
    why = {c.backend.name: c.unsupported for c in cells}
    assert why == {"pytorch_eager": None, "onnxruntime": found["onnxruntime"].serving_unsupported}


def test_a_serving_run_sweeps_the_rates_and_reports_goodput_within_the_slo(tmp_path):
    """`--scenarios serving` end to end on the null engine: an instant one serves every rate
    within the objectives, one that takes 20 ms a step misses the 5 ms TPOT at every rate."""
    reports = tmp_path / "reports"
    proc = run_cli("eval", "synthetic-tiny", "--backends", "null", "--variants", "none,slow_tokens", "--scenarios", "serving",
                   "--rates", "20,80", "--serving-requests", "40", "--serving-min-s", "0", "--new-tokens", "6",
                   "--slo", "ttft:100,tpot:5",
                   "--reports", str(reports))
    assert proc.returncode == 0, proc.stderr
    folder = run_folder(proc.stderr, reports)
    found = cells(folder)
    fast, slow = (found[f"synthetic-tiny__null.{v}__local__serving"] for v in ("none", "slow_tokens"))
    for cell in (fast, slow):
        assert cell["status"] == "ok" and [r["rate"] for r in cell["metrics"]["per_rate"]] == [20.0, 80.0]
        for r in cell["metrics"]["per_rate"]:
            assert r["valid"] and r["requests"] == 40 and r["ttft_ms"]["n"] == 40 and r["itl_ms"]["n"] == 40 * 5
            assert r["arrivals"]["offered_per_s"] >= 0.95 * r["arrivals"]["schedule_per_s"]
            assert r["ttft_ms"]["p50"] <= r["e2e_ms"]["p50"]
    assert fast["metrics"]["max_rate_within_slo"] == 80.0 and all(r["slo_share"] == 1 for r in fast["metrics"]["per_rate"])
    assert slow["metrics"]["max_rate_within_slo"] is None and all(r["slo_share"] == 0 for r in slow["metrics"]["per_rate"])
    assert [r["slo_verdict"] for r in fast["metrics"]["per_rate"] + slow["metrics"]["per_rate"]] == ["within"] * 2 + ["outside"] * 2
    assert all(r["tpot_ms"]["p50"] >= 20 for r in slow["metrics"]["per_rate"])
    page = (folder / "index.html").read_text()
    assert "Serving: throughput against time to first token" in page and "max requests/s within the SLO" in page
    guide = run_cli("report", str(folder), "--objective", "goodput")
    assert guide.returncode == 0, guide.stderr
    assert "null · none" in (folder / "index.html").read_text()
    # a run stored before rows had an SLO verdict still renders
    path = folder / "cells" / "synthetic-tiny__null.none__local__serving.json"
    old = json.loads(path.read_text())
    for r in old["metrics"]["per_rate"]:
        del r["slo_verdict"], r["slo_share_ci"]
    path.write_text(json.dumps(old))
    assert run_cli("report", str(folder)).returncode == 0


def test_a_concurrency_sweep_reports_each_number_of_users(tmp_path):
    reports = tmp_path / "reports"
    proc = run_cli("eval", "synthetic-tiny", "--backends", "null", "--variants", "none", "--scenarios", "serving",
                   "--concurrency", "1,4", "--serving-requests", "40", "--new-tokens", "4", "--slo", "ttft:100",
                   "--reports", str(reports))
    assert proc.returncode == 0, proc.stderr
    cell = cells(run_folder(proc.stderr, reports))["synthetic-tiny__null.none__local__serving"]
    rows = cell["metrics"]["per_rate"]
    assert [r["concurrency"] for r in rows] == [1, 4] and all(r["valid"] and r["arrivals"] is None for r in rows)
    assert all(r["requests"] == 40 and r["ttft_ms"]["n"] == 40 and r["slo_verdict"] == "within" for r in rows)
    # within the SLO at every load: the heaviest one's achieved requests/s
    assert cell["metrics"]["max_rate_within_slo"] == pytest.approx(max(r["requests_per_s"] for r in rows))


def test_a_heavy_rate_gets_requests_enough_for_its_minimum_duration(tmp_path):
    """At 200 requests/s, 30 requests would be over in 0.15 s: the engine's start, not its
    steady state. --serving-min-s 1 makes the schedule at least a second long."""
    reports = tmp_path / "reports"
    proc = run_cli("eval", "synthetic-tiny", "--backends", "null", "--variants", "none", "--scenarios", "serving",
                   "--rates", "10,200", "--serving-requests", "30", "--serving-min-s", "1", "--new-tokens", "2",
                   "--reports", str(reports))
    assert proc.returncode == 0, proc.stderr
    metrics = cells(run_folder(proc.stderr, reports))["synthetic-tiny__null.none__local__serving"]["metrics"]
    light, heavy = metrics["per_rate"]
    assert light["requests"] == 30 and heavy["requests"] == 201 and metrics["min_duration_s"] == 1
    assert heavy["duration_s"] >= 0.9 and heavy["valid"]


def test_too_few_requests_leave_the_slo_undecided_even_when_all_meet_it(tmp_path):
    """20 of 20 within the objectives cannot show 90% with 95% confidence (Wilson: 35 can)."""
    from evaluator.measure import serving

    assert serving.SLO_REQUESTS_NEEDED == 35
    reports = tmp_path / "reports"
    proc = run_cli("eval", "synthetic-tiny", "--backends", "null", "--variants", "none", "--scenarios", "serving",
                   "--rates", "50", "--serving-requests", "20", "--serving-min-s", "0", "--new-tokens", "3", "--slo", "ttft:100",
                   "--reports", str(reports))
    assert proc.returncode == 0, proc.stderr
    row, = (m := cells(run_folder(proc.stderr, reports))["synthetic-tiny__null.none__local__serving"]["metrics"])["per_rate"]
    assert row["met_slo"] == 20 and row["slo_verdict"] == "undecided" and m["max_rate_within_slo"] is None
    assert "undecided for the SLO (20 of 20 met it: 35+ requests can show 90%)" in proc.stderr


@pytest.mark.parametrize("args, words", [
    (["--concurrency", "4,2"], "increasing"),
    (["--slo", "ttfb:50"], "unknown metric 'ttfb'"),
    (["--slo", "ttft:fast"], "not a number"),
    (["--rates", "8,4"], "increasing"),
    (["--burstiness", "0"], "must be > 0"),
    (["--serving-min-s", "-1"], "must be >= 0 seconds"),
    (["--scenarios", "servng"], "Did you mean: serving"),
])
def test_bad_serving_options_are_refused_in_one_line(tmp_path, args, words):
    base = ["eval", "synthetic-tiny", "--backends", "null", "--reports", str(tmp_path)]
    proc = run_cli(*base, *(args if "--scenarios" in args else ["--scenarios", "serving", *args]))
    assert proc.returncode == 2 and words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not list(tmp_path.iterdir()), "nothing written for refused input"


def _timed(ms: float, n: int = 40) -> dict:
    return summarize([ms * (1 + 0.001 * (i % 5 - 2)) for i in range(n)], "ms")


def test_the_lightest_load_is_set_against_the_latency_scenario_and_a_difference_is_named():
    from evaluator.report import configs, light_load

    def cell(scenario, prompt_tokens, **metrics):
        return {"status": "ok", "scenario": {"name": scenario, "options": {"prompt_tokens": prompt_tokens, "new_tokens": 32}},
                "metrics": metrics, "validity": {"valid": True, "precision": 0.02}}
    latency = cell("latency", 32, ttft_ms=_timed(2.0), tpot_ms=_timed(1.0))
    served = cell("serving", 32, per_rate=[{"rate": 1.0, "valid": False, "ttft_ms": _timed(9.0), "tpot_ms": _timed(9.0)},
                                           {"rate": 2.0, "valid": True, "ttft_ms": _timed(4.0), "tpot_ms": _timed(1.0)}])
    config = configs.Config("vllm", "fp32", {"name": "local"}, {"latency": latency, "serving": served})
    (row,) = light_load.rows([config])
    assert row["load"] == "2 requests/s"  # the lightest *valid* load
    ttft, tpot = row["metrics"]
    assert ttft["verdict"].startswith("serving slower: 2.00x") and tpot["verdict"].startswith("agree")
    served["scenario"]["options"]["prompt_tokens"] = 64
    ttft, _ = light_load.rows([config])[0]["metrics"]
    assert ttft["verdict"] == "not comparable: prompt_tokens 32 against 64"
    latency["metrics"]["tpot_ms"] = summarize([], "ms")  # one new token: no TPOT, no row for it
    assert [m["name"] for m in light_load.rows([config])[0]["metrics"]] == ["time to first token"]
    latency["metrics"] = {}
    assert light_load.rows([config]) == []


def test_a_difference_inside_the_loops_precision_is_within_it_only_for_a_valid_loop():
    from evaluator.report.light_load import _verdict
    from evaluator.stats.intervals import ratio_interval

    ratio = ratio_interval(1.01, [1.005, 1.015], 1.0, [0.995, 1.005])
    assert _verdict(ratio, 0.02)[0].startswith("within ±2% (1.010x")
    assert _verdict(ratio, None)[0].startswith("serving slower: 1.01x")  # an INVALID loop claims no precision


def test_one_user_at_a_time_agrees_with_the_latency_scenario_in_the_report(tmp_path):
    """The null engine taking 20 ms to take a request in and 20 ms a token: served to one user at a
    time, its first token and time per output token are the latency scenario's, and the report's
    light-load table says so (a served request's clock starts before the engine takes it in)."""
    reports = tmp_path / "reports"
    proc = run_cli("eval", "synthetic-tiny", "--backends", "null", "--variants", "slow_intake", "--scenarios",
                   "latency,serving", "--concurrency", "1", "--serving-requests", "40", "--new-tokens", "4",
                   "--min-iterations", "20", "--reports", str(reports))
    assert proc.returncode == 0, proc.stderr
    page = (run_folder(proc.stderr, reports) / "index.html").read_text()
    assert "Serving at its lightest load against one request at a time" in page
    assert "<td class=\"l\">1 user</td>" in page
    assert "served by the same engine as every other scenario" in page  # as the runner's serving load said
    for metric in ("time to first token", "time per output token"):
        row = page[page.index(f"{metric}</td>"):][:400]
        assert "agree" in row or "within ±2%" in row, row

"""The runner protocol spoken directly to real runner processes, and every way one can fail."""
import json
import re
import subprocess
import sys

import pytest

from evaluator.launch.process import RunnerFailure
from tests.conftest import REPO, STORIES, start_runner

MODEL = {"path": str(STORIES / "hf"), "format": "hf"}


def raw_session(lines: list[str]) -> list[dict]:
    """Pipe raw lines into the null runner: the wire format itself, no host library."""
    proc = subprocess.run([sys.executable, "backends/null/runner.py"], input="\n".join(lines) + "\n",
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_hello_then_one_answer_per_request_with_its_id():
    out = raw_session([json.dumps({"id": 5, "op": "describe"}), json.dumps({"id": 6, "op": "shutdown"})])
    assert out[0] == {"event": "hello", "protocol": 1, "pid": out[0]["pid"]}
    assert [m["id"] for m in out[1:]] == [5, 6]
    assert out[1]["ok"] and out[1]["result"]["protocol"] == 1 and out[1]["result"]["engine"] == "null"


@pytest.mark.parametrize("line, words", [
    ("not json at all", "not JSON"),
    ('["a", "list"]', "JSON object"),
    ('{"id": 1, "op": "fly"}', "unknown op"),
    ('{"id": 1, "op": "generate", "prompts": [[1]], "max_new_tokens": 2}', "before load"),
    ('{"id": 1, "op": "score", "sequences": [[1, 2]]}', "before load"),
    ('{"id": 1, "op": "load"}', "model"),
])
def test_bad_requests_get_typed_errors_and_the_runner_stays_up(line, words):
    out = raw_session([line, json.dumps({"id": 99, "op": "describe"})])
    error = out[1]["error"]
    assert out[1]["ok"] is False and error["type"] == "bad_request" and words in error["message"]
    assert out[2]["id"] == 99 and out[2]["ok"]


@pytest.mark.parametrize("request_, words", [
    ({"op": "generate", "prompts": [[1, 600]], "max_new_tokens": 2}, "outside the vocabulary"),
    ({"op": "generate", "prompts": [[1], [1, 2]], "max_new_tokens": 2}, "same length"),
    ({"op": "generate", "prompts": [[]], "max_new_tokens": 2}, "non-empty"),
    ({"op": "generate", "prompts": [[1]], "max_new_tokens": 0}, "max_new_tokens"),
    ({"op": "generate", "prompts": [[1]], "max_new_tokens": "3"}, "max_new_tokens"),
    ({"op": "generate", "batches": [[[1]]], "prompts": [[1]], "max_new_tokens": 2}, "not both"),
    ({"op": "generate", "batches": [], "max_new_tokens": 2}, "batches must be a non-empty list"),
    ({"op": "generate", "batches": [[[1]], [[1, 600]]], "max_new_tokens": 2}, "outside the vocabulary"),
    ({"op": "score", "sequences": [[1, 2]], "start": 2}, "start"),
    ({"op": "score", "sequences": [[1, 2]], "start": 0}, "start"),
    ({"op": "score", "sequences": [[1, 2]], "top_k": -1}, "top_k"),
    ({"op": "load", "model": MODEL, "options": {"colour": "red"}}, "unknown load options"),
])
def test_bad_arguments_after_load_are_refused(request_, words):
    load = {"id": 1, "op": "load", "model": MODEL, "options": {}}
    out = raw_session([json.dumps(load), json.dumps({"id": 2, **request_})])
    assert out[1]["ok"], out[1]
    assert out[2]["ok"] is False and out[2]["error"]["type"] == "bad_request", out[2]
    assert words in out[2]["error"]["message"]


def test_generate_returns_exact_counts_and_runner_side_timestamps():
    load = {"id": 1, "op": "load", "model": MODEL, "options": {}}
    gen = {"id": 2, "op": "generate", "prompts": [[1, 5], [1, 9]], "max_new_tokens": 7}
    result = raw_session([json.dumps(load), json.dumps(gen)])[2]["result"]
    assert [len(t) for t in result["tokens"]] == [7, 7]
    ts = [result["start_ns"], *result["token_ns"], result["end_ns"]]
    assert ts == sorted(ts) and len(result["token_ns"]) == 7


def test_batches_run_back_to_back_each_answered_as_its_own_generate(tmp_path):
    with start_runner("null", tmp_path) as runner:
        runner.request("load", 30, model=MODEL, options={})
        answers = runner.request("generate", 30, batches=[[[1, 5]], [[1, 9], [1, 8]], [[1, 5]]],
                                 max_new_tokens=3)["answers"]
        alone = runner.request("generate", 30, prompts=[[1, 9], [1, 8]], max_new_tokens=3)
    assert [len(a["tokens"]) for a in answers] == [1, 2, 1] and answers[1]["tokens"] == alone["tokens"]
    assert answers[0]["tokens"] == answers[2]["tokens"]
    ts = [t for a in answers for t in (a["start_ns"], *a["token_ns"], a["end_ns"])]
    assert ts == sorted(ts), "each batch starts after the one before it returned"


def test_score_returns_one_logprob_per_position_from_start(tmp_path):
    with start_runner("null", tmp_path) as runner:
        runner.request("load", 30, model=MODEL, options={})
        out = runner.request("score", 30, sequences=[[1, 2, 3, 4], [1, 2]], start=1, top_k=3)["results"]
    assert [len(r["logprobs"]) for r in out] == [3, 1]
    assert all(len(top) == 3 for top in out[0]["top"])


def test_a_long_wait_is_reported_as_it_goes_and_still_ends_at_its_deadline(tmp_path, monkeypatch):
    """A load that compiles for minutes shows it is still going (the evaluator's progress bar
    gets `waiting` calls), and a request that never answers is still killed at its deadline."""
    from evaluator.launch import process

    monkeypatch.setattr(process, "PATIENCE_S", 0.05)
    calls = []
    with start_runner("null", tmp_path) as runner:
        runner.waiting = lambda what, s: calls.append((what, s))
        runner.request("load", 30, model=MODEL, options={"fault": "slow_tokens"})
        runner.request("generate", 30, prompts=[[1]], max_new_tokens=10)  # 20 ms a token
        assert len(calls) >= 2 and {w for w, _ in calls} == {"generate"} and calls == sorted(calls, key=lambda c: c[1])
        runner.request("load", 30, model=MODEL, options={"fault": "hang_on_generate"})
        with pytest.raises(RunnerFailure, match="no answer to generate within 0.3 s"):
            runner.request("generate", 0.3, prompts=[[1]], max_new_tokens=4)


@pytest.mark.parametrize("fault, op, status, words", [
    ("crash_on_generate", "generate", "crashed", "exited with code 3"),
    ("hang_on_generate", "generate", "timeout", "no answer to generate within 2 s"),
    ("garbage_on_generate", "generate", "protocol-error", "not a JSON object"),
    ("oom_on_load", "load", "out-of-memory", "simulated out of memory"),
    ("crash_on_load", "load", "crashed", "during load"),
])
def test_every_runner_failure_becomes_one_status_with_a_reason(tmp_path, fault, op, status, words):
    with start_runner("null", tmp_path) as runner:
        with pytest.raises(RunnerFailure) as info:
            runner.request("load", 30, model=MODEL, options={"fault": fault})
            runner.request("generate", 2, prompts=[[1]], max_new_tokens=4)
        assert info.value.status == status and words in info.value.reason
        if status in ("timeout", "protocol-error", "crashed"):
            assert runner.proc.poll() is not None, "the runner must be dead after a fatal failure"


def test_stray_prints_from_the_engine_never_reach_the_protocol_channel():
    code = ("import sys; sys.path.insert(0, '.')\n"
            "from evaluator.runner import Engine, serve\n"
            "class Loud(Engine):\n"
            "    def describe(self):\n"
            "        print('chatty engine'); return {'engine': 'loud'}\n"
            "serve(Loud())\n")
    proc = subprocess.run([sys.executable, "-c", code], input='{"id":1,"op":"describe"}\n', capture_output=True,
                          text=True, cwd=REPO, timeout=30)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[1]["result"]["engine"] == "loud" and "chatty engine" in proc.stderr


def test_grouped_score_answers_each_group_as_the_shared_prefix_form_does(tmp_path):
    groups = [{"prefix": [1, 5, 9], "sequences": [[3, 4], [7]]}, {"prefix": [1], "sequences": [[2, 2, 2]]}]
    with start_runner("null", tmp_path) as runner:
        runner.request("load", 30, model=MODEL, options={})
        grouped = runner.request("score", 30, groups=groups, top_k=2)["results"]
        single = [runner.request("score", 30, prefix=g["prefix"], sequences=g["sequences"], top_k=2)["results"]
                  for g in groups]
        with pytest.raises(RunnerFailure, match="groups must be"):
            runner.request("score", 30, groups=[], top_k=0)
        with pytest.raises(RunnerFailure, match="only groups and top_k"):
            runner.request("score", 30, groups=groups, start=1, top_k=0)
    assert grouped == single and [len(r["logprobs"]) for r in grouped[0]] == [2, 1]


@pytest.mark.parametrize("op, result, request_args, says", [
    ("generate", {"tokens": [[1, 2]], "token_ns": [1, 2], "start_ns": 0, "end_ns": 3}, {"prompts": [[1], [1]]},
     "tokens is not one list per prompt (2)"),
    ("generate", {"tokens": [[1, "2"]], "token_ns": [1], "start_ns": 0, "end_ns": 3}, {"prompts": [[1]]},
     "tokens[0] is not a list of integers"),
    ("generate", {"answers": [{"tokens": [[1]], "token_ns": [1], "start_ns": 0, "end_ns": 3}]},
     {"batches": [[[1]], [[1]]]}, "answers is not one per batch (2)"),
    ("generate", {"answers": [{"tokens": [[1]], "token_ns": [1], "start_ns": 0, "end_ns": 3}]},
     {"batches": [[[1], [1]]]}, "answers[0]: tokens is not one list per prompt (2)"),
    ("score", {"results": [{"logprobs": "-1.0", "top": []}]}, {"sequences": [[1, 2]]}, "results[0].logprobs is not a list"),
    ("score", {"results": [[{"logprobs": [-1.0], "top": []}]]}, {"groups": [{}, {}]}, "results has 1 groups, 2 asked"),
    ("load", {"vocab_size": "512", "device": "cpu"}, {}, "vocab_size is not a positive integer"),
    ("memory", [], {}, "the result is list, not an object"),
])
def test_an_answer_of_the_wrong_shape_is_named_at_the_boundary(op, result, request_args, says):
    from evaluator.launch import answers
    with pytest.raises(answers.Malformed, match=re.escape(says)):
        answers.check(op, result, request_args)


def test_well_formed_answers_pass_the_boundary_unchanged():
    from evaluator.launch import answers
    ok = {"results": [[{"logprobs": [-1.0, -2.5], "top": [[[3, -0.1]], []]}]]}
    assert answers.check("score", ok, {"groups": [{}]}) is ok


def test_a_tool_past_its_deadline_is_stopped_with_everything_it_started(tmp_path):
    """pip or docker build past its deadline: Overdue names it, and its children die with it."""
    import time
    from pathlib import Path

    from evaluator.launch import bounded
    pidfile = tmp_path / "grandchild.pid"
    started = time.monotonic()
    with pytest.raises(bounded.Overdue, match="a slow build did not finish within 1 s"):
        bounded.run(["bash", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], 1, "a slow build")
    assert time.monotonic() - started < 30
    stat = Path(f"/proc/{int(pidfile.read_text())}/stat")
    deadline = time.monotonic() + 5
    while stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z" and time.monotonic() < deadline:
        time.sleep(0.05)  # gone, or a zombie waiting for its new parent to reap it: dead either way
    assert not stat.exists() or stat.read_text().split(")")[-1].split()[0] == "Z", "the build's child outlived it"


def test_the_runner_library_imports_only_the_standard_library_and_itself():
    """It is shipped into every backend's environment and image, whatever they hold."""
    import ast
    import sys

    from conftest import REPO

    for path in sorted((REPO / "evaluator" / "runner").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or name.startswith("evaluator.runner"), f"{path.name} imports {name}"

"""Weights another backend makes (evaluator/weights.py): the maker is asked once per target and
model in a run, its path handed on, and a maker that fails fails the cell with its own reason."""
import pytest

from evaluator import weights
from evaluator.catalog import backends, targets
from evaluator.launch.process import RunnerFailure
from evaluator.measure import scenarios
from evaluator.plan import Cell

VLLM = backends.select(["vllm"])[0]
LOCAL = targets.resolve(["local"])[0]


def _cell(scenario) -> Cell:
    return Cell(f"student__vllm.gptq-w4a16__local__{scenario.name}", VLLM, VLLM.variant("gptq-w4a16"), LOCAL, scenario, None)


class Maker:
    """A maker's runner as weights.made sees it: load answers (or raises), then close."""
    def __init__(self, answer):
        self.answer, self.loads, self.closed = answer, [], False

    def request(self, kind, timeout_s, **body):
        self.loads.append((kind, body))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def log_tail(self):
        return "the maker's last words"

    def close(self):
        self.closed = True


def test_the_maker_is_asked_once_and_every_cell_of_the_variant_gets_its_path():
    maker = Maker({"artifact": {"path": "/cache/llmcompressor-gptq", "key": "k1", "reused": False, "build_s": 12.5}})
    started = []

    def start(maker_cell):
        started.append(maker_cell)
        return maker, {"path": "/model"}

    first = weights.made(_cell(scenarios.Latency()), "run-1", "sha-once", start, 60)
    second = weights.made(_cell(scenarios.Throughput()), "run-1", "sha-once", start, 60)
    assert len(started) == 1 and started[0].backend.name == "llmcompressor" and started[0].variant.name == "gptq-w4a16"
    assert maker.loads == [("load", {"model": {"path": "/model"}, "options": {"quant": "gptq-w4a16", "device": "cpu"}})]
    assert maker.closed and first["path"] == second["path"] == "/cache/llmcompressor-gptq"
    assert (first["reused"], first["build_s"], first["backend"]) == (False, 12.5, "llmcompressor")
    assert (second["reused"], second["build_s"]) == (True, None)  # this cell built nothing
    weights.made(_cell(scenarios.Latency()), "run-2", "sha-once", start, 60)
    assert len(started) == 2  # another run (in the same process) asks the maker again


def test_a_maker_that_fails_fails_the_cell_with_its_reason_and_its_log():
    maker = Maker(RunnerFailure("failed", "calibration ran out of memory"))
    with pytest.raises(RunnerFailure) as exc:
        weights.made(_cell(scenarios.Latency()), "run-1", "sha-fails", lambda c: (maker, {}), 60)
    assert exc.value.reason == "making its weights with llmcompressor gptq-w4a16: calibration ran out of memory"
    assert exc.value.log_tail == "the maker's last words" and maker.closed


def test_a_maker_that_answers_no_path_is_a_protocol_error():
    with pytest.raises(RunnerFailure) as exc:
        weights.made(_cell(scenarios.Latency()), "run-1", "sha-nopath", lambda c: (Maker({"artifact": None}), {}), 60)
    assert exc.value.status == "protocol-error" and "answered no artifact path" in exc.value.reason

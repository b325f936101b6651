"""A tool a runner starts while it loads (llama.cpp's converter, the ONNX export) dies with the
runner and has a deadline of its own."""
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO
from evaluator.runner import RunnerError, child


def test_a_step_past_its_deadline_is_a_failure_that_names_it():
    with pytest.raises(RunnerError, match="the slow step did not finish within 1 s") as err:
        child.run(["sleep", "30"], "the slow step", timeout_s=1)
    assert err.value.type == "internal"


def test_a_step_dies_when_its_runner_is_killed(tmp_path):
    pid_file, step_py, runner_py = tmp_path / "pid", tmp_path / "step.py", tmp_path / "runner.py"
    step_py.write_text(f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)\n")
    runner_py.write_text(f"import sys\nfrom evaluator.runner import child\nchild.run([sys.executable, {str(step_py)!r}], 'a step')\n")
    runner = subprocess.Popen([sys.executable, str(runner_py)], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    step = int(pid_file.read_text())
    runner.send_signal(signal.SIGKILL)  # as the evaluator's deadline, or its own death, ends a runner
    runner.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(step, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(step, signal.SIGKILL)
    pytest.fail("the step outlived its runner")

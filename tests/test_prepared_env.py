"""A backend run in an environment the user already has (--python BACKEND=PATH): used as it is,
checked once before the run, recorded and keyed. The environment here holds transformers 5.17,
whose forward still takes `past_key_values` (5.24 renamed it `cache`): the runner must read the
name from the model, not assume it."""
import hashlib
import subprocess
import sys

import pytest

from evaluator import envs
from evaluator.hardlinks import share_identical
from tests.conftest import EXPECTED_GREEDY, REPO, run_cli
from tests.test_eval import FAST, cells, run_folder

# torch from this machine's CPU wheel (never a CUDA build), the older transformers from PyPI
PACKAGES = ["torch==2.13.0", "transformers==5.17.0", "safetensors>=0.4"]


@pytest.fixture(scope="module")
def older_transformers():
    """A prepared environment, built once into .cache/prepared-envs/ (about a minute)."""
    venv = REPO / ".cache" / "prepared-envs" / hashlib.sha256(repr(PACKAGES).encode()).hexdigest()[:12]
    python = venv / "bin" / "python"
    if not (venv / ".done").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
                               *PACKAGES], capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, done.stderr[-2000:]
        share_identical(venv, [v for v in envs.VENVS.iterdir() if v.is_dir()])  # its torch is theirs
        (venv / ".done").write_text("")
    return python


def test_a_given_environment_with_transformers_5_17_reproduces_the_reference_text(older_transformers, tmp_path):
    proc = run_cli("eval", "stories260k", "--backends", "pytorch_eager", "--variants", "fp32-sdpa-kv,fp32-sdpa-nokv",
                   "--scenarios", "latency", "--python", f"pytorch_eager={older_transformers}",
                   "--check-tokens", "256", "--reports", str(tmp_path), *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "setting up the pytorch_eager environment" not in proc.stderr, "nothing is built for a given environment"
    for cell in cells(run_folder(proc.stderr, tmp_path)).values():
        assert cell["status"] == "ok", cell.get("reason")
        assert cell["environment"].startswith(f"given: {older_transformers} (python 3."), cell["environment"]
        assert cell["engine"]["versions"]["transformers"] == "5.17.0"
        assert cell["load"]["settings"]["cache_keyword"] == "past_key_values"
        assert cell["check"]["matches_reference"] is True and cell["check"]["text"].startswith(EXPECTED_GREEDY[:200])


@pytest.mark.parametrize("given, words", [
    ("pytorch_eager=/no/such/python", "--python pytorch_eager=/no/such/python: does not start"),
    ("pytorch_eagre=/usr/bin/python3", "Did you mean: pytorch_eager?"),
    ("pytorch_eager", "give BACKEND=PATH"),
])
def test_a_given_environment_that_does_not_start_is_one_line_and_exit_2(tmp_path, given, words):
    proc = run_cli("eval", "stories260k", "--backends", "pytorch_eager", "--python", given, "--reports", str(tmp_path))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and words in lines[0], proc.stderr
    assert not list(tmp_path.iterdir())


def test_a_local_target_can_name_its_prepared_environment_in_the_targets_file(older_transformers, tmp_path):
    targets = tmp_path / "targets.toml"
    targets.write_text(f'[mine]\ndescription = "this machine, its prepared torch"\ntransport = "local"\n'
                       f'python = {{ pytorch_eager = "{older_transformers}" }}\n')
    proc = run_cli("eval", "stories260k", "--targets", "mine", "--backends", "pytorch_eager", "--variants", "fp32-sdpa-kv",
                   "--scenarios", "latency", "--reports", str(tmp_path / "r"), *FAST,
                   env={"DEPLOY_EVAL_TARGETS": str(targets)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "setting up the pytorch_eager environment" not in proc.stderr
    (cell,) = cells(run_folder(proc.stderr, tmp_path / "r")).values()
    assert cell["status"] == "ok" and cell["environment"].startswith(f"given: {older_transformers} (python 3.")
    assert cell["engine"]["versions"]["transformers"] == "5.17.0"

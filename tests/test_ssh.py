"""The ssh transport: a remote machine without Docker runs the runner with its own interpreter.
The remote is a real OpenSSH server on loopback; its interpreter is a prepared environment
(transformers 5.17, tests/test_prepared_env.py), so nothing is installed for the run."""
import shutil
import subprocess

import pytest

from tests.conftest import EXPECTED_GREEDY, SSHD, run_cli, sshd_on_loopback
from tests.test_eval import FAST, cells, run_folder
from tests.test_prepared_env import older_transformers  # noqa: F401  (a fixture)

pytestmark = pytest.mark.skipif(not (SSHD.exists() and shutil.which("ssh")),
                                reason="needs Debian's openssh-server (.ci/run installs it)")
PORT = 2223


@pytest.fixture(scope="module")
def box(tmp_path_factory, older_transformers):  # noqa: F811
    """sshd on 127.0.0.1:2223 and a targets file naming it as an ssh target whose pytorch_eager
    runs with the prepared interpreter."""
    d = tmp_path_factory.mktemp("ssh-box")
    with sshd_on_loopback(d, PORT) as options:
        targets = d / "targets.toml"
        quoted = ", ".join(f'"{o}"' for o in options)
        targets.write_text(f'[box]\ndescription = "this machine, reached over SSH, no Docker"\ntransport = "ssh"\n'
                           f'host = "root@127.0.0.1"\narch = "x86_64"\naccelerator = "none"\nmemory_gb = 16\n'
                           f'ssh_options = [{quoted}]\npython = {{ pytorch_eager = "{older_transformers}" }}\n')
        yield {"targets": targets, "options": options, "python": older_transformers}


def ssh(box, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ssh", "-o", "BatchMode=yes", *box["options"], "root@127.0.0.1", command],
                          capture_output=True, text=True, timeout=60)


def test_a_run_over_the_ssh_transport_uses_the_machines_own_interpreter(box, tmp_path):
    ssh(box, "rm -rf ~/.cache/deploy-eval/runners ~/.cache/deploy-eval/models")  # both must travel
    proc = run_cli("eval", "stories260k", "--targets", "box", "--backends", "pytorch_eager,onnxruntime",
                   "--variants", "fp32-sdpa-kv,fp32", "--scenarios", "latency,quality", "--check-tokens", "256",
                   "--reports", str(tmp_path), *FAST, "--limit", "20", "--ppl-tokens", "2000",
                   env={"DEPLOY_EVAL_TARGETS": str(box["targets"])}, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "copying hf to root@127.0.0.1:" in proc.stderr and "/.cache/deploy-eval/runners/" in proc.stderr
    assert "setting up the pytorch_eager environment" not in proc.stderr, "nothing is built for an ssh target"
    results = {(c["backend"], c["scenario"]["name"]): c for c in cells(run_folder(proc.stderr, tmp_path)).values()}
    lat = results[("pytorch_eager", "latency")]
    assert lat["status"] == "ok" and lat["target"]["transport"] == "ssh", lat.get("reason")
    assert lat["environment"].startswith(f"given on root@127.0.0.1: {box['python']} (python 3."), lat["environment"]
    assert lat["engine"]["versions"]["transformers"] == "5.17.0"
    assert lat["check"]["matches_reference"] is True and lat["check"]["text"].startswith(EXPECTED_GREEDY[:200])
    assert results[("pytorch_eager", "quality")]["metrics"]["hellaswag"]["items"] == 20
    # a backend the target names no interpreter for is planned unsupported, with what to set
    ort = results[("onnxruntime", "latency")]
    assert ort["status"] == "unsupported" and "names no interpreter for onnxruntime" in ort["reason"]
    # every runner ended with its cell: no pid file and no runner process left on the machine
    assert ssh(box, "ls ~/.cache/deploy-eval/run").stdout.split() == []
    assert "/.cache/deploy-eval/runners/" not in ssh(box, "ps -eo args").stdout


def test_a_hanging_runner_on_an_ssh_target_is_killed_there(box, tmp_path):
    """The deadline kills the runner's process group on its machine, not just the ssh client."""
    targets = tmp_path / "targets.toml"
    targets.write_text(box["targets"].read_text().replace('pytorch_eager = "', 'null = "'))  # stdlib-only runner
    proc = run_cli("eval", "stories260k", "--targets", "box", "--backends", "null", "--variants", "hang_on_generate,none",
                   "--scenarios", "latency", "--request-timeout", "5", "--check-tokens", "8", "--reports", str(tmp_path / "r"),
                   *FAST, env={"DEPLOY_EVAL_TARGETS": str(targets)})
    results = {c["variant"]: c for c in cells(run_folder(proc.stderr, tmp_path / "r")).values()}
    assert results["hang_on_generate"]["status"] == "timeout" and results["none"]["status"] == "ok", proc.stderr[-2000:]
    assert "backends/null/runner.py" not in ssh(box, "ps -eo args").stdout, "the hanging runner is gone"
    assert ssh(box, "ls ~/.cache/deploy-eval/run").stdout.split() == []


@pytest.mark.parametrize("entry, words", [
    ('python = { default = "/no/such/python" }', "python /no/such/python on root@127.0.0.1 does not start"),
    ("", "runs runners with that machine's own interpreters: set python"),
])
def test_an_ssh_target_without_a_working_interpreter_is_one_line_and_exit_2(box, tmp_path, entry, words):
    targets = tmp_path / "targets.toml"
    targets.write_text("\n".join(line for line in box["targets"].read_text().splitlines()
                                 if not line.startswith("python")) + "\n" + entry + "\n")
    proc = run_cli("eval", "stories260k", "--targets", "box", "--backends", "pytorch_eager",
                   "--reports", str(tmp_path / "r"), env={"DEPLOY_EVAL_TARGETS": str(targets)})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and words in lines[0], proc.stderr
    assert not (tmp_path / "r").exists()


def test_a_runner_left_by_a_dead_evaluator_is_killed_before_the_next_run(box, tmp_path):
    """What a dead evaluator's runner leaves on the remote machine: its pid file and its process
    group (here a sleep in a session of its own, as sshd starts a runner)."""
    import socket

    host = socket.gethostname()
    ssh(box, f"mkdir -p ~/.cache/deploy-eval/run; setsid sh -c 'echo $$ > ~/.cache/deploy-eval/run/{host}_999999_left.pid; "
             f"exec sleep 3600' </dev/null >/dev/null 2>&1 &")
    targets = tmp_path / "targets.toml"
    targets.write_text(box["targets"].read_text().replace('pytorch_eager = "', 'null = "'))
    proc = run_cli("eval", "stories260k", "--targets", "box", "--backends", "null", "--variants", "none",
                   "--scenarios", "latency", "--check-tokens", "8", "--reports", str(tmp_path / "r"), *FAST,
                   env={"DEPLOY_EVAL_TARGETS": str(targets)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"killed {host}_999999_left on root@127.0.0.1" in proc.stderr
    assert "sleep 3600" not in ssh(box, "ps -eo args").stdout

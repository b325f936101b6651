"""A remote target over real SSH: an OpenSSH server on loopback (key-only, started here), its
Docker engine reached through it (`ssh host docker run -i`), the model shipped once by content
hash, results brought home. .ci/run installs openssh-server; without it these tests skip."""
import shutil
import subprocess

import pytest

from tests.conftest import SSHD, run_cli, sshd_on_loopback
from tests.test_eval import cells, run_folder

pytestmark = pytest.mark.skipif(not (SSHD.exists() and shutil.which("dockerd") and shutil.which("debootstrap")),
                                reason="needs Debian's openssh-server, docker.io and debootstrap (.ci/run installs them)")
PORT = 2222
FAST = ["--min-iterations", "3", "--min-duration", "0", "--warmup", "1", "--new-tokens", "8", "--batch-sizes", "1,2",
        "--precision", "1e9", "--limit", "20", "--ppl-tokens", "2000"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory, docker_engine):
    """sshd on 127.0.0.1:2222 whose sessions reach deploy-eval's Docker engine; a targets file naming it."""
    from evaluator.launch.docker import SOCKET as sock  # the engine docker/dockerd.sh started

    d = tmp_path_factory.mktemp("ssh")
    with sshd_on_loopback(d, PORT, f"SetEnv DOCKER_HOST=unix://{sock}\n") as options:
        targets = d / "targets.toml"
        quoted = ", ".join(f'"{o}"' for o in options)
        targets.write_text(f'[lab]\ndescription = "this machine, reached over SSH"\ntransport = "ssh-docker"\n'
                           f'host = "root@127.0.0.1"\narch = "x86_64"\naccelerator = "none"\nmemory_gb = 16\n'
                           f'ssh_options = [{quoted}]\n')
        yield {"targets": targets, "options": options, "dir": d}


def test_a_run_over_ssh_measures_in_the_remote_engine_and_brings_results_home(lab, tmp_path):
    home = subprocess.run(["ssh", "-o", "BatchMode=yes", *lab["options"], "root@127.0.0.1", "printf %s $HOME"],
                          capture_output=True, text=True, check=True).stdout
    subprocess.run(["ssh", "-o", "BatchMode=yes", *lab["options"], "root@127.0.0.1", "rm -rf ~/.cache/deploy-eval/models"],
                   check=True)  # the model must travel
    proc = run_cli("eval", "stories260k", "--targets", "lab", "--backends", "pytorch_eager", "--variants", "fp32-sdpa-kv",
                   "--scenarios", "latency,quality", "--reports", str(tmp_path), *FAST,
                   env={"DEPLOY_EVAL_TARGETS": str(lab["targets"])}, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"copying hf to root@127.0.0.1:{home}/.cache/deploy-eval/models/" in proc.stderr
    results = {c["scenario"]["name"]: c for c in cells(run_folder(proc.stderr, tmp_path)).values()}
    lat = results["latency"]
    assert lat["status"] == "ok" and lat["check"]["matches_reference"] is True
    assert lat["target"]["transport"] == "ssh-docker" and lat["image"]["id"].startswith("sha256:")
    assert results["quality"]["metrics"]["hellaswag"]["items"] == 20
    # The second run finds the model already there (by content hash) and does not copy it again.
    again = run_cli("eval", "stories260k", "--targets", "lab", "--backends", "pytorch_eager", "--variants", "fp32-sdpa-kv",
                    "--scenarios", "latency", "--reports", str(tmp_path / "again"), *FAST,
                    env={"DEPLOY_EVAL_TARGETS": str(lab["targets"])})
    assert again.returncode == 0 and "copying" not in again.stderr


def test_each_format_of_a_model_reaches_the_target_on_its_own(lab, monkeypatch):
    """One model, one content hash, several artifacts (the HF folder, the GGUF file's folder):
    a GGUF runner must find its file on the target even after the HF folder was shipped."""
    from evaluator.catalog import models, targets
    from evaluator.launch import docker, shipping

    monkeypatch.setattr(targets, "USER_FILE", lab["targets"])
    engine = docker.DockerEngine(targets.resolve(["lab"])[0])
    model = models.resolve("stories260k")
    shipped, who = {}, shipping.owner(engine)
    # A cache that already exists, made by something else with the default umask, is made private too.
    subprocess.run(engine.ssh(f"mkdir -p {who.home}/.cache/deploy-eval && chmod 755 {who.home}/.cache/deploy-eval"), check=True)
    for fmt in ("hf", "gguf"):
        artifact = model.artifact(fmt)
        folder = artifact if artifact.is_dir() else artifact.parent  # as evaluator/run.py ships it
        shipped[fmt] = shipping.ship_model(engine, folder, "f" * 64, who, log=lambda m: None)
        found = subprocess.run(engine.ssh(f"test -e {shipped[fmt]}/{artifact.relative_to(folder)}"))
        assert found.returncode == 0, f"{fmt}: {artifact.name} is not in {shipped[fmt]} on the target"
    assert shipped["hf"] != shipped["gguf"]
    # Trusted by content, not by a marker: a file changed on the target is noticed, and sent again.
    subprocess.run(engine.ssh(f"echo tampered >> {shipped['hf']}/config.json"), check=True)
    said = []
    shipping.ship_model(engine, model.artifact("hf"), "f" * 64, who, log=said.append)
    assert said and said[0].startswith("copying hf to")
    again = []
    shipping.ship_model(engine, model.artifact("hf"), "f" * 64, who, log=again.append)
    assert again == [], "an intact copy is reused"
    mode = subprocess.run(engine.ssh(f"stat -c %a {who.home}/.cache/deploy-eval"), capture_output=True, text=True)
    assert mode.stdout.strip() == "700", "the cache is its user's alone"


def test_an_unknown_host_key_is_refused_in_batch_mode(lab, tmp_path):
    targets = tmp_path / "targets.toml"
    options = [o for o in lab["options"] if not o.startswith("UserKnownHostsFile")][:-1]
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    quoted = ", ".join(f'"{o}"' for o in [*options, "-o", f"UserKnownHostsFile={empty}"])
    targets.write_text(f'[lab]\ntransport = "ssh-docker"\nhost = "root@127.0.0.1"\narch = "x86_64"\n'
                       f'accelerator = "none"\nmemory_gb = 16\nssh_options = [{quoted}]\n')
    proc = run_cli("eval", "stories260k", "--targets", "lab", "--backends", "null", "--reports", str(tmp_path / "r"),
                   env={"DEPLOY_EVAL_TARGETS": str(targets)})
    assert proc.returncode == 2 and "unreachable over SSH" in proc.stderr and "Host key verification failed" in proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(3000)
def test_a_remote_engine_compiles_llama_cpp_for_its_own_cpu(lab, docker_engine, tmp_path):
    """This machine's wheelhouse is built for this CPU: a remote engine gets none and compiles
    llama.cpp natively in its own image build (minutes, once). On demand: just test -m slow."""
    proc = run_cli("eval", "stories260k", "--targets", "lab", "--backends", "llamacpp", "--variants", "f32",
                   "--scenarios", "latency", "--reports", str(tmp_path), *FAST,
                   env={"DEPLOY_EVAL_TARGETS": str(lab["targets"])}, timeout=3000)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lat = next(iter(cells(run_folder(proc.stderr, tmp_path)).values()))
    assert lat["status"] == "ok" and lat["target"]["transport"] == "ssh-docker"
    assert lat["check"]["matches_reference"] is True, "f32 reproduces the published greedy text"
    # built by the native branch of its Dockerfile (the one that installs a compiler), not from a wheelhouse
    compiler = docker_engine.run("run", "--rm", "--entrypoint", "sh", lat["image"]["tag"], "-c", "command -v g++")
    assert compiler.returncode == 0, f"{lat['image']['tag']} was not built by compiling llama.cpp"

"""An arm64 target, for real under emulation: qemu-aarch64 registered with binfmt_misc
(docker/qemu.sh), an arm64 Debian base (docker/base.sh arm64), and llamacpp's arm64 image with
llama.cpp cross-compiled here (evaluator/launch/cross.py): a stand-in for a Raspberry Pi 5.

Slow (minutes: the arm64 debootstrap and the cross-compile, once), so run on demand:
    just test -m slow tests/test_arm64.py
It needs Debian's qemu-user-static, g++-aarch64-linux-gnu, docker.io and debootstrap."""
import shutil

import pytest

from tests.conftest import docker_script, run_cli
from tests.test_eval import cells, run_folder

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not all(shutil.which(t) for t in ("qemu-aarch64-static", "aarch64-linux-gnu-g++", "dockerd", "debootstrap")),
    reason="needs qemu-user-static, g++-aarch64-linux-gnu, docker.io and debootstrap")]


def test_llamacpp_runs_stories260k_in_an_arm64_image_under_emulation(tmp_path):
    for script, args in (("dockerd.sh", []), ("qemu.sh", []), ("base.sh", ["arm64"])):
        docker_script(script, *args)
    proc = run_cli("eval", "stories260k", "--targets", "docker-arm64,local", "--backends", "llamacpp", "--variants", "f32,q8_0",
                   "--scenarios", "latency,quality", "--limit", "20", "--ppl-tokens", "2000", "--min-iterations", "3",
                   "--min-duration", "0", "--precision", "1e9", "--reference", "llamacpp:f32", "--reports", str(tmp_path),
                   timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {(c["target"]["name"], c["variant"], c["scenario"]["name"]): c
               for c in cells(run_folder(proc.stderr, tmp_path)).values()}
    arm = results[("docker-arm64", "f32", "latency")]
    assert arm["status"] == "ok" and arm["target"]["arch"] == "aarch64"
    assert arm["engine"]["arch"] == "aarch64", "the runner itself saw an arm64 machine"
    assert arm["image"]["tag"].endswith("-arm64")
    assert "bandwidth" not in arm or not any(arm["bandwidth"].values()), "no x86 bandwidth probe beside an emulated cell"
    # f32 is exact: the published greedy text, on arm64 as on x86_64
    assert arm["check"]["matches_reference"] is True
    local = results[("local", "f32", "quality")]["metrics"]["perplexity"]["rolling"]["token_perplexity"]
    emulated = results[("docker-arm64", "f32", "quality")]["metrics"]["perplexity"]["rolling"]["token_perplexity"]
    assert abs(emulated / local - 1) < 1e-4

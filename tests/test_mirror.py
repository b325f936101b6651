"""docker/base.sh builds from the machine's own Debian mirror (docker/mirror.sh): the argument,
else $DEBIAN_MIRROR, else the first URI of apt's configuration in either format."""
import os
import subprocess

from conftest import REPO

MIRROR = REPO / "docker" / "mirror.sh"


def mirror(apt_dir, *args, env=None):
    full = {k: v for k, v in os.environ.items() if k != "DEBIAN_MIRROR"} | {"APT_DIR": str(apt_dir)} | (env or {})
    return subprocess.run([str(MIRROR), *args], capture_output=True, text=True, env=full, timeout=30)


def test_a_one_line_source_with_options_gives_its_uri_not_the_options(tmp_path):
    (tmp_path / "sources.list").write_text(
        "# local mirror\ndeb [arch=amd64 signed-by=/usr/share/keyrings/debian.gpg] http://mirror.lan/debian bookworm main\n")
    assert mirror(tmp_path).stdout.strip() == "http://mirror.lan/debian"


def test_a_deb822_source_gives_its_first_uri(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: https://deb.example.org/debian https://other.example.org/debian\nSuites: bookworm\n")
    assert mirror(tmp_path).stdout.strip() == "https://deb.example.org/debian"


def test_the_argument_and_the_environment_come_first(tmp_path):
    (tmp_path / "sources.list").write_text("deb http://mirror.lan/debian bookworm main\n")
    assert mirror(tmp_path, "http://given/debian").stdout.strip() == "http://given/debian"
    assert mirror(tmp_path, env={"DEBIAN_MIRROR": "http://env/debian"}).stdout.strip() == "http://env/debian"


def test_no_mirror_anywhere_is_one_line_and_exit_1(tmp_path):
    done = mirror(tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "pass one" in done.stderr

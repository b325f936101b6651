"""The report opens in a real headless browser (Debian's chromium) and shows the stored numbers."""
import json
import shutil
import subprocess

import pytest

from evaluator.report.html import _fmt
from tests.conftest import run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0"]


@pytest.mark.skipif(not CHROMIUM, reason="chromium is not installed (.ci/run installs Debian's chromium)")
def test_report_renders_in_chromium_with_the_numbers_of_the_result_files(tmp_path):
    proc = run_cli("eval", "stories260k", "--backends", "pytorch_eager", "--variants", "fp32-sdpa-kv",
                   "--scenarios", "latency", "--min-iterations", "3", "--min-duration", "0", "--new-tokens", "8",
                   "--reports", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    (page,) = tmp_path.glob("*/index.html")
    (cell_file,) = tmp_path.glob("*/cells/*.json")
    cell = json.loads(cell_file.read_text())
    browser = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
                             capture_output=True, text=True, timeout=120)
    dom = browser.stdout
    assert "<table" in dom and cell["cell_id"] in dom
    assert _fmt(cell["metrics"]["e2e_ms"]["p50"]) in dom and _fmt(cell["metrics"]["ttft_ms"]["p50"]) in dom
    assert "Uncaught" not in browser.stderr and "CONSOLE" not in browser.stderr

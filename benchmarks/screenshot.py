"""The README's picture of a report: the top of a run's index.html in headless Chromium
(Debian's `chromium`, driven by Playwright, as the report tests do), once every plot is drawn.

    .venvs/host/bin/python benchmarks/screenshot.py reports/<run-id> reports/screenshot.png
"""
import shutil
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def main(folder: Path, out: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        sys.exit("chromium is not installed (Debian: apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.goto((folder / "index.html").resolve().as_uri())
        page.wait_for_function("[...document.querySelectorAll('div.plot')].every(d => d.querySelector('.main-svg'))",
                               timeout=60000)
        page.screenshot(path=str(out))
        browser.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) != 3 or not (Path(sys.argv[1]) / "index.html").is_file():
        sys.exit("usage: screenshot.py reports/<run-id> OUT.png  (a run folder holding index.html)")
    main(Path(sys.argv[1]), Path(sys.argv[2]))

"""Screenshots of the monitor's TensorBoard dashboard, as a person opens it (docs/dashboard.md).

Trains the digits example (`examples/lightning_digits.py`: an MLP on scikit-learn's bundled
digits, no download), serves its logs with a real TensorBoard server on localhost, and has
headless Chromium (driven by Playwright) take the pictures: each custom-scalars category (its
per-mode charts with their legend, the Matches list, open; no smoothing), the verdicts card,
the hyperparameters table and the figures at their actual size. PNGs are reduced to 256 colours.

    python examples/dashboard_screenshots.py                 # PNGs to docs/images/
    python examples/dashboard_screenshots.py --out /tmp/shots --chromium /usr/bin/chromium

Needs Chromium (Debian: ``apt-get install chromium``) and ``pip install playwright`` (its own
browser download is not needed: the system Chromium is used); nothing here runs in the tests.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image
from tensorboard import program

HERE = Path(__file__).resolve().parent
CATEGORIES = {  # file name -> the start of the custom-scalars category's title
    "dashboard_duality.png": "cosmo-optim: the duality test",
    "dashboard_universe.png": "cosmo-optim: the universe",
    "dashboard_background.png": "cosmo-optim: the background",
    "dashboard_ntk.png": "cosmo-optim: the NTK and its modes",
}
PLAIN = "&_smoothingWeight=0"  # the values as logged


def serve(log_dir: Path) -> str:
    """The URL of a TensorBoard server on ``log_dir`` (a free port, this process)."""
    board = program.TensorBoard()
    board.configure(argv=[None, "--logdir", str(log_dir), "--host", "127.0.0.1", "--port", "0",
                          "--reload_interval", "0"])
    return board.launch().rstrip("/")


def save(shot: bytes, path: Path) -> None:
    """A screenshot as a 256-colour PNG (a fraction of the size, the same to the eye)."""
    raw = path.with_suffix(".raw.png")
    raw.write_bytes(shot)
    Image.open(raw).convert("RGB").quantize(256).save(path, optimize=True)
    raw.unlink()
    print(path, f"{path.stat().st_size // 1024} KiB")


def custom_scalars(page: Any, url: str, out: Path) -> None:
    page.goto(f"{url}/#custom_scalars{PLAIN}")
    page.wait_for_timeout(8000)
    outliers = page.get_by_role("checkbox", name="Ignore outliers in chart scaling")
    if outliers.is_checked():  # every value on the chart's scale
        outliers.click()
    for card in page.locator("tf-custom-scalar-multi-line-chart-card").all():
        if not card.locator(".matches-text").inner_text().strip().endswith("(1)"):
            card.locator(".toggle-matches-button").click()  # a per-mode chart's legend
    page.wait_for_timeout(1500)
    panes = page.locator("tf-category-paginated-view")
    for name, title in CATEGORIES.items():
        pane = panes.filter(has_text=title)
        save(pane.first.screenshot(), out / name)


def tab(page: Any, url: str, route: str, out: Path, *, tick: str | None = None) -> None:
    page.goto(f"{url}/#{route}{PLAIN}")
    page.wait_for_timeout(8000)
    if tick:
        page.get_by_text(tick).first.click()
        page.wait_for_timeout(3000)
    save(page.screenshot(), out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE.parent / "docs" / "images")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--logs", type=Path, help="serve these logs instead of training")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        logs = args.logs or Path(tmp) / "logs"
        if args.logs is None:
            subprocess.run([sys.executable, str(HERE / "lightning_digits.py"), "--log-dir",
                            str(logs)], check=True)
        url = serve(logs)
        args.out.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=args.chromium,
                                             args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            custom_scalars(page, url, args.out)  # each category whole in the window
            page.set_viewport_size({"width": 1400, "height": 900})
            tab(page, url, "text", args.out / "dashboard_verdicts.png")
            tab(page, url, "hparams", args.out / "dashboard_hparams.png")
            page.set_viewport_size({"width": 1400, "height": 1300})
            tab(page, url, "images", args.out / "dashboard_figures.png",
                tick="Show actual image size")
            browser.close()


if __name__ == "__main__":
    main()

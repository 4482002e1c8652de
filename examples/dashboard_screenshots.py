"""Screenshots of the monitor's TensorBoard dashboard, as a person opens it (docs/dashboard.md).

Trains the digits example (`examples/lightning_digits.py`: an MLP on scikit-learn's bundled
digits, no download), serves its logs with a real TensorBoard server on localhost, and has
headless Chromium take one screenshot per tab: the custom-scalars charts, the verdicts card, the
hyperparameters table and the figures.

    python examples/dashboard_screenshots.py                 # PNGs to docs/images/
    python examples/dashboard_screenshots.py --out /tmp/shots --chromium /usr/bin/chromium

Needs Chromium (Debian: ``apt-get install chromium``); nothing here runs in the tests.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tensorboard import program

HERE = Path(__file__).resolve().parent
TABS = {  # file name -> TensorBoard route
    "dashboard_custom_scalars.png": "custom_scalars",
    "dashboard_verdicts.png": "text",
    "dashboard_hparams.png": "hparams",
    "dashboard_figures.png": "images",
}
# headless, offline: no GPU, no first-run pages, no background connections to Google's hosts
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars"]


def serve(log_dir: Path) -> str:
    """The URL of a TensorBoard server on ``log_dir`` (a free port, this process)."""
    board = program.TensorBoard()
    board.configure(argv=[None, "--logdir", str(log_dir), "--host", "127.0.0.1", "--port", "0",
                          "--reload_interval", "0"])
    return board.launch()


def screenshot(chromium: str, url: str, out: Path, profile: Path, size: str) -> None:
    subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
                    "--virtual-time-budget=15000", f"--screenshot={out}", url],
                   check=True, capture_output=True, timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE.parent / "docs" / "images")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--size", default="1400,1000", help="window width,height in pixels")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp) / "logs"
        subprocess.run([sys.executable, str(HERE / "lightning_digits.py"), "--log-dir",
                        str(logs)], check=True)
        url = serve(logs)
        args.out.mkdir(parents=True, exist_ok=True)
        for name, tab in TABS.items():
            screenshot(args.chromium, f"{url}#{tab}", args.out / name, Path(tmp) / "profile",
                       args.size)
            print(args.out / name)


if __name__ == "__main__":
    main()

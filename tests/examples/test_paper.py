"""Each paper reproduction script runs on its tiny `--smoke` grid and writes its three files."""

import importlib
import sys
from pathlib import Path

import pytest
import torch

PAPER = Path(__file__).resolve().parents[2] / "examples" / "paper"
SCRIPTS = sorted(p.stem for p in PAPER.glob("fig*_*.py"))


@pytest.fixture(scope="module", autouse=True)
def _paper_on_path():
    sys.path.insert(0, str(PAPER))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the scripts run single-threaded
    sys.path.remove(str(PAPER))


def test_every_figure_has_a_script():
    assert [s.split("_")[0] for s in SCRIPTS] == [f"fig{i}" for i in range(1, 7)]


@pytest.mark.parametrize("script", SCRIPTS)
def test_smoke_run_writes_png_csv_and_a_verdict(script, tmp_path, capsys):
    name = script.split("_")[0]
    module = importlib.import_module(script)
    assert module.main(["--smoke", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for suffix in (".png", ".csv", "_summary.txt"):
        assert (tmp_path / f"{name}{suffix}").stat().st_size > 0
    first = out.splitlines()[0]
    assert first.startswith(f"{name}: F{name[-1]} reproduced: ")
    assert first.split("reproduced: ")[1].split()[0] in ("yes", "NO")
    assert (tmp_path / f"{name}_summary.txt").read_text().splitlines()[0] == first
    assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"

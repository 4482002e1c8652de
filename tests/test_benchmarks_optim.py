"""The optimiser benchmark runs (smoke mode): benchmarks never rot."""

import importlib.util
from pathlib import Path


def load(name: str):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_optim_smoke(capsys):
    result = load("bench_optim").main(["--smoke"])
    assert result["median_ratio"] > 0
    assert "median ratio" in capsys.readouterr().out

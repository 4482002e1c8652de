"""The NTK benchmark runs (smoke mode): benchmarks never rot."""

import importlib.util
from pathlib import Path


def load(name: str):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_ntk_smoke(capsys):
    rows = load("bench_ntk").main(["--smoke", "--threads", "1"])
    assert len(rows) == 1
    assert all(isinstance(rows[0][m], dict) for m in ("floor", "engine", "jac", "ntvp"))
    assert "engine/floor" in capsys.readouterr().out

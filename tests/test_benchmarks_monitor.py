"""The monitor benchmark runs (smoke mode): benchmarks never rot."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("lightning")
pytest.importorskip("sklearn")


def test_monitor_benchmark_smoke(capsys):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_monitor.py"
    spec = importlib.util.spec_from_file_location("bench_monitor", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--smoke"])
    assert result["ratio"] > 0
    assert "overhead ratio" in capsys.readouterr().out

"""The advice benchmark runs (smoke mode, seconds): benchmarks never rot."""

import importlib.util
import sys
from pathlib import Path


def load(name: str):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_bench_advice_smoke(capsys):
    results = load("bench_advice").main(["--smoke"])
    assert [r["task"].split()[0] for r in results] == ["digits", "diabetes", "potential"]
    for r in results:
        assert r["suggestion"]["diverged"] == 0
        assert r["cost_steps"] > 0
    out = capsys.readouterr().out
    assert "grid best" in out and "never diverges" in out

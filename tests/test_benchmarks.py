"""Every benchmark runs in its tiny `--smoke` mode inside the suite, so benchmarks never rot."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_bench_optim_smoke(capsys):
    result = load("bench_optim").main(["--smoke"])
    assert result["median_ratio"] > 0
    assert "median ratio" in capsys.readouterr().out


def test_bench_cold_start_reports_both_calls_without_the_compiler_stack(capsys):
    (row,) = load("bench_cold_start").main(["--runs", "1"])
    assert row["first_s"] > 0 and row["second_s"] > 0
    assert row["dynamo"] is False  # an eager model's first call imports no torch._dynamo
    assert "first − second" in capsys.readouterr().out


def test_bench_plan_memory_smoke_compares_each_plan_with_its_peak(capsys):
    rows = load("bench_plan_memory").main(["--smoke"])
    assert {r["case"] for r in rows} == {"mlp-trace", "mlp-full", "gram", "conv"}
    assert all(r["predicted"] > 0 and r["rise"] >= 0 for r in rows)
    assert "predicted / measured" in capsys.readouterr().out


def test_bench_ntk_smoke(capsys):
    rows = load("bench_ntk").main(["--smoke", "--threads", "1"])
    assert len(rows) == 1
    assert all(isinstance(rows[0][m], dict) for m in ("floor", "engine", "jac", "ntvp"))
    assert "engine/floor" in capsys.readouterr().out


def test_bench_ntk_gpt2_monitor_smoke(capsys):
    pytest.importorskip("transformers")
    (row,) = load("bench_ntk").main(["--smoke", "--models", "gpt2", "--monitor", "--threads", "1"])
    assert row["probes"] == 3 and row["sketch_dim"] == 0  # steps 0, 2, 4; a tiny model: exact
    assert row["step_s"] > 0 and "overhead" in capsys.readouterr().out


def test_bench_ntk_exact_smoke(capsys):
    rows = load("bench_ntk_exact").main(["--smoke"])
    assert len(rows) == 8 and all(r["ratio"] > 0 and r["twin"] > 0 for r in rows)
    assert "cost of exactness" in capsys.readouterr().out


def test_bench_monitor_smoke(capsys):
    pytest.importorskip("lightning")
    pytest.importorskip("sklearn")
    result = load("bench_monitor").main(["--smoke"])
    assert result["ratio"] > 0
    assert "overhead ratio" in capsys.readouterr().out


def test_bench_advice_smoke(capsys):
    pytest.importorskip("lightning")
    results = load("bench_advice").main(["--smoke"])
    assert [(r["split"], r["task"].split()[0].rstrip(",")) for r in results] == [
        ("tuning", "wine"), ("held-out", "digits")]
    for r in results:
        assert r["suggestion"]["diverged"] == 0
        assert r["cost"]["advice"] > 0 and r["cost"]["lr_find"] > 0
        assert {"advice", "lr_find", "adam", "sgd", "grid"} <= set(r)
    out = capsys.readouterr().out
    assert "grid best" in out and "costs less than lr_find:" in out


def test_bench_ntk_gpt2_smoke(capsys):
    pytest.importorskip("transformers")
    rows = load("bench_ntk").main(["--models", "gpt2", "--smoke", "--threads", "1"])
    assert [r["method"] for r in rows] == ["limit", "exact", "sketch4", "sketch8"]
    assert all(r["time_s"] > 0 for r in rows)
    assert all(r["diag_rel"] > 0 for r in rows if r["method"].startswith("sketch"))
    assert "kernel dist." in capsys.readouterr().out


def test_bench_ntk_real_models_smoke(capsys):
    """The real-model table runs on shrunken twins: every model returns the trace and the full
    kernel at the defaults (no refusal), beside its pass limit and the full kernel's own."""
    pytest.importorskip("transformers")
    rows = load("bench_ntk").main(["--smoke", "--models", "real", "--threads", "1"])
    assert [r["model"] for r in rows] == ["ResNet-18", "ViT", "GPT-2 small", "BERT-base"]
    assert all(r["limit_s"] > 0 and r["trace_s"] > 0 and r["full_s"] > 0
               and r["contraction_s"] > 0 for r in rows)
    assert "full's own limit" in capsys.readouterr().out


def test_gpu_check_runs_on_the_cpu_in_smoke_mode(tmp_path):
    """benchmarks/gpu_check.sh with the device set to cpu: the device tests pass and the
    real-models table is written to the one results file."""
    import os
    import subprocess

    out = tmp_path / "check.txt"
    env = {**os.environ, "PYTHON": sys.executable,
           "PYTHONPATH": str(BENCHMARKS.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh"), "--device", "cpu", "--smoke",
                          "--no-install", "--out", str(out)], env=env, capture_output=True,
                         text=True, timeout=600)
    text = out.read_text()
    assert run.returncode == 0, text + run.stderr
    assert " passed" in text and "| ResNet-18 | 4 | 10 |" in text and "# done in" in text


def test_bench_duality_smoke(capsys):
    pytest.importorskip("sklearn")
    rows = load("bench_duality").main(["--smoke"])
    assert [r["case"].net for r in rows] == ["wide", "narrow"]
    assert all(r["median"] >= 0 and r["holds"] for r in rows)
    assert "relative residual" in capsys.readouterr().out


def test_bench_ntk_families_smoke(capsys):
    rows = load("bench_ntk_families").main(["--smoke"])
    assert [r["family"] for r in rows] == ["plain MLP (baseline)", "keyword inputs (x, mask)"]
    assert all(r["engine_s"] > 0 and r["brute_s"] > 0 and r["error"] < 1e-8 for r in rows)
    assert "brute/engine" in capsys.readouterr().out

import json
import subprocess
import sys

import pytest

from cosmo_optim.cli import main


def test_convert_from_sgd_prints_both_parameterisations(capsys):
    assert main(["convert", "--lr", "1e-3", "--momentum", "0.9"]) == 0
    out = capsys.readouterr().out
    assert "Hubble rate H" in out and "1.05409" in out
    assert "vacuum energy" in out and "3.33333" in out
    assert "Hubble time 1/H in steps       30" in out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--vacuum-energy", "3.3", "--time-step", "0.03"], {"lr": 0.0009, "vacuum_energy": 3.3}),
        (["--hubble-rate", "1.0", "--momentum", "0.7"], {"time_step": 0.1, "lr": 0.01}),
        (["--time-step", "0.1", "--momentum", "0.7"], {"hubble_rate": 1.0}),
        (["--lr", "0.01", "--hubble-rate", "1.0"], {"momentum": 0.7}),
    ],
)
def test_convert_json_from_every_pair(capsys, argv, expected):
    assert main(["convert", *argv, "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    for key, value in expected.items():
        assert table[key] == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--lr", "1e-3"],
            "give exactly two of --lr or --time-step, --momentum, --vacuum-energy, --hubble-rate (got --lr)",
        ),
        (["--lr", "1e-3", "--time-step", "0.1"], "give --lr or --time-step, not both"),
        (["--hubble-rate", "100", "--time-step", "0.1"], "3*H*Δt = 30 must be ≤ 1"),
        (["--lr", "-1", "--momentum", "0.9"], "Invalid lr: -1.0"),
    ],
)
def test_convert_errors_are_one_line_and_exit_2(capsys, argv, message):
    assert main(["convert", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_python_dash_m_and_help_work():
    out = subprocess.run(
        [sys.executable, "-m", "cosmo_optim", "convert", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--vacuum-energy" in out


def test_demo_reports_both_networks_and_writes_figures_and_logs(capsys, tmp_path):
    assert main(["demo", "--steps", "60", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "## 1. The paper's setting" in out and "## 2. Handwritten digits" in out
    assert "relative error" in out and "PASS" in out and "test accuracy" in out
    assert f"tensorboard --logdir {tmp_path}" in out
    assert {"paper_potential.png", "paper_modes.png", "digits_spectrum.png"} <= {
        p.name for p in tmp_path.glob("*.png")
    }
    assert list((tmp_path / "paper").glob("events.out.tfevents.*"))
    assert list((tmp_path / "digits").glob("events.out.tfevents.*"))


def test_demo_rejects_bad_steps(capsys):
    assert main(["demo", "--steps", "0"]) == 2
    assert "Invalid --steps: 0" in capsys.readouterr().err


FACTORIES = """
import torch

def lazy():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(1, 256), torch.nn.Tanh(), torch.nn.Linear(256, 1))
    return net, torch.linspace(-0.2, 0.2, 8).reshape(-1, 1)

def model_only():
    return torch.nn.Linear(1, 1)

def inputs():
    return torch.ones(4, 1), torch.zeros(4, 1)

def diverging():
    torch.manual_seed(0)
    return torch.nn.Linear(2, 1), 30 * torch.randn(4, 2), torch.zeros(4, 1)

def boom():
    raise RuntimeError("no GPU here\\nsecond line")

class Broken(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 1)

    def forward(self, x):
        return self.lin(x)

def broken():
    return Broken(), torch.ones(4, 2)
"""


@pytest.fixture
def factories(tmp_path, monkeypatch):
    (tmp_path / "userfactories.py").write_text(FACTORIES)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))


def test_check_prints_the_report_and_exit_status_follows_the_dynamics(capsys, factories):
    pytest.importorskip("cosmo_optim.dual.check")
    # Ω_φ ≈ 0.42 > 0.1 at lr 1e-4, but the network follows its field equation: exit 0, and
    # the report states the background verdict separately.
    assert main(["check", "userfactories:lazy", "--lr", "1e-4", "--momentum", "0.9"]) == 0
    out = capsys.readouterr().out
    assert "FLRW duality check: holds" in out and "background: not vacuum dominated" in out
    # The data may come from a separate factory; the report shows the universe used.
    assert main(["check", "userfactories:model_only", "--data", "userfactories:inputs",
                 "--lr", "1e-3", "--momentum", "0.5", "--steps", "20"]) in (0, 1)
    assert "| lr η, momentum β | 0.001, 0.5 |" in capsys.readouterr().out


def test_check_divergence_is_a_result_exit_1_with_the_reason(capsys, factories):
    assert main(["check", "userfactories:diverging", "--lr", "1", "--momentum", "0.9",
                 "--steps", "300"]) == 1
    captured = capsys.readouterr()
    assert "FLRW duality check: does not hold" in captured.out
    assert "training diverged: NaN or inf outputs at step" in captured.out
    assert captured.err == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["check", "nosuchmodule:make"], "cannot import module 'nosuchmodule'"),
        (["check", "userfactories:missing"], "has no attribute 'missing'"),
        (["check", "userfactories"], "write it as module:function"),
        (["check", "userfactories:model_only"], "no probe inputs"),
        (["check", "userfactories:lazy", "--momentum", "1.5", "--lr", "0.1"], "Invalid momentum"),
        (["check", "userfactories:boom"],
         "the model factory userfactories:boom raised RuntimeError: no GPU here"),
        (["check", "userfactories:model_only", "--data", "userfactories:boom"],
         "the data factory userfactories:boom raised RuntimeError: no GPU here"),
        (["check", "userfactories:broken"],
         "the model from userfactories:broken raised RuntimeError: mat1 and mat2"),
    ],
)
def test_check_errors_are_one_line_and_exit_2(capsys, factories, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_reproduce_runs_a_figure_script_and_lists_its_verdict(capsys, tmp_path):
    assert main(["reproduce", "fig2", "--smoke", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "== summary (smoke grids" in out
    assert out.strip().splitlines()[-1].startswith("fig2: F2 reproduced: ")
    assert (tmp_path / "fig2.png").exists() and (tmp_path / "fig2.csv").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["reproduce", "fig1", "--workers", "0"], "Invalid --workers: 0"),
    ],
)
def test_reproduce_errors_are_one_line_and_exit_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_reproduce_rejects_unknown_figures_with_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", "fig7"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'fig7'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["demo", "convert", "check", "reproduce"])
def test_every_command_has_help(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: cosmo-optim " + command in capsys.readouterr().out


def test_version_prints_the_package_version(capsys):
    import cosmo_optim

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"cosmo-optim {cosmo_optim.__version__}"


def test_the_demo_extra_brings_what_the_demo_imports():
    tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11
    from pathlib import Path

    extras = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())[
        "project"]["optional-dependencies"]
    assert any(r.startswith("scikit-learn") for r in extras["demo"])
    assert any(r.startswith("tensorboard") for r in extras["demo"])
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert "demo" in makefile.split("-e \".[")[1].split("]")[0] and "hf" in makefile.split("-e \".[")[1].split("]")[0]

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


def test_demo_trains_towards_the_minimum(capsys):
    assert main(["demo", "--hubble-times", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Cosmology(")
    first, last = (float(lines[i].split()[-1]) for i in (2, -1))
    assert last < 1e-3 * first


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


@pytest.mark.parametrize("command", ["demo", "convert", "reproduce"])
def test_every_command_has_help(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: cosmo-optim " + command in capsys.readouterr().out

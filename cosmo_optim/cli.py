"""The `cosmo-optim` command line (also `python -m cosmo_optim`).

Each sub-command is one function registered in `COMMANDS`; user errors print one line and
exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cosmo_optim.cosmology import UNITS, Cosmology, from_units

__all__ = ["main"]


class UsageError(Exception):
    """A mistake on the command line: reported in one line, exit status 2."""


def _cosmology_from_args(args: argparse.Namespace) -> Cosmology:
    units = {k: getattr(args, k) for k in UNITS}
    given = [f"--{k.replace('_', '-')}" for k in ("lr", *UNITS) if getattr(args, k) is not None]
    if len(given) != 2:
        raise UsageError(
            "give exactly two of --lr or --time-step, --momentum, --vacuum-energy, "
            f"--hubble-rate (got {', '.join(given) or 'none'})."
        )
    if args.lr is not None:
        if args.time_step is not None:
            raise UsageError("give --lr or --time-step, not both (time_step = sqrt(lr)).")
        if args.momentum is not None and args.vacuum_energy is args.hubble_rate is None:
            return Cosmology.from_sgd(args.lr, args.momentum)
        units["time_step"] = math.sqrt(args.lr) if args.lr > 0 else args.lr
    return from_units(units, "convert")


def convert(args: argparse.Namespace) -> int:
    """Print both parameterisations of one universe (docs/theory.md T3)."""
    c = _cosmology_from_args(args)
    table = {
        "lr": c.lr,
        "momentum": c.momentum,
        "time_step": c.time_step,
        "hubble_rate": c.hubble_rate,
        "vacuum_energy": c.vacuum_energy,
        "hubble_time_steps": c.hubble_time_steps,
        "efolds_per_step": c.efolds_per_step,
    }
    if args.json:
        print(json.dumps(table))
        return 0
    labels = {
        "lr": "learning rate η",
        "momentum": "momentum β",
        "time_step": "time step Δt = sqrt(η)",
        "hubble_rate": "Hubble rate H = (1 − β)/(3Δt)",
        "vacuum_energy": "vacuum energy Λ = 3H²",
        "hubble_time_steps": "Hubble time 1/H in steps",
        "efolds_per_step": "e-folds per step HΔt",
    }
    width = max(map(len, labels.values()))
    for key, value in table.items():
        print(f"{labels[key]:<{width}}  {value:.6g}")
    return 0


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert between (lr, momentum) and (Λ, H, Δt)",
        description="Print both parameterisations of the universe dual to momentum SGD. "
        "Give two of: --lr or --time-step, --momentum, --vacuum-energy or --hubble-rate.",
    )
    p.add_argument("--lr", type=float, help="learning rate η")
    p.add_argument("--momentum", type=float, help="momentum β in [0, 1)")
    p.add_argument("--vacuum-energy", type=float, help="vacuum energy Λ")
    p.add_argument("--hubble-rate", type=float, help="Hubble rate H")
    p.add_argument("--time-step", type=float, help="time step Δt = sqrt(lr)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=convert)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    from cosmo_optim import demo

    p = sub.add_parser("demo", help=demo.HELP, description=demo.DESCRIPTION)
    demo.add_arguments(p)
    p.set_defaults(run=demo.run)


def _load(spec: str, what: str) -> Any:
    """The object named by ``module:attribute`` (the current directory is importable)."""
    import importlib

    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"Invalid {what} {spec!r}; write it as module:function, e.g. mynets:make")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UsageError(f"cannot import module {module_name!r} for {what}: {error}") from None
    if not hasattr(module, attribute):
        raise UsageError(f"module {module_name!r} has no attribute {attribute!r} for {what}")
    return getattr(module, attribute)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _call_factory(spec: str, what: str) -> Any:
    """Call the user's ``module:function``; its own exception becomes one usage-error line."""
    factory = _load(spec, what)
    try:
        return factory()
    except Exception as error:  # the user's code: report it, never a traceback
        raise UsageError(f"{what} {spec} raised {_first_line(error)}") from None


def check(args: argparse.Namespace) -> int:
    """Run `check_duality` on a user's model factory (T4–T10).

    Exit 0 when the network follows its dual's field equation, 1 when it does not (a
    diverging run included: that is a result, printed with its reason); the background's
    Ω_φ (T6) is reported but does not set the status. Usage errors, and exceptions raised
    by the user's factory or model, exit 2 with one line.
    """
    import torch

    from cosmo_optim.losses import PolynomialPotentialLoss

    if args.steps < 1:
        raise UsageError(f"Invalid --steps: {args.steps}; it must be ≥ 1.")
    given = [k for k in ("lr", *UNITS) if getattr(args, k) is not None]
    if not given:
        args.lr, args.momentum = 1e-3, 0.9
    universe = _cosmology_from_args(args)
    made = _call_factory(args.factory, "the model factory")
    model, data = (made[0], made[1:]) if isinstance(made, tuple) else (made, ())
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"{args.factory} returned {type(model).__name__}, not a torch nn.Module")
    if args.data is not None:
        data = _call_factory(args.data, "the data factory")
        data = data if isinstance(data, tuple) else (data,)
    if not data:
        raise UsageError(
            f"no probe inputs: let {args.factory} return (model, inputs[, targets]) or give "
            "--data module:function returning inputs or (inputs, targets)"
        )
    inputs, targets = data[0], (data[1] if len(data) > 1 else None)
    loss = torch.nn.MSELoss() if targets is not None else PolynomialPotentialLoss(1.0, 2, 0.5)
    try:
        from cosmo_optim.dual import check_duality
    except ImportError as error:
        raise UsageError(f"this installation has no duality check ({error})") from None
    try:
        report = check_duality(model, loss, inputs, targets, cosmology=universe,
                               steps=args.steps, dtype=torch.float64, progress=False)
    except ValueError:
        raise
    except Exception as error:  # raised inside the user's module while it was trained
        raise UsageError(
            f"the model from {args.factory} raised {_first_line(error)} while being trained"
        ) from None
    print(report.to_markdown())
    return 0 if report.passed else 1


def _add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="test whether a model trains like its FLRW dual (exit 1 if not)",
        description="Build a model with FACTORY (module:function, importable from the current "
        "directory), train a copy full-batch with momentum SGD on its probe inputs and compare "
        "with the dual's predictions (check_duality). The factory returns a model, or "
        "(model, inputs[, targets]); else give --data. Loss: MSE with targets, else "
        "ℓ = (f − 1)²/2. Prints the report; exit 0 if the network follows its dual's field "
        "equation, 1 if not (divergence included), 2 on a usage error or when the factory or "
        "the model raises. The background's vacuum domination (Ω_φ) is reported separately "
        "and does not set the exit status.",
    )
    p.add_argument("factory", help="module:function returning the model")
    p.add_argument("--data", help="module:function returning inputs or (inputs, targets)")
    p.add_argument("--steps", type=int, default=200, help="training steps (default 200)")
    p.add_argument("--lr", type=float, help="learning rate η (default 1e-3 with momentum 0.9)")
    p.add_argument("--momentum", type=float, help="momentum β in [0, 1)")
    p.add_argument("--vacuum-energy", type=float, help="vacuum energy Λ")
    p.add_argument("--hubble-rate", type=float, help="Hubble rate H")
    p.add_argument("--time-step", type=float, help="time step Δt = sqrt(lr)")
    p.set_defaults(run=check)


FIGURES = ("fig1", "fig2", "fig3", "fig4", "fig5", "fig6")


def _paper_dir() -> Path:
    """examples/paper/ of the source tree this package is installed from (editable install)."""
    folder = Path(__file__).resolve().parents[1] / "examples" / "paper"
    if not folder.is_dir():
        raise UsageError(
            f"the paper scripts are not next to this installation ({folder} does not exist); "
            "run from a clone installed with `pip install -e .`."
        )
    return folder


def reproduce(args: argparse.Namespace) -> int:
    """Run the paper's figure scripts (examples/paper/figN_*.py) and list their verdicts."""
    names = list(FIGURES) if "all" in args.figures else list(dict.fromkeys(args.figures))
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"Invalid --workers: {args.workers}; it must be ≥ 1.")
    folder = _paper_dir()
    scripts = {n: sorted(folder.glob(f"{n}_*.py")) for n in names}
    missing = [n for n, found in scripts.items() if not found]
    if missing:
        raise UsageError(f"no script for {', '.join(missing)} in {folder}")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    verdicts, failed = {}, []
    for name in names:
        command = [sys.executable, str(scripts[name][0]), f"--{args.mode}", "--out", str(out)]
        if args.workers is not None:
            command += ["--workers", str(args.workers)]
        print(f"== {name}: {' '.join(command[1:])}", flush=True)
        if subprocess.run(command).returncode != 0:
            failed.append(name)
            continue
        first = (out / f"{name}_summary.txt").read_text().splitlines()[0]
        verdicts[name] = first
    print(f"\n== summary ({args.mode} grids, files in {out})")
    for name in names:
        print(verdicts.get(name, f"{name}: script FAILED"))
    return 1 if failed else 0


def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce",
        help="regenerate the paper's figures (fig1 … fig6 or all)",
        description="Run the reproduction scripts of examples/paper/: each writes a PNG, a CSV "
        "and a summary saying whether the paper's finding is reproduced.",
    )
    p.add_argument("figures", nargs="+", choices=[*FIGURES, "all"], metavar="FIGURE",
                   help=f"one or more of {', '.join(FIGURES)}, or all")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="the default grids, about a minute per figure on 2 cores")
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="the larger grids (minutes to tens of minutes per figure)")
    mode.add_argument("--smoke", dest="mode", action="store_const", const="smoke",
                      help="tiny grids that only check that the scripts run")
    p.add_argument("--out", type=Path, default=Path("paper-figures"),
                   help="output directory (default ./paper-figures)")
    p.add_argument("--workers", type=int, help="worker processes per scan (default 2)")
    p.set_defaults(run=reproduce, mode="quick")


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_demo, _add_convert, _add_check, _add_reproduce,
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered sub-command."""
    parser = argparse.ArgumentParser(
        prog="cosmo-optim",
        description="Momentum gradient descent as a scalar field in a de Sitter universe.",
    )
    from cosmo_optim import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except (UsageError, ValueError) as error:
        print(f"cosmo-optim {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

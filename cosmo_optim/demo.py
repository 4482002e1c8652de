"""`cosmo-optim demo`: two networks trained by CosmoSGD and watched as universes (T3–T10).

1. The paper's setting: a fully connected tanh network on 16 equally spaced 1-D inputs
   spanning one Hubble length, trained on the potential ℓ(f) = s (f − 1)² at every input. Its
   kernel at initialisation predicts training (mean field, T5/T7; perturbations, T8) and the
   demo prints how well, with the universe's numbers (Λ, H, α, Ω_φ, masses).
2. A classifier on scikit-learn's bundled handwritten digits, trained with cross-entropy,
   probed on 16 training images (10 outputs each).

Both are followed by a `CosmologyTracker` writing TensorBoard scalars and figures to
``<out>/paper`` and ``<out>/digits``; PNG figures go to ``<out>`` (default
``./runs/<timestamp>``).
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cosmo_optim._common import one_thread
from cosmo_optim.cosmology import Cosmology
from cosmo_optim.dual import FLRWDual, predict_mean_field, predict_trajectory
from cosmo_optim.losses import PolynomialPotentialLoss
from cosmo_optim.monitor import CosmologyTracker
from cosmo_optim.ntk import empirical_ntk
from cosmo_optim.optim import CosmoSGD

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "duality_check", "run"]

HELP = "train two small networks as universes; TensorBoard logs, figures and a duality report"
DESCRIPTION = __doc__.split("\n\n")[0].split(": ", 1)[1]

#: The paper network's universe: Λ = 3.33, Δt = 0.01 (η = 1e-4, β ≈ 0.968, 1/H ≈ 95 steps).
PAPER_UNIVERSE = Cosmology.from_vacuum_energy(10 / 3, time_step=0.01)
#: The digits classifier's: plain SGD lr = 0.05 with momentum 0.9.
DIGITS_UNIVERSE = Cosmology(lr=0.05, momentum=0.9)
#: The paper test passes when the predicted mean field is within this fraction of the roll.
TOLERANCE = 0.05


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options."""
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default ./runs/<timestamp>)")
    parser.add_argument("--steps", type=int, default=1000,
                        help="optimiser steps of each network (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _mlp(sizes: list[int], activation: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers).double()


def _sink(directory: Path) -> str | None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return None
    return str(directory)


def _save_figures(tracker: CosmologyTracker, out: Path, name: str) -> list[str]:
    saved = []
    for tag, fig in tracker.figures().items():
        path = out / f"{name}_{tag.split('/')[-1]}.png"
        fig.savefig(path, dpi=100)
        saved.append(path.name)
    return saved


def duality_check(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor | None,
                  loss: Any, universe: Cosmology, steps: int,
                  tracker: CosmologyTracker | None = None) -> tuple[list[str], bool]:
    """Predict full-batch training from the kernel at initialisation, train, compare (T5–T8).

    Passes when the best-aligned kernel mode is uniform (the mean field, T7) and the
    homogeneous prediction of the mean output after `steps` steps is within `TOLERANCE` of how
    far the mean rolled. `model` is trained in place with momentum SGD (T1).
    """
    with torch.no_grad():
        f0 = model(inputs)
    dual = FLRWDual.from_kernel(
        empirical_ntk(model, inputs, output="full" if f0[0].numel() > 1 else "trace"), loss, f0,
        targets=targets, cosmology=universe)
    continuum = predict_trajectory(dual, steps)
    mean_pred = predict_mean_field(dual, steps).mean_field[-1]
    opt = CosmoSGD(model.parameters(), cosmology=universe)
    if tracker is not None:
        tracker.attach(opt)
    ell = dual.loss
    for _ in range(steps):
        opt.zero_grad()
        ell.training_loss(model(inputs), targets).backward()
        opt.step()
    if tracker is not None:
        tracker.close()
    with torch.no_grad():
        f = model(inputs)
    n = f.shape[0]
    mean_now, mean_start = f.reshape(n, -1).mean(0), f0.reshape(n, -1).mean(0)
    moved = float((mean_now - mean_start).norm())
    err = float((torch.as_tensor(mean_pred) - mean_now).norm()) / max(moved, 1e-300)
    change = (dual.eigenvectors.T @ (f - f0).reshape(-1)).abs()
    mode = dual.mean_field_mode()
    ok = err < TOLERANCE and mode is not None
    masses = dual.mass_over_hubble[1:4].tolist()
    classes = dual.mode_classes(horizon=steps)
    ratio = (f"{float(dual.eigenvalues[0] / dual.eigenvalues[1]):.3g}"
             if len(dual.eigenvalues) > 1 else "n/a")
    lines = [
        f"universe: {universe}",
        f"α_eff = λ_mf/N = {dual.alpha_eff:.4g} (mean kernel entry {dual.mean_kernel_entry:.4g});"
        f" λ_1/λ_2 = {ratio}; top mode's uniform overlap {float(dual.uniform_overlaps[0]):.3f}"
        + ("" if mode is not None else " — no mode is the mean field (T7)"),
        f"background (T6): Ω_φ = {dual.vacuum_domination:.3g} at the start, "
        f"{'vacuum dominated' if dual.vacuum_domination <= 0.1 else 'not vacuum dominated'} "
        f"(η_max for Ω_φ ≤ 0.1: {float(dual.max_learning_rate()):.3g}, η = {universe.lr:.3g}); "
        "reported apart from the dynamics verdict below",
        f"perturbations m_k/H (k = 2..4): {', '.join(f'{m:.3g}' for m in masses)}; "
        f"T8 classes over {steps} steps: {classes[1:].count('frozen')} of {len(classes) - 1} "
        "frozen",
        f"mean output after {steps} steps ({universe.efolds(steps):.1f} e-folds): trained "
        f"{_fmt(mean_now)}, predicted {_fmt(mean_pred)} (homogeneous ODE, T5/T7), "
        f"{_fmt(continuum.mean_field[-1])} (all modes, T7)",
        f"relative error {err:.2%} of the roll (pass < {TOLERANCE:.0%}): "
        f"dynamics {'PASS' if ok else 'FAIL'}; largest perturbation change / mean change: "
        f"{float(change[1:].max() / change[0]) if len(change) > 1 else 0.0:.2%}",
    ]
    return lines, ok


def _fmt(values: Any) -> str:
    flat = torch.as_tensor(values).reshape(-1).tolist()
    return ", ".join(f"{v:.5f}" for v in flat[:3]) + (" …" if len(flat) > 3 else "")


def _paper(out: Path, steps: int) -> tuple[list[str], bool]:
    """The paper's setting, checked and monitored; returns the report lines and the verdict."""
    universe = PAPER_UNIVERSE
    n = 16
    x = torch.linspace(-0.5, 0.5, n, dtype=torch.float64).reshape(n, 1) * universe.hubble_time
    model = _mlp([1, 128, 128, 1], nn.Tanh)
    loss = PolynomialPotentialLoss(center=1.0, power=2, scale=0.05)
    tracker = CosmologyTracker(model, loss, probe_batch=x, probe_size=n, top_k=4,
                               every_n_steps=max(1, steps // 30), sink=_sink(out / "paper"))
    lines, ok = duality_check(model, x, None, loss, universe, steps, tracker)
    figures = _save_figures(tracker, out, "paper")
    head = f"## 1. The paper's setting: {n} inputs over one Hubble length, ℓ = 0.05 (f − 1)²"
    return [head, *lines, f"figures: {', '.join(figures)}"], ok


def _digits(out: Path, steps: int) -> list[str]:
    """Train the digits classifier with the monitor; returns the report lines."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ValueError(
            "the demo's digits part needs scikit-learn. Fix: pip install 'cosmo-optim[demo]' "
            "(scikit-learn and TensorBoard), or run `make demo` from a clone"
        ) from error
    data = load_digits()
    x_all = torch.tensor(data.data / 16.0, dtype=torch.float64)
    y_all = torch.tensor(data.target)
    x, y, x_test, y_test = x_all[:1500], y_all[:1500], x_all[1500:], y_all[1500:]
    model = _mlp([64, 128, 10], nn.ReLU)
    loss = nn.CrossEntropyLoss()
    opt = CosmoSGD(model.parameters(), cosmology=DIGITS_UNIVERSE)
    tracker = CosmologyTracker(model, loss, probe_batch=(x[:16], y[:16]), probe_size=16,
                               top_k=4, every_n_steps=max(1, steps // 20),
                               sink=_sink(out / "digits"))
    tracker.attach(opt)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = torch.randint(0, len(x), (128,), generator=gen)
        opt.zero_grad()
        loss(model(x[batch]), y[batch]).backward()
        opt.step()
    tracker.close()
    figures = _save_figures(tracker, out, "digits")
    with torch.no_grad():
        accuracy = float((model(x_test).argmax(1) == y_test).double().mean())
    first, last = tracker.history[0]["scalars"], tracker.history[-1]["scalars"]

    def tag(scalars: dict[str, Any], name: str) -> float:
        return float(scalars.get(name, math.nan))

    return [
        "## 2. Handwritten digits (scikit-learn's bundled 8×8 images), cross-entropy",
        f"universe: {DIGITS_UNIVERSE}",
        f"test accuracy after {steps} steps: {accuracy:.1%} (297 held-out images)",
        f"probe (16 images × 10 outputs): λ_1 {tag(first, 'ntk/lambda_1'):.3g} → "
        f"{tag(last, 'ntk/lambda_1'):.3g}; kernel distance from the start "
        f"{tag(last, 'ntk/kernel_distance'):.3f}; Ω_φ {tag(first, 'cosmology/omega_phi'):.3g}"
        f" → {tag(last, 'cosmology/omega_phi'):.3g}",
        f"e-folds {DIGITS_UNIVERSE.efolds(steps):.0f}; Ω_φ ≫ 1 means the loss energy dwarfs Λ: the"
        " network still obeys its field equation, but a self-gravitating universe would not be "
        "vacuum dominated (T6)",
        f"figures: {', '.join(figures)}",
    ]


def run(args: argparse.Namespace) -> int:
    """Run both parts, print the report and where to look; 0 when the paper part passes."""
    if args.steps < 1:
        raise ValueError(f"Invalid --steps: {args.steps}; it must be ≥ 1.")
    out = args.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    with one_thread():
        paper, ok = _paper(out, args.steps)
        print("\n".join(paper), flush=True)
        print()
        print("\n".join(_digits(out, args.steps)))
    logs = "TensorBoard logs in paper/ and digits/" if _sink(out) else "(no tensorboard: no logs)"
    print(f"\nwrote {out}/: {logs} and PNG figures ({time.perf_counter() - start:.0f} s)")
    print(f"look: tensorboard --logdir {out.parent if args.out is None else out}")
    return 0 if ok else 1

"""Shared pieces of the paper reproductions: networks, training, scans and output files.

The networks are fully connected, in the NTK parameterisation (Jacot et al. 2018; the one of
`neural-tangents`, which the paper's erf activation suggests): weights and biases are drawn
from N(0, 1) and a dense layer computes ``y = (σ_w/sqrt(fan_in)) W x + σ_b b``. The
initialisation standard deviation σ_w then sets the scale of the kernel while the width only
sets its fluctuations, the regime the paper's findings F1 and F4 describe (docs/theory.md).

Everything runs in float64 on the CPU. Scans run in worker processes (one torch thread each)
and show a tqdm progress bar; every figure script has ``--smoke`` (seconds, for the tests),
``--quick`` (about a minute on 2 cores, the default) and ``--full`` grids.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cosmo_optim import Cosmology, FLRWDual, PolynomialPotentialLoss, empirical_ntk

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu,
    "erf": torch.erf,
}
MODES = ("smoke", "quick", "full")
#: Bias standard deviation of every network (small, as in neural-tangents' examples).
SIGMA_B = 0.1
#: The homogeneous networks' single input, and the centre of the input-dependent intervals.
#: Not 0: with small biases an erf network is nearly odd about x = 0 and its top kernel mode
#: is then a dipole, not the mean field (docs/theory.md T7 caveat), and a relu network is
#: positively homogeneous there. At x0 = 1 the α of fig1 and the λ_1/N of fig4 compare directly.
X0 = 1.0
DTYPE = torch.float64


class NTKDense(nn.Module):
    """A dense layer in the NTK parameterisation: ``y = (σ_w/sqrt(fan_in)) W x + σ_b b``."""

    def __init__(self, fan_in: int, fan_out: int, sigma_w: float, sigma_b: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(fan_out, fan_in, dtype=DTYPE))
        self.bias = nn.Parameter(torch.randn(fan_out, dtype=DTYPE))
        self.scale, self.sigma_b = sigma_w / math.sqrt(fan_in), sigma_b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.scale * x, self.weight) + self.sigma_b * self.bias


class MLP(nn.Module):
    """``depth`` hidden layers of ``width`` units with ``activation``, one output, 1-D input."""

    def __init__(self, width: int, depth: int, activation: str, sigma_w: float,
                 sigma_b: float = SIGMA_B, in_dim: int = 1) -> None:
        super().__init__()
        sizes = [in_dim, *([width] * depth), 1]
        self.layers = nn.ModuleList(
            NTKDense(a, b, sigma_w, sigma_b) for a, b in itertools.pairwise(sizes)
        )
        self.activation = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x)


def make_mlp(config: dict[str, Any]) -> MLP:
    """The network of one scan entry (keys width, depth, activation, sigma_w, seed)."""
    torch.manual_seed(int(config["seed"]))
    return MLP(int(config["width"]), int(config["depth"]), str(config["activation"]),
               float(config["sigma_w"]))


def kernel(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The empirical NTK on ``inputs`` (N, 1), in float64 (T4)."""
    return empirical_ntk(model, inputs, dtype=DTYPE)


def alpha_at(model: nn.Module, x0: float = X0) -> float:
    """α = Θ(x0, x0), the homogeneous network's kernel (T5)."""
    return float(kernel(model, torch.full((1, 1), x0, dtype=DTYPE))[0, 0])


def make_dual(model: nn.Module, inputs: torch.Tensor, loss: PolynomialPotentialLoss,
              lr: float, momentum: float) -> FLRWDual:
    """The FLRW dual of a network at rest at initialisation (T3–T8)."""
    with torch.no_grad():
        f0 = model(inputs)
    return FLRWDual.from_kernel(kernel(model, inputs), loss, f0,
                                cosmology=Cosmology(lr=lr, momentum=momentum))


def train(model: nn.Module, inputs: torch.Tensor, loss: nn.Module, lr: float, momentum: float,
          steps: int) -> np.ndarray:
    """Full-batch momentum SGD (T1); returns the outputs at every step, shape (steps + 1, N)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    out = np.empty((steps + 1, inputs.shape[0]))
    for n in range(steps + 1):
        opt.zero_grad()
        f = model(inputs)
        out[n] = f.detach().reshape(-1).numpy()
        if n == steps:
            break
        value = loss(f)
        if not torch.isfinite(value):
            out[n + 1 :] = np.nan
            break
        value.backward()
        opt.step()
    return out


# ------------------------------------------------------------------------------------- scans
def _init_worker() -> None:
    torch.set_num_threads(1)


def run_scan(fn: Callable[[dict[str, Any]], dict[str, Any]], configs: Sequence[dict[str, Any]],
             workers: int, desc: str) -> list[dict[str, Any]]:
    """``[fn(c) for c in configs]`` in ``workers`` processes, with a progress bar; keeps order."""
    from tqdm import tqdm

    bar = tqdm(total=len(configs), desc=desc, unit="net", file=sys.stderr,
               disable=len(configs) < 4)
    results: list[dict[str, Any]] = []
    if workers <= 1:
        for config in configs:
            results.append(fn(config))
            bar.update()
    else:
        with ProcessPoolExecutor(workers, initializer=_init_worker) as pool:
            for result in pool.map(fn, configs, chunksize=max(1, len(configs) // (8 * workers))):
                results.append(result)
                bar.update()
    bar.close()
    return results


def grid(**axes: Iterable[Any]) -> list[dict[str, Any]]:
    """The Cartesian product of named axes, as a list of dicts (last axis fastest)."""
    configs: list[dict[str, Any]] = [{}]
    for name, values in axes.items():
        configs = [{**c, name: v} for c in configs for v in values]
    return configs


# ---------------------------------------------------------------------------- command line
def parse_args(doc: str | None, argv: Sequence[str] | None) -> argparse.Namespace:
    """``--smoke | --quick | --full``, ``--out DIR``, ``--workers N`` for every figure script."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    for name, text in zip(MODES, ("a tiny grid for the test suite (seconds)",
                                  "the default grid, about a minute on 2 cores",
                                  "the larger grid (several minutes to tens of minutes)"),
                          strict=True):
        mode.add_argument(f"--{name}", dest="mode", action="store_const", const=name, help=text)
    parser.add_argument("--out", type=Path, default=Path("paper-figures"),
                        help="output directory (default ./paper-figures)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="worker processes for the scans (default: min(2, cores))")
    parser.set_defaults(mode="quick")
    args = parser.parse_args(argv)
    if args.mode == "smoke":
        args.workers = 1
    torch.set_num_threads(1)  # tiny networks: threads only add overhead (workers use 1 too)
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Rows of equal keys to a CSV file."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def new_figure(ncols: int = 1, width: float = 5.0, height: float = 4.0) -> Any:
    """A matplotlib Figure on the Agg canvas (no pyplot) and its axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols)
    return fig, axes


def finish(out: Path, name: str, fig: Any, rows: Sequence[dict[str, Any]],
           summary: Sequence[str]) -> None:
    """Write ``name``.png, ``name``.csv and ``name``_summary.txt; print the summary."""
    fig.savefig(out / f"{name}.png", dpi=110)
    write_csv(out / f"{name}.csv", rows)
    (out / f"{name}_summary.txt").write_text("\n".join(summary) + "\n")
    print("\n".join(summary))
    print(f"wrote {out / name}.png, .csv, _summary.txt")


def verdict(ok: bool) -> str:
    """'yes' or 'NO', the word every summary's first line uses."""
    return "yes" if ok else "NO"


# ------------------------------------------------------------------ input-dependent networks
#: Learning rate and momentum that set the Hubble length of the input intervals (T3, T9):
#: 1/H = 3 sqrt(η)/(1 − β) = 0.3 for η = 0.01, β = 0.
HUBBLE_LR, HUBBLE_MOMENTUM = 0.01, 0.0


def interval_inputs(n: int, hubble_lengths: float) -> torch.Tensor:
    """``n`` equally spaced 1-D inputs on an interval of ``hubble_lengths``·(1/H) around X0."""
    half = 0.5 * hubble_lengths * Cosmology(HUBBLE_LR, HUBBLE_MOMENTUM).hubble_time
    return torch.linspace(X0 - half, X0 + half, n, dtype=DTYPE).reshape(n, 1)


def input_dependent_run(config: dict[str, Any]) -> dict[str, Any]:
    """Train a network on ``n`` interval inputs and predict it from its initial kernel (T7, T8).

    Keys of ``config``: the network's (width, depth, activation, sigma_w, seed), ``n``,
    ``hubble_lengths``, ``power``, ``optimiser`` (η, β) and ``steps``. Returns scalars plus
    arrays: the trained mean field, its predictions with α_eff = λ_1/N ("top") and with the
    mean kernel entry ("entry"), and the actual and predicted mode amplitudes u_kᵀ f.
    """
    from cosmo_optim import predict_mean_field, predict_trajectory

    lr, beta = config["optimiser"]
    steps = int(config["steps"])
    model = make_mlp(config)
    x = interval_inputs(int(config["n"]), float(config["hubble_lengths"]))
    loss = PolynomialPotentialLoss(1.0, config["power"], 1.0 / config["power"])
    dual = make_dual(model, x, loss, lr, beta)
    u = dual.eigenvectors.numpy()
    lam = dual.eigenvalues.numpy()
    mean_mode = dual.mean_field_mode()
    result: dict[str, Any] = {
        # the paper's α_eff = λ_1/N (Eq. 23), which figures 5 and 6 test; the library's own
        # α_eff is the mean-field mode's (docs/theory.md T7), the same here when mode 0 is it
        "alpha_eff": float(lam[0]) / len(x), "mean_kernel_entry": dual.mean_kernel_entry,
        "lambda": lam, "overlap_top": float(dual.uniform_overlaps[0]),
        "mean_mode": -1 if mean_mode is None else mean_mode,
        "stability_margin": dual.stability_margin,
        "frozen_predicted": dual.mode_classes(horizon=steps)[1:].count("frozen"),
    }
    if dual.stability_margin > 0.5:  # outside the continuum limit (T10): not compared
        return result | {"compared": False}
    top = predict_mean_field(dual, steps, alpha="top").mean_field[:, 0]
    entry = predict_mean_field(dual, steps, alpha="mean_entry").mean_field[:, 0]
    modes_pred = predict_trajectory(dual, steps).modes
    outputs = train(model, x, loss, lr, beta, steps)
    return result | {
        "compared": True, "mean_trained": outputs.mean(axis=1), "mean_top": top,
        "mean_entry": entry, "modes_trained": outputs @ u, "modes_pred": modes_pred,
    }

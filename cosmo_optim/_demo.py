"""`cosmo-optim demo`: a network trained by CosmoSGD, read as a rolling field (T3, T5).

A two-hidden-layer network at a single input (the paper's homogeneous setup) is trained on
the potential ℓ(f) = (f − 1)² with CosmoSGD configured by a vacuum energy and a time step; the
demo prints the universe and the field φ = f(x0) once per Hubble time.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from cosmo_optim.optim import CosmoSGD

HELP = "train a small network in the paper's setting and print its universe"
DESCRIPTION = __doc__.split("\n\n")[1].replace("\n", " ")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vacuum-energy", type=float, default=3.3, help="Λ (default 3.3)")
    parser.add_argument("--time-step", type=float, default=0.03, help="Δt (default 0.03)")
    parser.add_argument("--hubble-times", type=int, default=8, help="how long to train")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    model = nn.Sequential(
        nn.Linear(1, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 1)
    )
    x0 = torch.zeros(1, 1)
    opt = CosmoSGD(model.parameters(), vacuum_energy=args.vacuum_energy, time_step=args.time_step)
    universe = opt.cosmology()
    print(universe)
    every = max(1, round(universe.hubble_time_steps))
    print(f"{'step':>6} {'e-folds':>8} {'φ = f(x0)':>12} {'ℓ(φ)':>12}")
    for step in range(every * args.hubble_times + 1):
        opt.zero_grad()
        phi = model(x0).squeeze()
        loss = (phi - 1.0) ** 2
        if step % every == 0:
            print(
                f"{step:>6} {universe.efolds(step):>8.2f} {phi.item():>12.6f} {loss.item():>12.3e}"
            )
        loss.backward()
        opt.step()
    return 0

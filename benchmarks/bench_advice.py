"""Physics-informed hyperparameters against a 25-point grid search, on three tasks.

For each task, 3 seeds (each seed: its own initialisation) and a fixed step budget:

* the suggestion of `suggest_hyperparameters` (one NTK at initialisation), trained once;
* a grid of 25 (lr, momentum) pairs: 5 learning rates log-spaced over two decades times
  β ∈ {0, 0.5, 0.9, 0.95, 0.99}, each trained from the same initialisation.

Training is full batch (deterministic and cheaper than mini-batches; the suggestion is then
asked with batch_size=None). Reported per task: steps to the target loss (mean over seeds),
final loss, divergences, the suggestion's predicted steps and its cost in units of one
training step (wall-clock, measured in the same process right after timing training steps),
and that cost as a fraction of the grid's total compute (25 × 3 × budget steps).

    python benchmarks/bench_advice.py            # the real evaluation (a few minutes)
    python benchmarks/bench_advice.py --smoke    # a tiny run that only checks it works
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from cosmo_optim import PolynomialPotentialLoss, suggest_hyperparameters

MOMENTA = (0.0, 0.5, 0.9, 0.95, 0.99)
DIVERGED = 1e6  # a loss above DIVERGED × initial loss (or non-finite) counts as divergence


@dataclass
class Task:
    name: str
    inputs: Tensor
    targets: Tensor | None
    loss: nn.Module
    make_model: Callable[[], nn.Module]
    lr_low: float  # the grid spans lr_low … 100·lr_low
    target: float  # target training loss
    budget: int  # optimiser steps per run


def mlp(sizes: list[int], act: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def tasks(budget: int) -> list[Task]:
    from sklearn.datasets import load_diabetes, load_digits

    xd, yd = load_digits(return_X_y=True)
    digits = Task(
        "digits (MLP, cross-entropy)",
        torch.tensor(xd / 16.0, dtype=torch.float32), torch.tensor(yd),
        nn.CrossEntropyLoss(), lambda: mlp([64, 64, 64, 10]), 0.01, 0.1, budget,
    )
    xb, yb = load_diabetes(return_X_y=True)
    xb = (xb - xb.mean(0)) / xb.std(0)
    yb = (yb - yb.mean()) / yb.std()
    diabetes = Task(
        "diabetes (MLP, MSE)",
        torch.tensor(xb, dtype=torch.float32), torch.tensor(yb, dtype=torch.float32)[:, None],
        nn.MSELoss(), lambda: mlp([10, 64, 64, 1]), 0.003, 0.45, budget,
    )
    # The paper's Eq. 28 potential ℓ = (f − 1)^4 on 64 equally spaced 1-D inputs in [−1, 1].
    x1 = torch.linspace(-1.0, 1.0, 64)[:, None]
    potential = Task(
        "potential (f − 1)^4 on 1-D inputs",
        x1, None, PolynomialPotentialLoss(center=1.0, power=4), lambda: mlp([1, 64, 64, 1]),
        0.003, 0.01, budget,
    )
    return [digits, diabetes, potential]


def train(task: Task, model: nn.Module, lr: float, momentum: float) -> np.ndarray:
    """Full-batch momentum SGD; the loss before each step (budget + 1 values, inf if diverged)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    losses = np.full(task.budget + 1, np.inf)
    for n in range(task.budget + 1):
        opt.zero_grad()
        value = task.loss(model(task.inputs), task.targets)
        losses[n] = value.item()
        if not math.isfinite(losses[n]) or losses[n] > DIVERGED * losses[0]:
            losses[n:] = np.inf
            break
        if n < task.budget:
            value.backward()
            opt.step()
    return losses


def steps_to(losses: np.ndarray, target: float) -> float:
    hits = np.flatnonzero(losses <= target)
    return float(hits[0]) if hits.size else math.inf


def step_time(task: Task, model: nn.Module, repeats: int = 20) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    start = time.perf_counter()
    for _ in range(repeats):
        opt.zero_grad()
        task.loss(model(task.inputs), task.targets).backward()
        opt.step()
    return (time.perf_counter() - start) / repeats


def evaluate(task: Task, seeds: int, lrs: np.ndarray, momenta: tuple[float, ...],
             **advice: float) -> dict:
    grid = [(float(lr), b) for lr in lrs for b in momenta]
    runs: dict[tuple[float, float], list[np.ndarray]] = {g: [] for g in grid}
    sugg_runs, predicted, cost, lr_s, beta_s, bounds = [], [], [], [], [], []
    for seed in range(seeds):
        torch.manual_seed(seed)
        init = task.make_model()
        state = {k: v.clone() for k, v in init.state_dict().items()}
        t_step = step_time(task, task.make_model())
        start = time.perf_counter()
        s = suggest_hyperparameters(init, task.loss, task.inputs, task.targets,
                                    horizon_steps=task.budget, target_loss=task.target,
                                    **advice)
        t_suggest = time.perf_counter() - start
        t_step = 0.5 * (t_step + step_time(task, task.make_model()))  # side by side
        cost.append(t_suggest / t_step)
        predicted.append(math.inf if s.predicted_steps is None else s.predicted_steps)
        lr_s.append(s.lr)
        beta_s.append(s.momentum)
        bounds.append(s.active_bound)
        init.load_state_dict(state)
        sugg_runs.append(train(task, init, s.lr, s.momentum))
        for lr, b in grid:
            model = task.make_model()
            model.load_state_dict(state)
            runs[(lr, b)].append(train(task, model, lr, b))

    def summary(losses: list[np.ndarray]) -> dict:
        steps = [steps_to(x, task.target) for x in losses]
        return {
            "steps": float(np.mean(steps)),
            "final": float(np.mean([x[-1] for x in losses])),
            "diverged": sum(not np.isfinite(x[-1]) for x in losses),
        }

    grid_summary = {g: summary(v) for g, v in runs.items()}
    stable = [g for g in grid if grid_summary[g]["diverged"] == 0] or grid
    best = min(stable, key=lambda g: (grid_summary[g]["steps"], grid_summary[g]["final"]))
    sugg = summary(sugg_runs)
    actual = [steps_to(x, task.target) for x in sugg_runs]
    errors = [p / a - 1 for p, a in zip(predicted, actual, strict=True)
              if math.isfinite(p) and math.isfinite(a) and a > 0]
    return {
        "task": task.name, "suggestion": sugg, "best": grid_summary[best], "best_pair": best,
        "grid_diverged": sum(v["diverged"] for v in grid_summary.values()),
        "lr": float(np.mean(lr_s)), "momentum": float(np.mean(beta_s)),
        "bounds": sorted(set(bounds)),
        "predicted": float(np.mean(predicted)), "pred_error": errors,
        "cost_steps": float(np.mean(cost)),
        "cost_fraction": float(np.mean(cost)) / (len(grid) * seeds * task.budget),
        "target": task.target, "budget": task.budget,
    }


def print_table(results: list[dict]) -> None:
    print("| task | target loss | method | lr | β | steps to target | final loss | diverged | "
          "predicted steps | cost (steps) | cost / grid |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        s, b = r["suggestion"], r["best"]
        err = ", ".join(f"{e:+.0%}" for e in r["pred_error"]) or "n/a"
        print(f"| {r['task']} | {r['target']:g} | suggestion | {r['lr']:.3g} | "
              f"{r['momentum']:.3f} | {s['steps']:.0f} | {s['final']:.3g} | {s['diverged']}/3 | "
              f"{r['predicted']:.0f} ({err}) | {r['cost_steps']:.0f} | "
              f"{r['cost_fraction']:.2%} |")
        print(f"| | | grid best | {r['best_pair'][0]:.3g} | {r['best_pair'][1]:.2f} | "
              f"{b['steps']:.0f} | {b['final']:.3g} | {b['diverged']}/3 "
              f"(grid: {r['grid_diverged']}/75) | | | |")
    print()
    for r in results:
        s, b = r["suggestion"], r["best"]
        ratio = s["steps"] / b["steps"] if b["steps"] > 0 else math.inf
        within = r["pred_error"] and all(abs(e) <= 0.3 for e in r["pred_error"])
        print(f"{r['task']}: never diverges {'MET' if s['diverged'] == 0 else 'MISSED'}; "
              f"steps {ratio:.2f}× grid best ({'MET' if ratio <= 1.5 else 'MISSED'}); "
              f"cost {r['cost_fraction']:.2%} of grid "
              f"({'MET' if r['cost_fraction'] < 0.01 else 'MISSED'}); "
              f"prediction within ±30% {'MET' if within else 'MISSED'}; "
              f"active bound {'/'.join(r['bounds'])}")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run: only checks it works")
    parser.add_argument("--budget", type=int, default=500, help="optimiser steps per run")
    parser.add_argument("--safety", type=float, default=None, help="override the default")
    args = parser.parse_args(argv)
    advice = {} if args.safety is None else {"safety": args.safety}
    budget, seeds = (10, 1) if args.smoke else (args.budget, 3)
    results = []
    for task in tasks(budget):
        lrs = task.lr_low * np.logspace(0, 2, 2 if args.smoke else 5)
        momenta = MOMENTA[:2] if args.smoke else MOMENTA
        results.append(evaluate(task, seeds, lrs, momenta, **advice))
    print_table(results)
    return results


if __name__ == "__main__":
    main()

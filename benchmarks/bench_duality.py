"""Does the monitor's duality read-out tell lazy runs from feature-learning ones? (issue #28)

Networks trained as people train them, with `CosmologyTracker` at its defaults except a reading
every `--every` steps: tanh MLPs (wide: 4096 hidden units; narrow: 32) and a small CNN on
scikit-learn's bundled digits, an MLP on its diabetes regression, MSE and cross-entropy,
full batch on the probe batch and mini-batches of 32 drawn from the whole data set, momentum
SGD (β = 0.9). For every run it prints the median and largest `duality/relative_residual` over
the readings (T12), the median `ntk/kernel_change`, at how many readings the dual holds, and
the first cause of those where it does not (`cosmo_optim.monitor.verdict.verdict_of`). The networks were chosen before the
read-out was designed, not tuned to it: the issue's lazy network (64-4096-10, lr 1e-2), a
narrow one at a large lr, and their cross-entropy and regression siblings.

Run from another checkout (`--before`), it reads only `duality/relative_residual`, so the
same script measures the monitor of an earlier version side by side.

    python benchmarks/bench_duality.py            # 14 runs, a few minutes
    python benchmarks/bench_duality.py --smoke    # two tiny runs: checks that it works
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Case:
    name: str
    data: str  # "digits" | "diabetes"
    net: str  # "wide" | "narrow" | "cnn"
    loss: str  # "mse" | "ce"
    lr: float
    batch: int | None  # None: full batch on the probe batch


CASES = [
    Case("wide MLP, MSE", "digits", "wide", "mse", 1e-2, None),
    Case("wide MLP, MSE", "digits", "wide", "mse", 1e-2, 32),
    Case("wide MLP, CE", "digits", "wide", "ce", 1e-2, None),
    Case("wide MLP, CE", "digits", "wide", "ce", 1e-2, 32),
    Case("narrow MLP, MSE", "digits", "narrow", "mse", 0.5, None),
    Case("narrow MLP, MSE", "digits", "narrow", "mse", 0.5, 32),
    Case("narrow MLP, CE", "digits", "narrow", "ce", 0.5, None),
    Case("narrow MLP, CE", "digits", "narrow", "ce", 0.5, 32),
    Case("small CNN, CE", "digits", "cnn", "ce", 3e-4, 32),
    Case("small CNN, CE", "digits", "cnn", "ce", 0.05, 32),
    Case("wide MLP, regression", "diabetes", "wide", "mse", 1e-3, None),
    Case("wide MLP, regression", "diabetes", "wide", "mse", 1e-3, 32),
    Case("narrow MLP, regression", "diabetes", "narrow", "mse", 0.05, None),
    Case("narrow MLP, regression", "diabetes", "narrow", "mse", 0.05, 32),
]


def _data(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_diabetes, load_digits

    if name == "digits":
        x, y = load_digits(return_X_y=True)
        return torch.tensor(x, dtype=torch.float32) / 16.0, torch.tensor(y)
    x, y = load_diabetes(return_X_y=True)
    y = (y - y.mean()) / y.std()
    return torch.tensor(x, dtype=torch.float32) * 10, torch.tensor(y, dtype=torch.float32)[:, None]


def _model(case: Case, inputs: int, outputs: int, width: int) -> nn.Module:
    if case.net == "cnn":
        return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 8, 3), nn.ReLU(),
                             nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(256, outputs))
    hidden = width if case.net == "wide" else 32
    return nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, outputs))


def _loss(case: Case, classes: int) -> tuple[Any, Any]:
    """The monitor's loss and the training loss on a batch (MSE to one-hot for classes)."""
    if case.loss == "ce":
        return nn.CrossEntropyLoss(), nn.functional.cross_entropy
    if case.data != "digits":
        return nn.MSELoss(), nn.functional.mse_loss

    def per_sample(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # mean_i = the MSE
        return (out - nn.functional.one_hot(y, classes).to(out)).pow(2).mean(dim=1)

    return per_sample, lambda out, y: per_sample(out, y).mean()


def run(case: Case, steps: int, every: int, width: int, seed: int = 0) -> dict[str, Any]:
    """Train one case with the tracker attached; its readings' residuals and last verdict."""
    from cosmo_optim import CosmologyTracker

    x, y = _data(case.data)
    classes = 10 if case.data == "digits" else 1
    torch.manual_seed(seed)
    model = _model(case, x.shape[1], classes, width)
    monitor_loss, train_loss = _loss(case, classes)
    probe = (x[:16], y[:16])
    opt = torch.optim.SGD(model.parameters(), lr=case.lr, momentum=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tracker = CosmologyTracker(model, monitor_loss, probe_batch=probe, every_n_steps=every)
        tracker.attach(opt)
        g = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            if case.batch is None:
                xb, yb = probe
            else:
                idx = torch.randint(len(x), (case.batch,), generator=g)
                xb, yb = x[idx], y[idx]
            opt.zero_grad()
            train_loss(model(xb), yb).backward()
            opt.step()
    readings = [r.scalars for r in tracker.history]
    rel = [s["duality/relative_residual"] for s in readings if "duality/relative_residual" in s]
    out: dict[str, Any] = {"case": case, "median": statistics.median(rel), "max": max(rel)}
    change = [s["ntk/kernel_change"] for s in readings if "ntk/kernel_change" in s]
    if change:  # this version's read-out only
        from collections import Counter

        from cosmo_optim.monitor.verdict import verdict_of

        verdicts = [verdict_of(s, previous=p, interval=every)
                    for s, p in zip(readings, [None, *readings[:-1]], strict=True)]
        measured = [v for v in verdicts if v.holds is not None]
        causes = Counter(v.causes[0].name for v in measured if not v.holds)
        notes = Counter(n.name for v in measured for n in v.notes)
        out |= {"kernel_change": statistics.median(change),
                "holds": f"{sum(bool(v.holds) for v in measured)}/{len(measured)}",
                "cause": ", ".join(f"{k} ({n})" for k, n in causes.most_common()),
                "notes": ", ".join(f"{k} ({n})" for k, n in notes.most_common())}
    return out


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="two tiny runs")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=10)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cases, steps, width = CASES, args.steps, 4096
    if args.smoke:
        cases, steps, width = [CASES[1], CASES[5]], 20, 256
    rows = [run(case, steps, args.every, width) for case in cases]
    print("| network | training | lr | relative residual, median (max) | kernel change, median "
          "| holds at | cause where not (readings) | notes (readings) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        c = r["case"]
        training = "full batch (probe)" if c.batch is None else f"mini-batch {c.batch}"
        print(f"| {c.name} ({c.data}) | {training} | {c.lr:g} | {r['median']:.2e} "
              f"({r['max']:.2e}) | {r.get('kernel_change', float('nan')):.2e} | "
              f"{r.get('holds', '')} | {r.get('cause', '')} | {r.get('notes', '')} |")
    return rows


if __name__ == "__main__":
    main()

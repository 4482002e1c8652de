"""Every public entry point that reads a model leaves it, and every random state, bit for bit.

The model has what users' models have: BatchNorm running statistics, dropout, a spectral-norm
power iteration buffer, a tensor held as a module attribute that forward replaces (a cache, a
recurrent state), populated ``.grad`` fields and a train/eval flag per module (some set
differently from their parent). After each call, parameters, buffers, the attribute (the same
object, the same values), ``.grad``, the flags, and the torch, NumPy and Python random states
must be exactly what they were.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

import cosmo_optim as co


class Memo(nn.Module):
    """Keeps the last batch's mean activation in a tensor attribute (a cache forward replaces)."""

    def __init__(self) -> None:
        super().__init__()
        self.last = torch.zeros(16, dtype=torch.float64)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        self.last = h.detach().mean(0)
        return h


def user_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        parametrizations.spectral_norm(nn.Linear(4, 16)), nn.BatchNorm1d(16), nn.Tanh(),
        nn.Dropout(0.2), Memo(), nn.Linear(16, 1),
    ).double()
    model.train()
    model[3].eval()  # a submodule whose flag differs from its parent's
    x = torch.randn(8, 4, dtype=torch.float64)
    model(x).sum().backward()  # populated .grad, running statistics moved once
    model[4].last = torch.ones(16, dtype=torch.float64)  # the attribute each call must leave
    return model


def snapshot(model: nn.Module) -> dict[str, object]:
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "buffers": [b.clone() for b in model.buffers()],
        "flags": [m.training for m in model.modules()],
        "attribute": (model[4].last, model[4].last.clone()),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state()[1].copy(),  # noqa: NPY002
        "python_rng": random.getstate(),
    }


def assert_same(before: dict[str, object], after: dict[str, object]) -> None:
    for key in ("params", "grads", "buffers"):
        for i, (a, b) in enumerate(zip(before[key], after[key], strict=True)):  # type: ignore[call-overload]
            assert (a is None and b is None) or torch.equal(a, b), f"{key}[{i}] changed"
    assert before["flags"] == after["flags"], "train/eval flags changed"
    (kept, value), (now, _) = before["attribute"], after["attribute"]  # type: ignore[misc]
    assert now is kept and torch.equal(now, value), "tensor attribute replaced or changed"
    assert torch.equal(before["torch_rng"], after["torch_rng"]), "torch RNG advanced"
    assert np.array_equal(before["numpy_rng"], after["numpy_rng"]), "NumPy RNG advanced"
    assert before["python_rng"] == after["python_rng"], "Python RNG advanced"


X = torch.randn(8, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
Y = torch.randn(8, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
SGD = co.Cosmology.from_sgd(1e-2, 0.9)

ENTRY_POINTS: dict[str, Callable[[nn.Module], object]] = {
    "empirical_ntk": lambda m: co.empirical_ntk(m, X),
    "empirical_ntk_verify": lambda m: co.empirical_ntk(m, X, output="full", verify=True),
    "check_duality": lambda m: co.check_duality(m, nn.MSELoss(), X, Y, cosmology=SGD, steps=5,
                                                progress=False),
    "suggest_hyperparameters": lambda m: co.suggest_hyperparameters(m, nn.MSELoss(), X, Y,
                                                                    horizon_steps=20),
    "output_velocity": lambda m: co.output_velocity(
        m, X, torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)),
    "tracker_probe": lambda m: _probe(m),
}


def _probe(model: nn.Module) -> object:
    tracker = co.CosmologyTracker(model, nn.MSELoss(), probe_batch=(X, Y))
    return tracker.read(0)


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_entry_point_leaves_model_and_random_states_untouched(entry: str) -> None:
    model = user_model()
    random.seed(3)
    np.random.seed(3)  # noqa: NPY002
    before = snapshot(model)
    ENTRY_POINTS[entry](model)
    assert_same(before, snapshot(model))

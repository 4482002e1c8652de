"""The linearised outputs of T12 against hand computations: f(θ_ref) + J(θ_ref)(θ − θ_ref)."""

import math

import pytest
import torch
from torch import nn

from cosmo_optim.dual.linearised import (
    WeightSnapshot,
    linearisation_residual,
    linearised_outputs,
)

D = torch.float64


def test_a_linear_model_is_its_own_linearisation_whatever_trained_it():
    """f = W x + b: J(θ_ref)(θ − θ_ref) = ΔW x + Δb exactly, after Adam on other data."""
    torch.manual_seed(0)
    model = nn.Linear(5, 3).double()
    probe, other = torch.randn(7, 5, dtype=D), torch.randn(64, 5, dtype=D)
    snap = WeightSnapshot.take(model, step=0)
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for i in range(20):  # mini-batches of other data, another optimiser
        opt.zero_grad()
        model(other[i::4]).pow(3).mean().backward()
        opt.step()
    ref, change = linearised_outputs(model, probe, snap)
    torch.testing.assert_close(ref, probe @ w0.T + b0, rtol=0, atol=1e-14)
    dw, db = model.weight.detach() - w0, model.bias.detach() - b0
    torch.testing.assert_close(change, probe @ dw.T + db, rtol=0, atol=1e-13)
    rms, relative = linearisation_residual(model(probe).detach(), ref, change)
    assert rms < 1e-14 and relative < 1e-13


def test_the_residual_of_a_quadratic_map_is_its_second_order_term():
    """f(w) = (w·x)²: f(w + d) − f(w) − 2(w·x)(d·x) = (d·x)², by hand."""
    class Square(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.tensor([0.5, -1.0, 2.0], dtype=D))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x @ self.w).pow(2)[:, None]

    model, x = Square(), torch.tensor([[1.0, 0.0, 1.0], [0.0, 2.0, 1.0]], dtype=D)
    snap = WeightSnapshot.take(model, 0)
    d = torch.tensor([0.1, 0.2, -0.3], dtype=D)
    w, f0 = model.w.detach().clone(), model(x).detach()
    with torch.no_grad():
        model.w += d
    ref, change = linearised_outputs(model, x, snap)
    torch.testing.assert_close(change[:, 0], 2 * (x @ w) * (x @ d))
    f = model(x).detach()
    rms, relative = linearisation_residual(f, ref, change)
    second = (x @ d).pow(2)
    assert rms == pytest.approx(float(second.norm()) / math.sqrt(2))
    assert relative == pytest.approx(float(second.norm() / (f - f0).norm()))


def test_running_statistics_that_moved_are_not_counted_as_weights_moving():
    """Eval-mode BatchNorm is affine in its weight and bias: the outputs are linear in the
    weights, so the residual is 0 even though the running statistics changed in between."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6)).double()
    model[0].requires_grad_(False)  # frozen: kept at its value, not copied
    x = torch.randn(10, 4, dtype=D)
    snap = WeightSnapshot.take(model, 0)
    assert set(snap.weights) == {"1.weight", "1.bias"}
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(5):  # train mode: the running statistics move too
        opt.zero_grad()
        model(torch.randn(16, 4, dtype=D)).pow(2).mean().backward()
        opt.step()
    model.eval()
    stats = model[1].running_mean.clone()
    ref, change = linearised_outputs(model, x, snap)
    assert torch.equal(model[1].running_mean, stats)  # buffers untouched
    _, relative = linearisation_residual(model(x).detach(), ref, change)
    assert relative < 1e-12 and change.abs().max() > 1e-3


def test_a_snapshot_of_another_model_is_refused_naming_the_fix():
    snap = WeightSnapshot.take(nn.Linear(2, 2), 0)
    with pytest.raises(ValueError, match=r"since step 0 the model's parameters were added or removed.*WeightSnapshot\.take"):
        linearised_outputs(nn.Sequential(nn.Linear(2, 2)), torch.randn(3, 2), snap)


def test_a_layer_unfrozen_or_edited_since_the_snapshot_is_seen():
    """Frozen parameters are fingerprinted, not copied: unfreezing one that then moves, or
    editing one in place, is a change no linearisation from the snapshot covers."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    model[0].requires_grad_(False)
    snap = WeightSnapshot.take(model, 5)
    assert set(snap.weights) == {"2.weight", "2.bias"} and snap.changes(model) is None
    model[0].requires_grad_(True)  # unfrozen, not moved yet: still covered
    assert snap.changes(model) is None
    with torch.no_grad():
        model[0].weight.add_(0.1)
    assert snap.changes(model) == "frozen parameters were unfrozen or edited"
    model[2] = nn.Linear(4, 2).double()
    assert snap.changes(model) == "parameters changed shape"


def test_outputs_that_did_not_move_have_no_relative_residual():
    f = torch.ones(3, 1, dtype=D)
    rms, relative = linearisation_residual(f, f, torch.zeros_like(f))
    assert rms == 0.0 and math.isnan(relative)

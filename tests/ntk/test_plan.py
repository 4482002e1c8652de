"""The plan (cosmo_optim/ntk/plan.py): every plan it picks is exact against brute force, a budget
that cannot hold the whole batch is planned under instead of refused, and the plan is shown."""

from __future__ import annotations

import logging

import pytest
import torch
from brute_force import assert_exact, brute_force_jacobian, brute_force_ntk
from torch import nn

from cosmo_optim import MemoryBudgetError, empirical_ntk
from cosmo_optim.ntk import forms as ntk_forms
from cosmo_optim.ntk import plan as plans


class BNNet(nn.Module):
    """Conv + eval-mode BatchNorm (trained statistics) + two linear layers, 3 outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc1, self.bn1, self.fc2 = nn.Linear(4 * 25, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)
        for bn in (self.bn, self.bn1):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(bn.weight, 0.5, 1.5)
            nn.init.uniform_(bn.bias, -0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.bn(self.conv(x))).flatten(1)
        return self.fc2(torch.tanh(self.bn1(self.fc1(h))))


def _model() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return BNNet().double().eval(), torch.randn(10, 2, 5, 5, dtype=torch.float64)


def _plan_of(model: nn.Module, x: torch.Tensor, caplog: pytest.LogCaptureFixture,
             **kw: object) -> tuple[torch.Tensor, str]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cosmo_optim.ntk"):
        K = empirical_ntk(model, x, explain=True, **kw)
    return K, caplog.text


def test_batchnorm_in_eval_mode_takes_a_structured_rule(caplog) -> None:
    model, x = _model()
    K, text = _plan_of(model, x, caplog)
    assert_exact(K, brute_force_ntk(model, x), 1e-10)
    assert "bn.weight [psg" in text and "bn1.bias [psg" in text
    assert "per-sample Jacobian" not in text


@pytest.mark.parametrize("output", ["trace", "full"])
def test_a_budget_below_the_whole_batch_is_planned_under(caplog, output: str) -> None:
    """A budget too small for one pass over all samples: stored chunks in several passes over
    groups of layers, exact, where the one-shot plan would need more than the budget."""
    model, x = _model()
    J = brute_force_jacobian(model, x)
    R = torch.einsum("icp,jdp->ijcd" if output == "full" else "icp,jcp->ij", J, J)
    _, roomy = _plan_of(model, x, caplog, output=output)
    K, text = _plan_of(model, x, caplog, output=output, memory_budget=66_000)
    assert_exact(K, R, 1e-10)
    assert "stored: chunks of" in text and "pass 2:" in text, text
    if output == "trace":
        assert "streaming" in roomy


def test_the_streaming_plan_holds_less_than_the_stored_one() -> None:
    """Same request, two plans: streaming keeps no term past its component (bytes kept 0)."""
    psg = ntk_forms.PerSample()
    forms = {"w": ntk_forms.Choice(psg, ntk_forms.Cost(0, 4_000, 400)),
             "b": ntk_forms.Choice(psg, ntk_forms.Cost(0, 400, 40))}
    stream = plans.structured_plan(10**6, 10, 800, 100, forms, full=False)
    stored = plans.structured_plan(10**6, 10, 800, 100, forms, full=True)
    assert stream.streaming and stream.chunk == 10
    assert not stored.streaming and stored.groups == [["w", "b"]]


def test_refused_only_when_two_samples_cannot_fit_and_the_error_names_the_budget() -> None:
    model, x = _model()
    with pytest.raises(MemoryBudgetError, match=r"needs at least (\d+).*memory_budget=\d+") as e:
        empirical_ntk(model, x, memory_budget=2_000)
    need = int(str(e.value).split("memory_budget=")[-1].split()[0])
    assert_exact(empirical_ntk(model, x, memory_budget=need), brute_force_ntk(model, x), 1e-10)


def test_the_plan_is_logged_at_debug(caplog) -> None:
    model, x = _model()
    with caplog.at_level(logging.DEBUG, logger="cosmo_optim.ntk"):
        empirical_ntk(model, x)
    assert "empirical_ntk plan" in caplog.text and "streaming" in caplog.text


def test_default_budget_is_a_fraction_of_free_memory(monkeypatch) -> None:
    monkeypatch.setattr(plans, "_host_available", lambda: 16 << 30)
    assert plans.default_budget(torch.device("cpu")) == 4 << 30
    monkeypatch.setattr(plans, "_host_available", lambda: 64 << 30)
    assert plans.default_budget(torch.device("cpu")) == 8 << 30  # the ceiling
    monkeypatch.setattr(plans, "_host_available", lambda: 100 << 20)
    assert plans.default_budget(torch.device("cpu")) == 256 << 20  # the floor

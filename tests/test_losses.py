"""Per-sample losses and their autograd derivatives against hand-written formulas (T4, T8)."""

import pytest
import torch
from torch import nn

from cosmo_optim import PolynomialPotentialLoss, per_sample_loss
from cosmo_optim.losses import loss_derivatives


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.mark.parametrize("power", [2, 4, 6])
def test_polynomial_potential_derivatives_match_calculus(power):
    loss = PolynomialPotentialLoss(center=0.7, power=power, scale=0.3)
    f = torch.tensor([[-1.0], [0.2], [2.5]])
    values, grad, hess = loss_derivatives(loss, f)
    d = f[:, 0] - 0.7
    assert torch.allclose(values, 0.3 * d**power)
    assert torch.allclose(grad[:, 0], 0.3 * power * d ** (power - 1))
    assert torch.allclose(hess[:, 0, 0], 0.3 * power * (power - 1) * d ** (power - 2))


def test_polynomial_potential_reductions_and_training_form():
    f = torch.tensor([[0.0], [2.0], [3.0]])
    per = PolynomialPotentialLoss(1.0, 2, 2.0, reduction="none")(f)
    assert per.tolist() == [2.0, 2.0, 8.0]
    assert PolynomialPotentialLoss(1.0, 2, 2.0)(f).item() == pytest.approx(4.0)
    assert PolynomialPotentialLoss(1.0, 2, 2.0, reduction="sum")(f).item() == pytest.approx(12.0)
    assert per_sample_loss(PolynomialPotentialLoss(1.0, 2, 2.0)).training_loss(f).item() == pytest.approx(4.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"power": 3}, "even integer"), ({"scale": -1.0}, "Invalid scale"), ({"reduction": "avg"}, "Invalid reduction")],
)
def test_polynomial_potential_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PolynomialPotentialLoss(**kwargs)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse_per_sample_mean_is_the_training_loss_and_derivatives_are_linear(reduction):
    module = nn.MSELoss(reduction=reduction)
    f, y = torch.randn(5, 3), torch.randn(5, 3)
    ell = per_sample_loss(module)
    assert torch.allclose(ell(f, y).mean(), module(f, y))
    _, grad, hess = loss_derivatives(module, f, y)
    scale = 1 / 3 if reduction == "mean" else 5.0
    assert torch.allclose(grad, 2 * scale * (f - y))
    assert torch.allclose(hess, 2 * scale * torch.eye(3).expand(5, 3, 3))


def test_cross_entropy_gradient_and_hessian_are_softmax_formulas():
    f, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    _, grad, hess = loss_derivatives(nn.CrossEntropyLoss(), f, y)
    p = torch.softmax(f, dim=1)
    assert torch.allclose(grad, p - nn.functional.one_hot(y, 3))
    assert torch.allclose(hess, torch.diag_embed(p) - p[:, :, None] * p[:, None, :])


def test_user_callable_is_used_per_sample():
    def huber(f, y):
        return nn.functional.huber_loss(f, y, reduction="none").sum(dim=1)

    f, y = torch.tensor([[0.0], [3.0]]), torch.zeros(2, 1)
    _, grad, hess = loss_derivatives(huber, f, y)
    assert grad[:, 0].tolist() == [0.0, 1.0]
    assert hess[:, 0, 0].tolist() == [1.0, 0.0]


def test_bad_losses_give_clear_errors():
    with pytest.raises(ValueError, match=r"returned shape \(\), expected \(2,\)"):
        per_sample_loss(lambda f, y: f.sum())(torch.zeros(2, 1))
    with pytest.raises(ValueError, match="MSELoss needs targets"):
        per_sample_loss(nn.MSELoss())(torch.zeros(2, 1))
    with pytest.raises(ValueError, match="class weights"):
        per_sample_loss(nn.CrossEntropyLoss(weight=torch.ones(3)))
    with pytest.raises(ValueError, match="reduction='none'"):
        per_sample_loss(nn.MSELoss(reduction="none"))
    with pytest.raises(ValueError, match="Invalid loss"):
        per_sample_loss(3.0)

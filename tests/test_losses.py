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


@pytest.mark.parametrize("loss", [nn.BCEWithLogitsLoss(pos_weight=torch.tensor([3.0, 0.5])),
                                  nn.BCEWithLogitsLoss(weight=torch.tensor([2.0, 1.0]))])
def test_binary_cross_entropy_weights_keep_a_plain_mean_and_are_accepted(loss):
    """Unlike cross-entropy's class weights (a weighted mean Σ w ℓ / Σ w), BCE's weight and
    pos_weight scale each element and 'mean' still divides by the element count."""
    g = torch.Generator().manual_seed(0)
    f, y = torch.randn(5, 2, generator=g), (torch.rand(5, 2, generator=g) > 0.5).float()
    ell = per_sample_loss(loss)
    assert float(ell(f, y).mean()) == pytest.approx(float(loss(f, y)), rel=1e-6)  # float32
    with pytest.raises(ValueError, match="class weights"):
        per_sample_loss(nn.NLLLoss(weight=torch.ones(2)))


def test_bad_losses_give_clear_errors():
    with pytest.raises(ValueError, match=r"returned shape \(\), expected shape \(2,\)"):
        per_sample_loss(lambda f, y: f.sum())(torch.zeros(2, 1))
    with pytest.raises(ValueError, match=r"returned a float, not a Tensor, expected shape \(2,\)"):
        per_sample_loss(lambda f, y: float(f.sum()))(torch.zeros(2, 1))
    with pytest.raises(ValueError, match="MSELoss needs targets"):
        per_sample_loss(nn.MSELoss())(torch.zeros(2, 1))
    with pytest.raises(ValueError, match="class weights"):
        per_sample_loss(nn.CrossEntropyLoss(weight=torch.ones(3)))
    with pytest.raises(ValueError, match="reduction='none'"):
        per_sample_loss(nn.MSELoss(reduction="none"))
    with pytest.raises(ValueError, match="Invalid loss"):
        per_sample_loss(3.0)


def _autograd_gradient(ell, f, y):
    g = f.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(ell.per_sample(g, y).sum(), g)
    return grad


_G = torch.Generator().manual_seed(0)
_F = torch.randn(6, 4, generator=_G, dtype=torch.float64)
_CLOSED_FORM_CASES = {
    "mse-mean": (nn.MSELoss(), _F, torch.randn(6, 4, generator=_G, dtype=torch.float64)),
    "mse-sum": (nn.MSELoss(reduction="sum"), _F, torch.randn(6, 4, generator=_G, dtype=torch.float64)),
    "mse-3d": (nn.MSELoss(), _F.reshape(6, 2, 2), torch.randn(6, 2, 2, generator=_G, dtype=torch.float64)),
    "ce-index": (nn.CrossEntropyLoss(), _F, torch.tensor([0, 3, 1, 2, 3, 0])),
    "ce-sum": (nn.CrossEntropyLoss(reduction="sum"), _F, torch.tensor([0, 3, 1, 2, 3, 0])),
    "ce-ignore-smooth": (nn.CrossEntropyLoss(ignore_index=1, label_smoothing=0.2), _F,
                         torch.tensor([0, 1, 1, 2, 3, 0])),
    "ce-probabilities": (nn.CrossEntropyLoss(label_smoothing=0.1), _F,
                         torch.softmax(torch.randn(6, 4, generator=_G, dtype=torch.float64), dim=1)),
    "potential": (PolynomialPotentialLoss(0.5, 4, 0.3), _F[:, :1], None),
}


@pytest.mark.parametrize("case", list(_CLOSED_FORM_CASES))
def test_closed_form_gradient_equals_autograd(case):
    loss, f, y = _CLOSED_FORM_CASES[case]
    ell = per_sample_loss(loss)
    assert ell._gradient is not None  # the closed form, not the fallback, is under test
    closed = ell._gradient(y)(f)
    assert closed is not None
    assert torch.allclose(closed, _autograd_gradient(ell, f, y), rtol=1e-12, atol=1e-14)
    assert torch.equal(ell.gradient(f, y), closed)
    at = ell.gradient_at(y)
    assert torch.equal(at(f), closed) and torch.equal(at(2 * f), ell.gradient(2 * f, y))


def test_gradient_falls_back_to_autograd_for_other_losses_and_inputs():
    f = torch.randn(5, 3, generator=_G)
    huber = per_sample_loss(nn.HuberLoss())  # no closed form: autograd
    y = torch.randn(5, 3, generator=_G)
    assert torch.allclose(huber.gradient(f, y), _autograd_gradient(huber, f, y))
    user = per_sample_loss(lambda out, tgt: (out - 1.0).pow(3).sum(dim=1))
    assert torch.allclose(user.gradient(f), 3 * (f - 1.0) ** 2)
    mse = per_sample_loss(nn.MSELoss())  # broadcast target: the closed form declines
    y_col = torch.randn(5, 1, generator=_G)
    assert mse._gradient(y_col)(f) is None
    assert torch.allclose(mse.gradient(f, y_col), _autograd_gradient(mse, f, y_col))


@pytest.mark.parametrize("case", list(_CLOSED_FORM_CASES))
def test_closed_form_loss_derivatives_equal_autograd(case):
    from cosmo_optim.losses import PerSampleLoss

    loss, f, y = _CLOSED_FORM_CASES[case]
    ell = per_sample_loss(loss)
    assert ell._hessian is not None
    by_autograd = PerSampleLoss(ell._per_sample)  # the same ℓ without closed forms
    for order in (1, 2):
        closed = loss_derivatives(ell, f, y, order=order)
        reference = loss_derivatives(by_autograd, f, y, order=order)
        for got, want in zip(closed, reference, strict=True):
            if want is None:
                assert got is None
            else:
                assert got.shape == want.shape
                assert torch.allclose(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_polynomial_potential_reduction_is_the_training_loss_and_its_derivatives(reduction):
    loss = PolynomialPotentialLoss(center=1.0, power=4, scale=0.5, reduction=reduction)
    ell = per_sample_loss(loss)
    f = torch.linspace(-1.0, 2.0, 5, dtype=torch.float64)[:, None].requires_grad_()
    assert torch.allclose(ell.training_loss(f, None), loss(f))
    assert torch.allclose(ell.per_sample(f).mean(), loss(f))
    (by_autograd,) = torch.autograd.grad(loss(f), f)
    _, grad, hess = loss_derivatives(ell, f.detach())
    assert torch.allclose(grad / f.shape[0], by_autograd, rtol=1e-12)
    expected = 0.5 * 4 * 3 * (f.detach() - 1.0) ** 2 * (f.shape[0] if reduction == "sum" else 1)
    assert torch.allclose(hess[:, 0, 0], expected[:, 0], rtol=1e-12)


def test_polynomial_potential_without_reduction_is_refused():
    with pytest.raises(ValueError, match=r"reduction='none'\) as a training loss; the dual needs a scalar loss"):
        per_sample_loss(PolynomialPotentialLoss(reduction="none"))


def test_a_loss_class_instead_of_an_instance_names_the_fix():
    with pytest.raises(ValueError, match=r"Invalid loss: the class CrossEntropyLoss, not an instance. Fix: pass CrossEntropyLoss\(\)"):
        per_sample_loss(nn.CrossEntropyLoss)


def test_float32_targets_with_float64_outputs_give_huber_s_derivatives():
    """The monitor's outputs are float64 and a data set's targets float32; Huber's backward
    refuses mixed dtypes, so the targets take the outputs' dtype (closed form by hand:
    ℓ = mean_c huber(f − y), ℓ' = clip(f − y, ±δ)/C, ℓ'' = [|f − y| < δ]/C)."""
    f = torch.tensor([[0.2, 3.0], [-2.5, 0.1]], dtype=torch.float64)
    y = torch.zeros(2, 2, dtype=torch.float32)
    values, grad, hess = loss_derivatives(torch.nn.HuberLoss(delta=1.0), f, y)
    r = f - y.double()
    torch.testing.assert_close(grad, r.clamp(-1.0, 1.0) / 2)
    torch.testing.assert_close(hess, torch.diag_embed((r.abs() < 1.0).double() / 2))
    assert values.dtype == torch.float64

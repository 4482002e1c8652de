"""suggest_hyperparameters: Polyak's optimum on quadratics, stability, batch noise, errors."""

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from cosmo_optim import CosmoSGD, PolynomialPotentialLoss, Suggestion, suggest_hyperparameters

# linear_problem's random targets leave a least-squares floor above the default target (10 % of
# the initial loss), so most calls here rightly warn that the target is missed; the warnings
# are tested in test_margin.py.
pytestmark = pytest.mark.filterwarnings("ignore:suggest_hyperparameters:UserWarning")


def linear_problem(n=40, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor([3.0, 2.0, 1.0, 0.5, 0.2], dtype=torch.float64)[:d]
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * scales
    y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.zero_()
    return model, x, y


def hessian_eigenvalues(model, x, y):
    """Independent reference: the parameter Hessian of the MSE loss, (2/N) XᵀX."""
    w0 = model.weight.detach().clone()

    def loss(w):
        return nn.functional.mse_loss(x @ w.T, y)

    h = torch.autograd.functional.hessian(loss, w0).reshape(w0.numel(), w0.numel())
    return np.linalg.eigvalsh(h.numpy())


def polyak(kappa_max, kappa_min):
    """Polyak (1964): the heavy-ball optimum for a quadratic with curvatures in [μ, L]."""
    lr = 4.0 / (math.sqrt(kappa_max) + math.sqrt(kappa_min)) ** 2
    momentum = ((math.sqrt(kappa_max) - math.sqrt(kappa_min)) / (math.sqrt(kappa_max) + math.sqrt(kappa_min))) ** 2
    return lr, momentum


def test_linear_model_with_quadratic_loss_gets_polyaks_heavy_ball_optimum():
    model, x, y = linear_problem()
    s = suggest_hyperparameters(model, nn.MSELoss(), x, y, horizon_steps=2000,
                                target_loss=0.0, residual_fraction=1.0, safety=1.0)
    eig = hessian_eigenvalues(model, x, y)
    lr, momentum = polyak(eig.max(), eig.min())
    assert s.lr == pytest.approx(lr, rel=1e-8)
    assert s.momentum == pytest.approx(momentum, rel=1e-8)
    assert s.active_bound == "residual_fraction"
    np.testing.assert_allclose(s.softest_curvatures, s.curvatures)  # MSE: ℓ'' is constant
    assert (s.lr, s.momentum) == (s.cosmology.lr, s.cosmology.momentum)


def test_polyak_parameters_sit_on_the_exact_discrete_thresholds_of_T10():
    model, x, y = linear_problem()
    s = suggest_hyperparameters(model, nn.MSELoss(), x, y, horizon_steps=2000,
                                target_loss=0.0, residual_fraction=1.0, safety=1.0)
    root = math.sqrt(s.momentum)
    assert s.lr * s.kappa_min == pytest.approx((1 - root) ** 2, rel=1e-8)  # critical damping
    assert s.lr * s.kappa_max == pytest.approx((1 + root) ** 2, rel=1e-8)
    assert s.lr * s.kappa_max < 2 * (1 + s.momentum)  # inside the edge of stability


def test_residual_fraction_picks_the_range_of_the_modes_that_carry_the_residual():
    model, x, y = linear_problem()
    target = 0.7 * float(y.pow(2).mean())  # 30 % of the loss must go: fraction 0.5 is kept
    full = suggest_hyperparameters(model, nn.MSELoss(), x, y, horizon_steps=2000,
                                   target_loss=target, residual_fraction=1.0, safety=1.0)
    part = suggest_hyperparameters(model, nn.MSELoss(), x, y, horizon_steps=2000,
                                   target_loss=target, residual_fraction=0.5, safety=1.0)
    assert len(part.relevant_modes) < len(full.relevant_modes)
    assert part.kappa_min >= full.kappa_min
    assert part.kappa_min == pytest.approx(min(part.curvatures[part.relevant_modes]))


def test_suggestion_is_stable_on_every_mode_of_the_linear_model():
    model, x, y = linear_problem()
    for safety in (1.0, 0.5):
        s = suggest_hyperparameters(model, nn.MSELoss(), x, y, horizon_steps=200, safety=safety)
        eig = hessian_eigenvalues(model, x, y)
        assert np.all(s.lr * eig < 2 * (1 + s.momentum))
        assert s.stability_margin < 1


def test_suggestion_is_stable_on_every_gauss_newton_mode_of_a_classifier():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    x = torch.randn(24, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (24,))
    s = suggest_hyperparameters(model, nn.CrossEntropyLoss(), x, y, horizon_steps=100)
    # Independent reference: the Gauss-Newton matrix (1/N) Jᵀ ℓ'' J in parameter space.
    params = dict(model.named_parameters())
    jac = torch.func.jacrev(lambda p: torch.func.functional_call(model, p, (x,)))(params)
    j = torch.cat([v.reshape(24, 3, -1) for v in jac.values()], dim=2)  # (N, C, P)
    p = torch.softmax(model(x), dim=1).detach()
    hess = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    gn = torch.einsum("nap,nab,nbq->pq", j, hess, j) / 24
    assert s.lr * float(torch.linalg.eigvalsh(gn.detach()).max()) < 2 * (1 + s.momentum)


def test_predicted_loss_is_exact_for_a_linear_model_with_quadratic_loss():
    model, x, y = linear_problem()
    least = torch.linalg.lstsq(x, y).solution
    floor = nn.functional.mse_loss(x @ least, y).item()
    target = 0.5 * (nn.functional.mse_loss(model(x), y).item() + floor)
    s = suggest_hyperparameters(model, nn.MSELoss(), x, y, horizon_steps=60, target_loss=target)
    opt = s.optimizer(model.parameters())
    assert isinstance(opt, CosmoSGD)
    actual = []
    for _ in range(61):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        actual.append(loss.item())
        loss.backward()
        opt.step()
    predicted = s.predict_loss(range(61))
    np.testing.assert_allclose(predicted, actual, rtol=1e-6, atol=1e-12)
    assert s.predict_loss(0) == pytest.approx(s.initial_loss)
    assert s.predicted_steps == int(np.flatnonzero(np.asarray(actual) <= s.target_loss)[0])


def test_predict_loss_extends_beyond_the_horizon_and_rejects_negative_steps():
    model, x, y = linear_problem()
    s = suggest_hyperparameters(model, nn.MSELoss(), x, y, horizon_steps=10)
    assert s.predict_loss(30) <= s.predict_loss(10)
    assert s.predict_loss([0, 5]).shape == (2,)
    with pytest.raises(ValueError, match="Invalid steps: -1"):
        s.predict_loss(-1)


def per_sample_gradients(model, x, y):
    grads = []
    for i in range(x.shape[0]):
        model.zero_grad()
        nn.functional.mse_loss(model(x[i : i + 1]), y[i : i + 1]).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone())
    return torch.stack(grads)


def test_the_kernel_reads_the_gradient_noise_at_the_end_of_the_trial():
    """A linear model's kernel never moves, so the noise after the trial is the noise at its
    end point: ν = tr Σ/L from autograd per-sample gradients there (independent of the kernel)."""
    model, x, y = linear_problem()
    full = suggest_hyperparameters(model, nn.MSELoss(), x, y, horizon_steps=100, safety=1.0)
    assert full.lr_batch_factor == 1.0 and full.batch_trials == ()
    assert math.isnan(full.batch_noise_per_loss)
    end = nn.Linear(5, 1, bias=False).double()  # the trial's end point: same plan, same steps
    end.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(end.parameters(), lr=full.lr, momentum=full.momentum)
    for _ in range(full.margin_trials[0][2]):
        opt.zero_grad()
        nn.functional.mse_loss(end(x), y).backward()
        opt.step()
    g = per_sample_gradients(end, x, y)
    loss = nn.functional.mse_loss(end(x), y).item()
    nu = float((g - g.mean(0)).pow(2).sum(1).mean()) / loss
    assert full.noise_per_loss == pytest.approx(nu, rel=1e-6)


def steps_to_target(model, x, y, lr, momentum, batch, target, seed, budget=400):
    """Independent reference: torch SGD on batches drawn without replacement (numpy's
    shuffles, not the trials'), the full loss after every step; steps until it is ≤ target."""
    net = nn.Linear(x.shape[1], 1, bias=False).double()
    net.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    rng = np.random.default_rng(seed)
    order = []
    for step in range(1, budget + 1):
        if len(order) < batch:
            order = list(rng.permutation(len(x)))
        idx, order = order[:batch], order[batch:]
        opt.zero_grad()
        nn.functional.mse_loss(net(x[idx]), y[idx]).backward()
        opt.step()
        if nn.functional.mse_loss(net(x), y).item() <= target:
            return step
    return math.inf


def test_mini_batches_get_the_lr_of_the_fastest_mini_batch_trial_and_a3_carries_it_over():
    """The mini-batch trials run at the reference batch whatever batch size is asked about; at
    the reference batch the lr is the fastest trial's (β kept), which trains about as fast as
    the best of the ladder on other shuffles; at other batch sizes (A3) with the measured ν:
    η_B/η = 1/(1 + c(B)/c(B_ref) (1/f − 1))."""
    model, x, _ = linear_problem(n=160)
    n = len(x)
    g = torch.Generator().manual_seed(1)
    y = x @ torch.randn(5, 1, generator=g, dtype=torch.float64)
    y += 3.0 * torch.randn(n, 1, generator=g, dtype=torch.float64)  # noisy labels
    floor = nn.functional.mse_loss(x @ torch.linalg.lstsq(x, y).solution, y).item()
    start = nn.functional.mse_loss(model(x), y).item()
    target = floor + 0.002 * (start - floor)  # reachable, near the floor of the noise
    kwargs = dict(horizon_steps=300, safety=1.0, target_loss=target)
    full = suggest_hyperparameters(model, nn.MSELoss(), x, y, **kwargs)
    ref = suggest_hyperparameters(model, nn.MSELoss(), x, y, batch_size=32, **kwargs)
    factors = [f for f, _, _ in ref.batch_trials]
    assert factors == [0.5**k for k in range(len(factors))] and ref.lr_batch_factor < 1
    assert ref.lr_batch_factor in factors and ref.momentum == full.momentum
    assert ref.lr == pytest.approx(full.lr * ref.lr_batch_factor, rel=1e-12)
    true = {f: np.mean([steps_to_target(model, x, y, full.lr * f, full.momentum, 32, target, s)
                        for s in range(4)]) for f in factors}
    assert true[ref.lr_batch_factor] <= 1.5 * min(true.values())
    assert min(true.values()) < true[1.0]  # the full-batch step is too long for the noise
    c = {b: (n - b) / ((n - 1) * b) for b in (32, 8, 100)}
    for b in (8, 100):
        s = suggest_hyperparameters(model, nn.MSELoss(), x, y, batch_size=b, **kwargs)
        assert s.batch_trials == ref.batch_trials  # one measurement, whatever the batch size
        assert s.batch_noise_per_loss == ref.batch_noise_per_loss
        expected = 1.0 / (1.0 + c[b] / c[32] * (1.0 / ref.lr_batch_factor - 1.0))
        assert s.lr_batch_factor == pytest.approx(expected, rel=1e-9)
        assert s.momentum == full.momentum
        assert "reference batch 32" in s.rationale and "noise floor" in s.rationale


def effective_steps(model, loss, x, y, batches, **kwargs):
    out = []
    for batch in batches:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = suggest_hyperparameters(model, loss, x, y, batch_size=batch, **kwargs)
        out.append(s.lr / (1 - s.momentum))
    return out


def test_a_smaller_batch_never_gets_a_larger_effective_step():
    # The issue this answers: the lr fell with the batch but β rose, so η/(1 − β) grew
    # (18.7 → 19.7). Checked on a classifier with a measured margin, from full batch to B = 1.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
    x = torch.randn(48, 4)
    y = torch.randint(0, 3, (48,))
    batches = [None, 48, 47, 32, 24, 12, 4, 1]
    steps = effective_steps(model, nn.CrossEntropyLoss(), x, y, batches, horizon_steps=40)
    assert steps[0] == steps[1]  # B = N is full batch
    assert all(b <= a for a, b in itertools.pairwise(steps[1:]))
    assert steps[-1] < steps[0]


def test_rationale_names_the_modes_the_bound_and_the_measured_margin():
    model, x, y = linear_problem()
    with pytest.warns(UserWarning, match="misses target_loss"):
        s = suggest_hyperparameters(model, nn.MSELoss(), x, y, horizon_steps=50)
    assert isinstance(s, Suggestion)
    assert "Active bound" in s.rationale and "edge of stability" not in s.rationale
    assert "measured by trials" in s.rationale and "(1 + √β)² < 2(1 + β)" in s.rationale
    assert f"{s.lr:.4g}" in s.rationale


def test_quartic_potential_damps_the_mass_at_the_end_of_the_roll():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1))
    x = torch.linspace(-1, 1, 16)[:, None]
    loss = PolynomialPotentialLoss(center=1.0, power=4)
    s = suggest_hyperparameters(model, loss, x, horizon_steps=200, target_loss=0.01)
    # ℓ'' = 12 (f − 1)² falls as the field rolls to the minimum: the masses to damp are
    # those at the end of the roll, below those at initialisation.
    rel = s.relevant_modes
    assert np.all(s.softest_curvatures[rel] < 0.5 * s.curvatures[rel])
    assert s.kappa_min <= max(s.softest_curvatures[rel].min(), s.kappa_max / 4)
    assert s.predicted_steps is not None and s.stability_margin < 1


def test_no_trainable_parameters_is_refused():
    model, x, y = linear_problem()
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        suggest_hyperparameters(model, nn.MSELoss(), x, y, horizon_steps=10)


def test_nan_loss_is_refused():
    model, x, y = linear_problem()
    x[3, 0] = float("nan")
    with pytest.raises(ValueError, match="Invalid loss at initialisation: nan"):
        suggest_hyperparameters(model, nn.MSELoss(), x, y, horizon_steps=10)


@pytest.mark.parametrize("horizon", [0, -5, 2.5, None])
def test_horizon_must_be_a_positive_integer(horizon):
    model, x, y = linear_problem()
    with pytest.raises(ValueError, match=f"Invalid horizon_steps: {horizon!r}; it must be an integer ≥ 1"):
        suggest_hyperparameters(model, nn.MSELoss(), x, y, horizon_steps=horizon)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "Invalid batch_size: 0"),
        ({"residual_fraction": 0.0}, r"Invalid residual_fraction: 0.0; it must be in \(0, 1\]"),
        ({"safety": 1.5}, r"Invalid safety: 1.5; it must be in \(0, 1\]"),
        ({"target_loss": float("inf")}, "Invalid target_loss: inf"),
        ({"probe_size": 0}, "Invalid probe_size: 0"),
    ],
)
def test_other_bad_arguments_name_the_value_and_the_constraint(kwargs, message):
    model, x, y = linear_problem()
    with pytest.raises(ValueError, match=message):
        suggest_hyperparameters(model, nn.MSELoss(), x, y, horizon_steps=10, **kwargs)


def test_targets_already_reached_are_refused():
    model, x, _ = linear_problem()
    with pytest.raises(ValueError, match=r"residual .* is zero"):
        suggest_hyperparameters(model, nn.MSELoss(), x, model(x).detach(), horizon_steps=10)


def test_a_linear_model_is_predictable_and_says_so():
    model, x, _ = linear_problem()
    y = x @ torch.tensor([[1.0], [-1.0], [0.5], [2.0], [0.0]], dtype=torch.float64)  # realisable
    s = suggest_hyperparameters(model, nn.MSELoss(), x, y, horizon_steps=400)
    assert s.predictable and s.predicted_steps is not None
    assert "trial agreed" in s.rationale


def test_a_kernel_that_moves_is_reported_as_unpredictable():
    # A narrow tanh net pushed far (targets 30× its outputs' scale) with the plan at the edge
    # (safety 1): its kernel moves within the trial, so no time to target is printed.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1))
    x = torch.linspace(-2, 2, 16)[:, None]
    y = 3.0 * torch.sign(x)
    s = suggest_hyperparameters(model, nn.MSELoss(), x, y, horizon_steps=2000, safety=1.0,
                                target_loss=1e-3)
    assert not s.predictable and s.predicted_steps is None
    assert "cannot predict the time to target" in s.rationale


def test_the_users_model_buffers_grads_modes_and_rng_are_bitwise_untouched():
    import random

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.2), nn.Linear(8, 1))
    model.train()
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    nn.functional.mse_loss(model(x), y).backward()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    rng = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())  # noqa: NPY002
    suggest_hyperparameters(model, nn.MSELoss(), x, y, horizon_steps=100)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters(), strict=True))
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(rng[0], torch.get_rng_state())
    assert np.array_equal(rng[1], np.random.get_state()[1]) and rng[2] == random.getstate()  # noqa: NPY002


def test_suggestion_is_frozen_and_builds_its_optimizer_through_cosmosgd_from_suggestion():
    import dataclasses

    model, x, y = linear_problem()
    s = suggest_hyperparameters(model, nn.MSELoss(), x, y, horizon_steps=50)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.rationale = "changed"  # type: ignore[misc]
    a = s.optimizer(model.parameters())
    b = CosmoSGD.from_suggestion(model.parameters(), s)
    assert a.param_groups[0]["lr"] == b.param_groups[0]["lr"] == s.lr
    assert a.param_groups[0]["momentum"] == b.param_groups[0]["momentum"] == s.momentum


def test_the_relevant_modes_carry_the_share_of_the_loss_that_must_go_to_reach_the_target():
    # Unstandardised inputs: one direction holds almost all of the loss. To reach 1e-3 of the
    # initial loss the modes carrying 99.9 % of it must move, not just the top one (which alone
    # carries residual_fraction = 0.9 and would set β = 0). Independent reference: the shares
    # (u_kᵀ y)²/|y|² in the eigenbasis of the linear model's kernel X Xᵀ.
    g = torch.Generator().manual_seed(5)
    x = torch.randn(30, 3, generator=g, dtype=torch.float64) * torch.tensor([100.0, 1.0, 0.3], dtype=torch.float64)
    y = x @ torch.tensor([[0.05], [1.0], [1.0]], dtype=torch.float64)
    model = nn.Linear(3, 1, bias=False).double()
    with torch.no_grad():
        model.weight.zero_()
    _, u = torch.linalg.eigh(x @ x.T)
    share = ((u.T @ y).pow(2).reshape(-1) / y.pow(2).sum()).flip(0).numpy()  # descending λ
    initial = float(y.pow(2).mean())
    loose = suggest_hyperparameters(model, nn.MSELoss(), x, y, horizon_steps=500,
                                    target_loss=0.5 * initial, safety=1.0)
    tight = suggest_hyperparameters(model, nn.MSELoss(), x, y, horizon_steps=500,
                                    target_loss=1e-3 * initial, safety=1.0)
    assert share[loose.relevant_modes].sum() >= 0.9 and len(loose.relevant_modes) == 1
    assert share[tight.relevant_modes].sum() >= 0.999 and tight.momentum > 0.5


class _Keyword(nn.Module):
    """A model called as model(x=..., scale=...), as Hugging Face models take a batch; `scale`
    is shared by every sample (a 0-d tensor)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))

    def forward(self, x, scale):
        return self.net(x) * scale


class _Plain(nn.Module):
    """The same network called on a plain tensor."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner.net(x) * 2.0


@pytest.mark.parametrize("batch_size", [None, 8])
def test_inputs_as_the_model_takes_them_give_the_suggestion_of_the_same_network_on_a_tensor(
        batch_size):
    """#30 item 2: a dict (keyword arguments), a tuple (positional ones) and a ModelInputs
    give what the same network called on a plain tensor gets: the probe, the ladder of trials
    and, with mini-batches, the batch trials index the samples and pass `scale` as it is."""
    from cosmo_optim.ntk import ModelInputs

    torch.manual_seed(3)
    model = _Keyword().double()
    x = torch.randn(40, 4, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    scale = torch.tensor(2.0, dtype=torch.float64)
    kwargs = {"horizon_steps": 60, "batch_size": batch_size}
    plain = suggest_hyperparameters(_Plain(model), nn.CrossEntropyLoss(), x, y, **kwargs)
    ways = [{"x": x, "scale": scale}, (x, scale), ModelInputs((x,), {"scale": scale})]
    for inputs in ways if batch_size is None else ways[:1]:  # one way through the batches
        s = suggest_hyperparameters(model, nn.CrossEntropyLoss(), inputs, y, **kwargs)
        assert s.lr == pytest.approx(plain.lr, rel=1e-9)
        assert s.momentum == pytest.approx(plain.momentum, rel=1e-9)
        assert s.margin_trials == plain.margin_trials
        assert s.batch_trials == plain.batch_trials
        assert s.initial_loss == pytest.approx(plain.initial_loss, rel=1e-12)
    if batch_size is not None:
        assert plain.batch_trials  # the mini-batch trials ran, on the indexed batches


def test_inputs_the_model_cannot_take_or_outputs_it_does_not_return_are_named():
    class Dict(nn.Module):  # returns a dict, as Hugging Face models do
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 1)

        def forward(self, x):
            return {"logits": self.lin(x)}

    x, y = torch.randn(6, 3), torch.randn(6, 1)
    with pytest.raises(ValueError, match=r"Invalid model outputs: dict.*Fix: wrap the model"):
        suggest_hyperparameters(Dict(), nn.MSELoss(), x, y, horizon_steps=10)
    with pytest.raises(ValueError, match=r"Invalid inputs: a list.*Fix: pass a tuple"):
        suggest_hyperparameters(nn.Linear(3, 1), nn.MSELoss(), [x, x], y, horizon_steps=10)
    with pytest.raises(ValueError, match=r"Mismatched shapes: 6 input samples .* targets \(5, 1\)"):
        suggest_hyperparameters(nn.Linear(3, 1), nn.MSELoss(), x, y[:5], horizon_steps=10)
    with pytest.raises(ValueError, match=r"Invalid inputs: argument 0 has shape \(0, 3\)"):
        suggest_hyperparameters(nn.Linear(3, 1), nn.MSELoss(), x[:0], y[:0], horizon_steps=10)

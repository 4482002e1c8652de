"""check_duality end to end: isolation, exactness on linear models, verdicts, errors and the
paper's homogeneous scan (T4–T10, paper Fig. 3)."""

import itertools
import json
import math
import random

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from cosmo_optim import Cosmology, PolynomialPotentialLoss, check_duality

D = torch.float64


class NTKLinear(nn.Module):
    """Dense layer in NTK parametrisation: σ_w W x/sqrt(fan_in) + σ_b b, W, b ~ N(0, 1)."""

    def __init__(self, fan_in, fan_out, sw, sb=0.1):
        super().__init__()
        self.w, self.b = nn.Parameter(torch.randn(fan_out, fan_in)), nn.Parameter(torch.randn(fan_out))
        self.scale, self.sb = sw / math.sqrt(fan_in), sb

    def forward(self, x):
        return x @ self.w.T * self.scale + self.sb * self.b


class Erf(nn.Module):
    def forward(self, x):
        return torch.erf(x)


def mlp(width, act, sw, inputs=1, outputs=1):
    a = nn.ReLU if act == "relu" else Erf
    return nn.Sequential(NTKLinear(inputs, width, sw), a(), NTKLinear(width, width, sw), a(), NTKLinear(width, outputs, sw))


def snapshot(model):
    """Everything a user owns: parameters, buffers, grads, mode flags and every RNG state."""
    return {
        "state": {k: v.clone() for k, v in model.state_dict(keep_vars=False).items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "modes": [m.training for m in model.modules()],
        "torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].copy(),  # noqa: NPY002
        "python": random.getstate(),
    }


def assert_same(a, b):
    assert a["state"].keys() == b["state"].keys()
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    assert all((x is None and y is None) or torch.equal(x, y) for x, y in zip(a["grads"], b["grads"], strict=True))
    assert a["modes"] == b["modes"]
    assert torch.equal(a["torch"], b["torch"])
    assert np.array_equal(a["numpy"], b["numpy"]) and a["python"] == b["python"]


def test_the_users_model_buffers_grads_modes_and_rng_are_bitwise_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Dropout(0.1), nn.Linear(16, 1))
    model.train()
    model[1].eval()  # mixed flags must survive as they are
    model(torch.randn(8, 1)).sum().backward()  # the user has gradients lying around
    before = snapshot(model)
    check_duality(model, PolynomialPotentialLoss(1.0, 2), torch.linspace(-1, 1, 4)[:, None],
                  cosmology=Cosmology(0.01, 0.5), steps=20, progress=False)
    assert_same(before, snapshot(model))


def test_a_linear_model_follows_the_discrete_map_exactly_and_passes():
    torch.manual_seed(1)
    model = nn.Linear(3, 1)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    report = check_duality(model, nn.MSELoss(), x, y, cosmology=Cosmology(0.001, 0.5), steps=200,
                           dtype=D, progress=False)
    assert report.deviations["mean_field_end_discrete"] < 1e-10
    assert report.deviations["outputs_end_discrete"] < 1e-10
    assert report.ntk_drift.max() < 1e-12
    assert report.passed, report.reasons
    assert report.deviations["mean_field_end"] < 1e-2  # continuum error O(η κ)


def test_multi_output_report_dict_markdown_and_figures():
    torch.manual_seed(2)
    model = mlp(32, "erf", 1.5, inputs=2, outputs=3)
    x, y = torch.randn(5, 2), torch.tensor([0, 1, 2, 1, 0])
    report = check_duality(model, nn.CrossEntropyLoss(), x, y, cosmology=Cosmology(0.01, 0.5), steps=30,
                           probe_every=10, progress=False)
    assert report.dual.eigenvectors.shape[0] == 15
    assert list(report.probe_steps) == [0, 10, 20, 30]
    json.dumps(report.to_dict())
    md = report.to_markdown()
    assert "FLRW duality check" in md and "α_eff" in md
    figs = report.plot()
    assert set(figs) == {"modes", "spectrum"}  # no 1-D potential for 3 outputs
    assert all(isinstance(f, Figure) for f in figs.values())


def test_the_headline_follows_the_dynamics_and_the_background_is_reported_apart():
    # A linear model on one input, Ω_φ ≈ 1.2 ≫ 0.1: the output follows its field equation
    # exactly (a constant kernel), so the dynamics hold while the background is not de Sitter.
    model = nn.Linear(1, 1).double()
    nn.init.zeros_(model.weight), nn.init.zeros_(model.bias)
    heavy = check_duality(model, PolynomialPotentialLoss(10.0, 2), torch.ones(1, 1, dtype=D),
                          cosmology=Cosmology(0.002, 0.0), steps=300, progress=False)
    assert heavy.deviations["outputs_max"] <= 0.05
    assert heavy.passed and heavy.reasons == []
    bg = heavy.background
    assert not bg.vacuum_dominated and bg.omega_max > 1
    # Ω_φ at rest at the start, from its definition (T6): α ℓ(φ̄)/Λ with α = x² + 1 = 2, ℓ = (0 − 10)².
    assert heavy.dual.alpha_eff == pytest.approx(2.0)
    assert bg.omega_start == pytest.approx(2.0 * 100.0 / heavy.cosmology.vacuum_energy)
    # The lr that would keep Ω_φ ≤ 0.1 at rest: Ω_φ ∝ 1/Λ ∝ η at fixed β.
    assert bg.max_learning_rate == pytest.approx(0.002 * 0.1 / bg.omega_start)
    d = heavy.to_dict()
    assert d["background"] == bg.to_dict() and d["background"]["vacuum_dominated"] is False
    md = heavy.to_markdown()
    assert md.startswith("## FLRW duality check: holds")
    assert "background: not vacuum dominated" in md
    # A narrow network on spread inputs leaves the lazy regime and misses its prediction:
    # the failure names the deviation first, the kernel's move as its likely cause.
    narrow = check_duality(mlp(4, "erf", 2.0), PolynomialPotentialLoss(2.0, 2), torch.linspace(-2, 2, 6)[:, None],
                           cosmology=Cosmology(0.002, 0.5), steps=200, progress=False)
    assert not narrow.passed
    assert narrow.reasons[0].startswith(("the mean field ended", "the output vector strayed")), narrow.reasons
    assert any(r.startswith("likely cause: the kernel moved") for r in narrow.reasons), narrow.reasons
    assert narrow.to_markdown().startswith("## FLRW duality check: does not hold")


def test_a_prediction_that_strays_mid_run_fails_though_both_end_at_the_minimum():
    """Training and prediction both converge to the loss's minimum, so the end agrees to 1e-7;
    on the way the narrow erf network's kernel moves 36 % and its outputs stray 18 % from the
    prediction: the dynamics do not follow the dual, and the report says why."""
    torch.manual_seed(3)
    report = check_duality(mlp(8, "erf", 2.0), PolynomialPotentialLoss(3.0, 2), torch.ones(1, 1),
                           cosmology=Cosmology(0.02, 0.0), steps=100, progress=False)
    assert report.deviations["outputs_end"] < 1e-4 < 0.05 < report.deviations["outputs_max"]
    assert not report.passed
    assert report.reasons[0].startswith("the output vector strayed up to")
    assert report.causes[0].name == "kernel moved" and report.kernel_change.max() > 0.3


def test_a_vacuum_dominated_run_says_so():
    torch.manual_seed(1)
    model = nn.Linear(3, 1).double()
    x, y = torch.randn(8, 3, dtype=D), torch.randn(8, 1, dtype=D)
    report = check_duality(model, nn.MSELoss(), x, y, cosmology=Cosmology(1e-5, 0.0), steps=50,
                           progress=False)
    assert report.background.vacuum_dominated and report.background.omega_max <= 0.1
    assert "background: vacuum dominated" in report.to_markdown()


def test_divergence_is_a_result_not_an_error():
    model, x = nn.Linear(2, 1), 30 * torch.randn(4, 2)
    report = check_duality(model, nn.MSELoss(), x, torch.zeros(4, 1), cosmology=Cosmology(1.0, 0.9),
                           steps=300, progress=False)
    assert not report.passed and report.diverged_at is not None
    assert report.reasons[0].startswith(f"training diverged: NaN or inf outputs at step {report.diverged_at}")
    # beyond the edge from the start: that is the cause, not a kernel that never got measured
    assert report.causes[0].name == "edge of stability" and report.dual.stability_margin > 1
    assert any(r.startswith("likely cause: steps beyond the edge of stability at the start") for r in report.reasons)
    assert not any("kernel moved" in r for r in report.reasons)
    assert report.steps_trained == report.diverged_at - 1
    assert np.isfinite(report.actual_outputs).all()
    json.dumps(report.to_dict())
    report.to_markdown()


def test_verify_ntk_checks_the_first_kernel_only(monkeypatch):
    import cosmo_optim.ntk as ntk_module

    calls = []
    real = ntk_module.empirical_ntk

    def spy(*args, **kwargs):
        calls.append(kwargs.get("verify", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(ntk_module, "empirical_ntk", spy)
    check_duality(nn.Linear(2, 1).double(), nn.MSELoss(), torch.randn(4, 2, dtype=D), torch.zeros(4, 1, dtype=D),
                  cosmology=Cosmology(0.01, 0.5), steps=4, probe_every=2, progress=False, verify_ntk=True)
    assert calls == [True, False, False]


def test_bad_input_gives_clear_errors():
    model, loss = nn.Linear(2, 1), nn.MSELoss()
    x = torch.randn(4, 2)
    c = Cosmology(0.01, 0.5)
    with pytest.raises(ValueError, match=r"Mismatched shapes: 4 input samples \(inputs \(4, 2\)\) and targets \(3, 1\)"):
        check_duality(model, loss, x, torch.zeros(3, 1), cosmology=c, steps=5, progress=False)
    with pytest.raises(ValueError, match=r"Invalid lr: -0\.01"):
        check_duality(model, loss, x, torch.zeros(4, 1), cosmology=Cosmology(-0.01, 0.5), steps=5)
    with pytest.raises(ValueError, match="NaN or inf"):
        check_duality(model, loss, x * math.nan, torch.zeros(4, 1), cosmology=c, steps=5, progress=False)
    with pytest.raises(ValueError, match=r"Invalid targets: 1 of 4 values are NaN or inf"):
        check_duality(model, loss, x, torch.tensor([[0.0], [math.nan], [0.0], [0.0]]), cosmology=c, steps=5,
                      progress=False)
    with pytest.raises(ValueError, match=r"Invalid inputs: shape \(0, 2\) holds no samples"):
        check_duality(model, loss, x[:0], torch.zeros(0, 1), cosmology=c, steps=5, progress=False)
    with pytest.raises(ValueError, match="Invalid verify_ntk=True with a custom ntk"):
        check_duality(model, loss, x, torch.zeros(4, 1), cosmology=c, steps=5, progress=False,
                      ntk=lambda m, i: torch.eye(4), verify_ntk=True)
    with pytest.raises(ValueError, match="Invalid steps"):
        check_duality(model, loss, x, torch.zeros(4, 1), cosmology=c, steps=0)


# The paper's homogeneous scan (§3, Fig. 3): one input x0 = 0.5, 2 hidden layers in NTK
# parametrisation (σ_b = 0.1), ℓ = (f − c)^p / p with the minimum c one unit above the initial
# output, 1500 steps, pairs (η, β) of equal effective learning rate η/(1 − β) = 0.01.
PAIRS = [(1e-2, 0.0), (5e-3, 0.5), (1e-3, 0.9)]
# A cover of the paper's 72-point grid in 24 runs (the full grid took 4 min of CI): every
# power × activation × width × σ_w, each (η, β) pair with every σ_w, 8 runs per pair.
GRID = list(itertools.product([2, 4], ["relu", "erf"], [128, 512], [1.5, 2.0, 2.5]))
COVER = [(*cfg, PAIRS[(i + i // 3) % 3]) for i, cfg in enumerate(GRID)]
REDUCED = [(2, "relu", 128, 2.0, PAIRS[1]), (4, "erf", 128, 1.5, PAIRS[2]), (4, "relu", 512, 2.5, PAIRS[0]),
           (2, "erf", 512, 2.5, PAIRS[2])]


def homogeneous_deviation(power, act, width, sw, pair, steps=1500):
    torch.manual_seed(0)
    model = mlp(width, act, sw).to(D)
    x = torch.full((1, 1), 0.5, dtype=D)
    center = model(x).item() + 1.0
    report = check_duality(model, PolynomialPotentialLoss(center, power, 1.0 / power), x,
                           cosmology=Cosmology(*pair), steps=steps, probe_every=steps, dtype=D, progress=False)
    return report.deviations["mean_field_end"]


def check_scan(configs):
    devs = np.array([homogeneous_deviation(*cfg) for cfg in configs])
    assert np.median(devs) <= 1e-3, devs
    assert devs.max() <= 6e-2, devs
    return devs


def test_homogeneous_scan_reduced():
    check_scan(REDUCED)


@pytest.mark.slow
def test_homogeneous_scan_cover():
    devs = check_scan(COVER)
    print(f"scan of {len(devs)}: median {np.median(devs):.3g}, max {devs.max():.3g}")


def test_large_steps_on_a_linear_model_fail_the_continuum_and_name_it():
    """A linear model follows the exact discrete map (T10) to rounding at any lr; with steps of
    η κ ≈ 1 the continuum ODE misses, and the report names that as the cause (not the kernel,
    which cannot move)."""
    torch.manual_seed(1)
    model = nn.Linear(3, 1).double()
    x, y = torch.randn(8, 3, dtype=D), torch.randn(8, 1, dtype=D)
    report = check_duality(model, nn.MSELoss(), x, y, cosmology=Cosmology(0.5, 0.5), steps=10,
                           dtype=D, progress=False)
    assert report.deviations["outputs_end_discrete"] < 1e-10
    assert not report.passed
    assert report.causes[0].name == "discrete against continuum"
    assert report.reasons[-1].startswith("likely cause: discrete against continuum")
    assert report.kernel_change.max() < 1e-12


def test_the_kernel_change_sees_a_turn_the_kernel_distance_hides():
    """1 − cos is quadratic in the angle: a kernel turned by 0.14 rad is 1 % away in kernel
    distance but 14 % away in relative change (T4)."""
    from cosmo_optim.spectrum import kernel_change, kernel_distance

    k0 = torch.diag(torch.tensor([1.0, 0.0], dtype=D))
    c, s = math.cos(0.14), math.sin(0.14)
    rot = torch.tensor([[c, -s], [s, c]], dtype=D)
    k1 = rot @ k0 @ rot.T
    assert float(kernel_distance(k0, k1)) == pytest.approx(1 - c * c, rel=1e-9)  # ≈ 0.0195
    assert float(kernel_change(k0, k1)) == pytest.approx(math.sqrt(2) * s, rel=1e-9)  # ≈ 0.197


def test_a_model_in_train_mode_with_batchnorm_trains_its_copy_in_eval_mode_and_says_so():
    """The kernel and the prediction are of the eval-mode network; training the copy with
    batch statistics would compare another function with them (it read 'kernel moved 265 %')."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(2, 64), nn.BatchNorm1d(64), nn.Tanh(), nn.Linear(64, 1)).double()
    model.train()
    x, y = torch.randn(16, 2, dtype=D), torch.randn(16, 1, dtype=D)
    trained = check_duality(model, nn.MSELoss(), x, y, cosmology=Cosmology(1e-3, 0.9), steps=100,
                            progress=False)
    assert model.training and model[1].training  # the user's flags untouched
    model.eval()
    evaluated = check_duality(model, nn.MSELoss(), x, y, cosmology=Cosmology(1e-3, 0.9), steps=100,
                              progress=False)
    np.testing.assert_array_equal(trained.actual_outputs, evaluated.actual_outputs)
    assert any("trained in eval mode" in n and "BatchNorm1d" in n for n in trained.notes)
    assert not any("trained in eval mode" in n for n in evaluated.notes)


def test_keyword_inputs_as_a_hugging_face_model_takes_them_give_the_same_report():
    """A model called as model(x=..., scale=...) with a shared scalar argument: the batch as a
    dict trains and predicts exactly as the same network called on a tensor (#30's inputs)."""
    class Keyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))

        def forward(self, x, scale):
            return self.net(x) * scale

    torch.manual_seed(5)
    model = Keyword().double()
    x, y = torch.randn(6, 3, dtype=D), torch.randn(6, 1, dtype=D)
    kw = check_duality(model, nn.MSELoss(), {"x": x, "scale": torch.tensor(2.0, dtype=D)}, y,
                       cosmology=Cosmology(1e-3, 0.9), steps=40, progress=False)

    class Plain(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner.net(x) * 2.0

    plain = check_duality(Plain(model), nn.MSELoss(), x, y, cosmology=Cosmology(1e-3, 0.9),
                          steps=40, progress=False)
    np.testing.assert_allclose(kw.actual_outputs, plain.actual_outputs, rtol=1e-12, atol=1e-14)
    assert kw.deviations["outputs_end"] == pytest.approx(plain.deviations["outputs_end"], rel=1e-9)
    with pytest.raises(ValueError, match=r"Invalid model outputs: dict.*Fix: wrap the model"):
        check_duality(_Dict(), nn.MSELoss(), x, y, cosmology=Cosmology(1e-3, 0.9), steps=2,
                      progress=False)


class _Dict(nn.Module):
    """A model returning a dict (as Hugging Face models do) instead of the outputs."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 1).double()

    def forward(self, x):
        return {"logits": self.lin(x)}

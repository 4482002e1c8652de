"""check_duality end to end: isolation, exactness on linear models, verdicts, errors and the
paper's homogeneous scan (T4–T10, paper Fig. 3)."""

import itertools
import json
import math

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


def test_the_users_model_and_rng_are_untouched():
    torch.manual_seed(0)
    model = mlp(16, "erf", 1.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    check_duality(model, PolynomialPotentialLoss(1.0, 2), torch.linspace(-1, 1, 4)[:, None],
                  cosmology=Cosmology(0.01, 0.5), steps=20, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


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


def test_verdict_names_the_reasons():
    torch.manual_seed(3)
    heavy = check_duality(mlp(8, "erf", 2.0), PolynomialPotentialLoss(3.0, 2), torch.ones(1, 1),
                          cosmology=Cosmology(0.02, 0.0), steps=100, progress=False)
    assert not heavy.passed
    assert any("Ω_φ reached" in r and "not vacuum dominated" in r for r in heavy.reasons)
    assert any("α_eff changed" in r and "lazy regime" in r for r in heavy.reasons)
    narrow = check_duality(mlp(4, "erf", 2.0), PolynomialPotentialLoss(2.0, 2), torch.linspace(-2, 2, 6)[:, None],
                           cosmology=Cosmology(0.002, 0.5), steps=200, progress=False)
    assert any("NTK drifted" in r and "lazy regime" in r for r in narrow.reasons), narrow.reasons


def test_bad_input_gives_clear_errors():
    model, loss = nn.Linear(2, 1), nn.MSELoss()
    x = torch.randn(4, 2)
    c = Cosmology(0.01, 0.5)
    with pytest.raises(ValueError, match=r"Mismatched shapes: inputs \(4, 2\) and targets \(3, 1\)"):
        check_duality(model, loss, x, torch.zeros(3, 1), cosmology=c, steps=5, progress=False)
    with pytest.raises(ValueError, match=r"Invalid lr: -0\.01"):
        check_duality(model, loss, x, torch.zeros(4, 1), cosmology=Cosmology(-0.01, 0.5), steps=5)
    with pytest.raises(ValueError, match="NaN or inf"):
        check_duality(model, loss, x * math.nan, torch.zeros(4, 1), cosmology=c, steps=5, progress=False)
    with pytest.raises(ValueError, match="Training diverged"):
        check_duality(model, loss, 30 * x, torch.zeros(4, 1), cosmology=Cosmology(1.0, 0.9), steps=300,
                      progress=False)
    with pytest.raises(ValueError, match="Invalid steps"):
        check_duality(model, loss, x, torch.zeros(4, 1), cosmology=c, steps=0)


# The paper's homogeneous scan (§3, Fig. 3): one input x0 = 0.5, 2 hidden layers in NTK
# parametrisation (σ_b = 0.1), ℓ = (f − c)^p / p with the minimum c one unit above the initial
# output, 1500 steps, pairs (η, β) of equal effective learning rate η/(1 − β) = 0.01.
PAIRS = [(1e-2, 0.0), (5e-3, 0.5), (1e-3, 0.9)]
FULL = list(itertools.product([2, 4], ["relu", "erf"], [128, 512], [1.5, 2.0, 2.5], PAIRS))
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
def test_homogeneous_scan_full():
    devs = check_scan(FULL)
    print(f"scan of {len(devs)}: median {np.median(devs):.3g}, max {devs.max():.3g}")

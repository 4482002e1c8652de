"""One probe as a pure function, without any trainer or tracker (closed forms of a linear model)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from cosmo_optim import Cosmology
from cosmo_optim.monitor import MonitorConfig, Reading
from cosmo_optim.monitor.reading import RunSoFar, measure, take_reading


def linear_problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    y = torch.randn(6, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(3, 1).double()
    return model, x, y


def test_linear_model_probe_matches_its_exact_kernel_and_the_cosmology():
    model, x, y = linear_problem()
    kernel = x @ x.T + 1.0  # NTK of f = w·x + b
    cosmology = Cosmology(0.01, 0.9)
    result = take_reading(model, x, y, config=MonitorConfig(nn.MSELoss(), top_k=2, every_n_steps=5),
                   cosmology=cosmology, run=RunSoFar(step=0))
    lam = torch.linalg.eigvalsh(kernel).flip(0)
    s = result.scalars
    assert s["ntk/lambda_1"] == pytest.approx(float(lam[0]), rel=1e-12)
    assert s["ntk/ratio_2"] == pytest.approx(float(lam[1] / lam[0]), rel=1e-10)
    assert s["cosmology/alpha_eff"] == pytest.approx(float(lam[0]) / 6, rel=1e-12)
    assert s["cosmology/hubble_rate"] == cosmology.hubble_rate
    # the first reading is its own reference: exactly 0 (no log10 view of 1 − cosine's rounding)
    assert s["ntk/kernel_distance"] == 0.0 and s["ntk/basis_rotation"] == 0.0
    assert isinstance(result.record, Reading) and result.record.step == 0
    assert result.record["scalars"] is result.record.scalars  # the dict form of earlier versions
    assert result.last is not None and result.last.prediction is not None  # the T10 map ran
    assert result.dual is not None and result.dual.hubble_rate == cosmology.hubble_rate


def test_without_a_cosmology_only_spectrum_and_modes_are_read():
    model, x, y = linear_problem()
    result = take_reading(model, x, y, config=MonitorConfig(nn.MSELoss(), top_k=2, every_n_steps=5),
                   cosmology=None, run=RunSoFar(step=0))
    assert "cosmology/hubble_rate" not in result.scalars and result.dual is None
    assert "modes/amplitude_2" in result.scalars


def test_nonfinite_outputs_are_skipped_and_counted():
    model, x, y = linear_problem()
    x[0, 0] = float("nan")
    result = take_reading(model, x, y, config=MonitorConfig(top_k=2, every_n_steps=5), cosmology=None,
                   run=RunSoFar(step=3, nonfinite=2))
    assert result.scalars == {"cosmology/nonfinite": 3.0}
    assert result.record is None and result.last is None


def test_measuring_leaves_buffers_modes_and_every_random_state_untouched():
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 1))
    model.train()
    x = torch.randn(5, 3)
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    np_state = np.random.get_state()[1].copy()  # noqa: NPY002
    states = torch.get_rng_state(), np_state, random.getstate()
    measure(model, x)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in buffers.items())
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1])  # noqa: NPY002
    assert random.getstate() == states[2]


def test_verify_ntk_checks_the_first_probe_only(monkeypatch):
    """verify_ntk=True asks empirical_ntk for its self-check on the first probe, never later."""
    import torch
    from torch import nn

    import cosmo_optim.monitor.reading as reading_module
    from cosmo_optim import CosmologyTracker

    calls = []
    real = reading_module.empirical_ntk

    def spy(*args, **kwargs):
        calls.append(kwargs.get("verify", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(reading_module, "empirical_ntk", spy)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    x, y = torch.randn(8, 2), torch.randn(8, 1)
    tracker = CosmologyTracker(model, nn.MSELoss(), probe_batch=(x, y), every_n_steps=1,
                               verify_ntk=True)
    for step in range(3):
        tracker.read(step)
    assert calls == [True, False, False]


def _jacobian_kernel(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """J Jᵀ in float64 by plain autograd, one sample at a time (the reference kernel)."""
    rows = []
    for i in range(len(x)):
        model.zero_grad()
        model(x[i : i + 1]).sum().backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double())
    J = torch.stack(rows)
    return J @ J.T


def test_a_reading_is_float32_inside_the_caller_s_bfloat16_autocast():
    """A plain loop whose optimizer.step() runs inside autocast(bfloat16): the reading there is
    the float32 reading (to float32 rounding), not the bfloat16 one (off by ~1e-3)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 64), nn.Tanh(), nn.Linear(64, 1))
    x, y = torch.randn(12, 6), torch.randn(12, 1)
    config = MonitorConfig(nn.MSELoss(), top_k=2, every_n_steps=5)
    plain = take_reading(model, x, y, config=config, cosmology=None, run=RunSoFar(step=0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = take_reading(model, x, y, config=config, cosmology=None, run=RunSoFar(step=0))
        assert model(x).dtype == torch.bfloat16  # the caller's autocast is on
    lam = float(torch.linalg.eigvalsh(_jacobian_kernel(model, x))[-1])
    assert inside.scalars["ntk/lambda_1"] == pytest.approx(lam, rel=1e-5)
    assert inside.scalars["ntk/lambda_1"] == pytest.approx(plain.scalars["ntk/lambda_1"], rel=1e-6)


def test_a_bfloat16_model_is_read_in_float32_and_left_as_it_was():
    """The kernel of the bfloat16 weights, computed in float32 (a float32 copy of the model),
    against J Jᵀ of the same weights upcast; the model keeps its dtype and values."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 1)).to(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(8, 4)
    m = measure(model, x)
    import copy

    reference = _jacobian_kernel(copy.deepcopy(model).float(), x)
    assert torch.allclose(m.kernel, reference, rtol=1e-5, atol=1e-5 * float(reference.abs().max()))
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())

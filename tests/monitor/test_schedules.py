"""The universe of each step is read from the (lr, momentum) that step used, for any scheduler
(docs/theory.md T3, T9): H_n = (1 − β_n)/(3 sqrt(lr_n)) and e-folds Σ_{m ≤ n} (1 − β_m)/3 over
every step, lr_m = 0 included (H Δt does not depend on lr), computed here by hand from the
values recorded before each step."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler

from cosmo_optim.monitor import CosmologyTracker

STEPS, EVERY = 20, 5


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 3, generator=g, dtype=torch.float64), torch.randn(8, 1, generator=g,
                                                                            dtype=torch.float64)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()


def _two_groups(model, lr=0.1, momentum=0.9):
    first, second = list(model.parameters())[:2], list(model.parameters())[2:]
    return torch.optim.SGD([{"params": first}, {"params": second}], lr=lr, momentum=momentum)


def _linear_to_zero(opt):  # transformers' default: warm-up 3 steps, then linear decay to 0
    return lr_scheduler.LambdaLR(
        opt, lambda n: n / 3 if n < 3 else max(0.0, (STEPS - n) / (STEPS - 3)))


SCHEDULES = {
    "warmup_from_0": lambda opt: lr_scheduler.LambdaLR(opt, lambda n: min(1.0, n / 10)),
    "linear_decay_to_0": _linear_to_zero,
    "cyclic_lr_and_momentum": lambda opt: lr_scheduler.CyclicLR(
        opt, base_lr=0.01, max_lr=0.1, step_size_up=4, base_momentum=0.5, max_momentum=0.9),
    "reduce_on_plateau": lambda opt: lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0),
    "per_group": lambda opt: lr_scheduler.LambdaLR(opt, [lambda n: 1.0, lambda n: 0.9 ** n]),
}


def run(schedule: str, group: int = 0):
    """Train STEPS steps under `schedule`; the (lr, β) each step used, and the tracker."""
    x, y = _data()
    model = _model()
    opt = _two_groups(model) if schedule == "per_group" else torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9)
    sched = SCHEDULES[schedule](opt)
    tracker = CosmologyTracker(model, nn.MSELoss(), probe_batch=(x, y), top_k=1,
                               every_n_steps=EVERY, group=group)
    tracker.attach(opt)
    used = []
    for _ in range(STEPS):
        used.append((opt.param_groups[group]["lr"], opt.param_groups[group]["momentum"]))
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        if isinstance(sched, lr_scheduler.ReduceLROnPlateau):
            sched.step(1.0)  # a plateau: the lr halves after every step
        else:
            sched.step()
    return used, tracker


def by_hand(used, step):
    """H and e-folds at probe `step` from the (lr, β) of steps 1..step (step 0: step 1's)."""
    lr, beta = used[max(step, 1) - 1]
    hubble = None if lr == 0 else (1 - beta) / (3 * math.sqrt(lr))
    efolds = sum((1 - b) / 3 for _, b in used[:step])  # N_e = Σ H Δt, lr = 0 steps too (T9)
    return hubble, efolds


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_hubble_rate_and_efolds_follow_the_lr_each_step_used(schedule):
    group = 1 if schedule == "per_group" else 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        used, tracker = run(schedule, group)
    assert [r.step for r in tracker.history] == list(range(0, STEPS + 1, EVERY))
    for record in tracker.history:
        hubble, efolds = by_hand(used, record.step)
        s = record.scalars
        if hubble is None:
            assert "cosmology/hubble_rate" not in s, record.step
            continue
        assert s["cosmology/hubble_rate"] == pytest.approx(hubble, rel=1e-12), record.step
        assert s["cosmology/vacuum_energy"] == pytest.approx(3 * hubble**2, rel=1e-12)
        assert s["cosmology/efolds"] == pytest.approx(efolds, rel=1e-12, abs=1e-15), record.step
    assert tracker.efolds == pytest.approx(by_hand(used, STEPS)[1], rel=1e-12)


def test_a_warm_up_from_lr_0_warns_once_and_never_sticks():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, tracker = run("warmup_from_0")
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "no de Sitter dual for SGD" in m], messages
    zero = [m for m in messages if "used lr = 0" in m]
    assert len(zero) == 1 and "step 1" in zero[0], messages
    assert tracker.history[-1].scalars["cosmology/efolds"] == pytest.approx(
        STEPS * 0.1 / 3, rel=1e-12)  # step 1 (lr = 0) counts too (T9)


def test_the_issue_s_warm_up_counts_every_step_n_1_minus_beta_over_3_at_step_40(mse_steps):
    """Issue #21: LambdaLR(min(1, n/10)), β = 0.9: N_e = 40 · 0.1/3 = 1.33 at step 40 (T9);
    the lr = 0 of step 1 adds its 0.1/3 like every other step (not 1.30)."""
    x, y = _data()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = lr_scheduler.LambdaLR(opt, lambda n: min(1.0, n / 10))
    tracker = CosmologyTracker(model, nn.MSELoss(), probe_batch=(x, y), top_k=1,
                               every_n_steps=10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker.attach(opt)
        mse_steps(model, opt, x, y, 40, sched)
    assert len([w for w in caught if "used lr = 0" in str(w.message)]) == 1
    assert tracker.history[-1].step == 40
    assert tracker.history[-1].scalars["cosmology/efolds"] == pytest.approx(4 / 3, rel=1e-12)
    assert "cosmology/hubble_rate" not in tracker.history[0].scalars  # step 0: lr_1 = 0


def test_an_lr_0_step_counts_efolds_but_an_optimiser_without_a_dual_counts_none(mse_steps):
    x, y = _data()
    for make, expected in [
        (lambda p: torch.optim.SGD(p, lr=0.0, momentum=0.7), 3 * 0.3 / 3),
        (lambda p: torch.optim.Adam(p, lr=0.0), 0.0),
        (lambda p: torch.optim.SGD(p, lr=0.0, momentum=0.7, nesterov=True), 0.0),
    ]:
        model = _model()
        opt = make(model.parameters())
        tracker = CosmologyTracker(model, nn.MSELoss(), probe_batch=(x, y), top_k=1,
                                   every_n_steps=3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tracker.attach(opt)
            mse_steps(model, opt, x, y, 3)
        assert tracker.efolds == pytest.approx(expected, rel=1e-12), type(opt).__name__
        assert opt.param_groups[0]["lr"] == 0.0  # the user's optimiser is as it was
        assert "cosmology/hubble_rate" not in tracker.history[-1].scalars


def test_a_decay_to_lr_0_keeps_the_last_probe_s_hubble_rate():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        used, tracker = run("linear_decay_to_0")
    assert used[-1][0] > 0  # the last step used lr > 0; the scheduler then set 0
    last = tracker.history[-1]
    assert last.step == STEPS and "cosmology/hubble_rate" in last.scalars

"""The tracker's checkpoint state (`cosmo_optim.monitor.state`): versioned, and never an error
that blocks a resume."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from cosmo_optim.monitor import CosmologyTracker, MonitorConfig
from cosmo_optim.monitor.session import MonitorSession
from cosmo_optim.monitor.state import STATE_VERSION


def tracked(steps: int, state=None):
    """A tracker reading every 3 steps of a full-batch MSE run, resumed from `state` at its
    step if given: (tracker, the warnings of loading the state)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    tracker = CosmologyTracker(model, nn.MSELoss(), probe_batch=(x, y), top_k=2, every_n_steps=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if state is not None:
            tracker.load_state_dict(state)
    tracker.attach(opt)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return tracker, [str(w.message) for w in caught]


def test_a_state_carries_its_version_and_one_without_is_read_as_the_first():
    first, _ = tracked(6)
    state = first.state_dict()
    assert state["version"] == STATE_VERSION == 2
    older = {k: v for k, v in state.items() if k not in ("version", "failed_readings")}
    resumed, caught = tracked(3, older)  # the layout before versions: read as it is
    assert caught == []
    assert [r.step for r in resumed.history] == [0, 3, 6, 9]
    assert resumed.efolds == pytest.approx(9 * 0.1 / 3)


@pytest.mark.parametrize("change", ["later version", "unreadable history", "version text"])
def test_a_state_that_cannot_be_read_is_dropped_with_one_warning_and_the_run_goes_on(change):
    state = tracked(6)[0].state_dict()
    if change == "later version":
        state["version"] = STATE_VERSION + 1
    elif change == "unreadable history":
        state["history"] = [{"step": 0}]
    else:
        state["version"] = "2"
    resumed, caught = tracked(3, state)
    (message,) = caught
    assert message.startswith("CosmologyTracker: the monitor's state in this checkpoint cannot "
                              "be read (")
    assert "it is dropped" in message and "Fix: resume with the cosmo-optim version" in message
    if change == "later version":
        assert "state version 3; this cosmo-optim reads versions 1 to 2" in message
    assert [r.step for r in resumed.history] == [9]  # a new series, at the right step
    assert resumed.efolds == pytest.approx(9 * 0.1 / 3)  # every step still counts (T9)


def test_a_dict_that_is_no_state_is_an_error_directly_and_a_warning_on_a_resume():
    tracker = tracked(0)[0]
    with pytest.raises(ValueError, match=r"Invalid tracker state: missing \['history'"):
        tracker.load_state_dict({"weight": torch.ones(2)})
    session = MonitorSession("Adaptor")
    session.load_state_dict({"last_step": 3})  # a checkpoint's, restored when training starts
    with pytest.warns(UserWarning, match="cannot be read .ValueError: Invalid tracker state"):
        session.start(nn.Linear(3, 1), MonitorConfig(every_n_steps=2))
    assert session.running().last_step == -1


def test_the_count_of_failed_readings_continues_after_a_resume():
    first = tracked(6)[0]
    first.guard.failed = 2
    resumed, _ = tracked(3, first.state_dict())
    assert resumed.guard.failed == 2
    assert resumed.history[-1].scalars["cosmology/failed_readings"] == 2.0

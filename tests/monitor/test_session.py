"""`MonitorSession` without any framework: the four jobs the adaptors share (issue #21 item 8)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from cosmo_optim.monitor import MonitorConfig
from cosmo_optim.monitor.session import MonitorSession


class Writer:
    """A SummaryWriter stand-in recording the figures it gets."""

    def __init__(self) -> None:
        self.figures: list[tuple[str, int]] = []

    def add_scalar(self, tag, value, step=None):
        pass

    def add_figure(self, tag, figure, global_step=None, close=True):
        self.figures.append((tag, global_step))


def _session(mse_steps, figures=None, steps=4, pending=None):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 3, generator=g), torch.randn(6, 1, generator=g)
    model = nn.Linear(3, 1)
    session = MonitorSession("Adaptor")
    session.load_state_dict(pending)
    config = MonitorConfig(nn.MSELoss(), top_k=2, every_n_steps=2,
                           log_figures_every_n_steps=figures)
    tracker = session.start(model, config, probe_batch=(x, y))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    tracker.attach(opt)
    mse_steps(model, opt, x, y, steps)
    return session


def test_a_state_loaded_before_the_tracker_exists_is_restored_at_start(mse_steps):
    first = _session(mse_steps)
    saved = first.state_dict()
    resumed = _session(mse_steps, steps=0, pending=saved)
    assert resumed.pending is None
    assert [r.step for r in resumed.running().history] == [0, 2, 4]
    assert resumed.running().efolds == pytest.approx(first.running().efolds)
    assert MonitorSession("x").state_dict() == {}


def test_the_probe_batch_is_taken_on_rank_0_only_and_broadcast():
    taken = []
    got = MonitorSession.shared_probe(False, lambda: taken.append(1), lambda p: ("rank 0's", p))
    assert got == ("rank 0's", None) and taken == []
    assert MonitorSession.shared_probe(True, lambda: "mine", lambda p: p) == "mine"


def test_figures_without_a_logger_that_takes_them_warn_once_and_the_end_draws_them(mse_steps):
    session = _session(mse_steps, figures=4, steps=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        writers = session.targets([object(), Writer()], lambda lg: lg if isinstance(
            lg, Writer) else None)
        session.targets([object()], lambda lg: None)
    dropped = [str(w.message) for w in caught]
    assert len(dropped) == 1 and "Adaptor: the figures" in dropped[0] and "object" in dropped[0]
    session.finish()  # the end of the run: the figures of its last probe, step 4
    assert sorted(writers[0].figures) == [("figures/modes", 4), ("figures/potential", 4),
                                          ("figures/spectrum", 4)]
    session.finish()  # drawn there already: not twice
    assert len(writers[0].figures) == 3
    with pytest.raises(RuntimeError, match="Adaptor used before training started"):
        MonitorSession("Adaptor").running()


def test_a_resumed_monitor_takes_its_own_state_not_a_longer_prefixs():
    """Two monitors saved in one checkpoint, prefixes "b/" and "": each resumes from its own
    state, whatever the order (every tag starts with "")."""
    from cosmo_optim.monitor.records import to_json

    def state(prefix, steps):
        history = [{"step": s, "scalars": {f"{prefix}cosmology/efolds": 0.1 * s,
                                           f"{prefix}ntk/ratio_2": 0.5}} for s in steps]
        return to_json({"last_step": steps[-1], "history": history})

    saved = [state("b/", [0, 3]), state("", [0, 2])]
    assert MonitorSession.from_json(saved, "")["last_step"] == 2
    assert MonitorSession.from_json(saved, "b/")["last_step"] == 3
    assert MonitorSession.from_json(saved[:1], "") is None

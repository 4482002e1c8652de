"""`MonitorSession` without any framework: what every adaptor shares, through a `Port`
(issue #32 item 9): state across a resume, one probe batch for every rank, writes on the
framework's step, the end of the run."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from cosmo_optim.monitor import MonitorConfig
from cosmo_optim.monitor.session import MonitorSession, Port


class Writer:
    """A SummaryWriter stand-in recording what it gets."""

    def __init__(self) -> None:
        self.figures: list[tuple[str, int]] = []
        self.scalars: list[tuple[str, int]] = []
        self.layouts = 0

    def add_scalar(self, tag, value, step=None):
        self.scalars.append((tag, step))

    def add_custom_scalars(self, layout):
        self.layouts += 1

    def add_figure(self, tag, figure, global_step=None, close=True):
        self.figures.append((tag, global_step))


class Recording(Port):
    """A framework that keys its rows one step earlier and takes figures in `writer` only."""

    def __init__(self, writer=None, dropped=()):
        self.writer, self.dropped, self.logged = writer, list(dropped), []

    def step(self, step):
        return max(step - 1, 0)

    def log_scalars(self, metrics, step):
        self.logged.append(step)

    def writers(self):
        return ([self.writer] if self.writer else []), self.dropped


def _session(mse_steps, figures=None, steps=4, pending=None, port=None):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 3, generator=g), torch.randn(6, 1, generator=g)
    model = nn.Linear(3, 1)
    session = MonitorSession("Adaptor")
    session.load_state_dict(pending)
    config = MonitorConfig(nn.MSELoss(), top_k=2, every_n_steps=2,
                           log_figures_every_n_steps=figures)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    session.start(model, config, port=port, optimizer=opt)
    session.share_probe((x, y))
    session.on_step(0)
    for step in range(1, steps + 1):
        mse_steps(model, opt, x, y, 1)
        session.on_step(step)
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

    class Given:  # a probe batch that says when it is taken
        def __getitem__(self, i):
            taken.append(i)

    class Rank1(Port):
        def rank_zero(self):
            return False

        def broadcast(self, value):
            assert value is None  # rank 1 took nothing
            return (torch.ones(3, 2), torch.zeros(3))

    session = MonitorSession("Adaptor")
    session.start(nn.Linear(2, 1), MonitorConfig(every_n_steps=2), port=Rank1())
    session.share_probe(Given())
    assert taken == [] and torch.equal(session.running().probe_batch[0].args[0], torch.ones(3, 2))


def test_without_a_data_set_every_rank_s_first_batch_is_gathered_in_rank_order():
    """Two ranks' first batches of 3 samples: the probe batch is rank 0's then rank 1's, cut to
    probe_size; a collator's keyword inputs and the targets alike."""

    class TwoRanks(Port):
        def gather(self, value):
            inputs, targets = value
            other = {k: v + 100 for k, v in inputs.kwargs.items()}
            from cosmo_optim.ntk import ModelInputs

            return [value, (ModelInputs(other), targets + 100)]

    session = MonitorSession("Adaptor")
    session.start(nn.Linear(2, 1), MonitorConfig(every_n_steps=2, probe_size=5),
                  port=TwoRanks())
    batch = {"input_ids": torch.arange(3)[:, None].repeat(1, 2), "labels": torch.arange(3)}
    session.share_probe(None, None, batch, keywords=True)
    inputs, targets = session.running().probe_batch
    assert inputs.kwargs["input_ids"][:, 0].tolist() == [0, 1, 2, 100, 101]
    assert targets.tolist() == [0, 1, 2, 100, 101]


def test_a_loader_without_a_data_set_and_no_batch_is_an_error_naming_probe_batch():
    """A loader that is a plain list of batches (no data set to index) before any batch was
    seen: nothing to take the probe batch from, so the error names the argument to pass."""
    session = MonitorSession("Adaptor")
    session.start(nn.Linear(2, 1), MonitorConfig(every_n_steps=2), port=Port())
    loader = [(torch.ones(3, 2), torch.zeros(3))]
    with pytest.raises(ValueError, match=r"Adaptor: no probe batch.*Fix: pass probe_batch="):
        session.share_probe(None, loader)
    assert not session.running().has_probe
    session.share_probe(loader[0])  # the fix
    assert torch.equal(session.running().probe_batch[0].args[0], torch.ones(3, 2))


def test_writes_go_on_the_framework_s_step_and_the_end_draws_the_figures_once(mse_steps):
    writer = Writer()
    port = Recording(writer, dropped=["CSVLogger"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        session = _session(mse_steps, figures=4, steps=5, port=port)
    dropped = [str(w.message) for w in caught if "are not sent to" in str(w.message)]
    assert len(dropped) == 1 and "Adaptor: the figures" in dropped[0] and "CSVLogger" in dropped[0]
    assert port.logged == [0, 1, 3]  # readings at steps 0, 2 and 4, keyed one step earlier
    assert {step for tag, step in writer.scalars} == {0, 1, 3}  # the log10 views too
    assert writer.layouts == 2  # the residual's charts fill at the second reading
    assert sorted(writer.figures) == sorted((f"figures/{name}", step) for step in (0, 3) for name
                                            in ("modes", "potential", "spectrum"))
    session.end()  # drawn at the last reading already: not twice
    assert len(writer.figures) == 6
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


def test_the_summary_before_training_is_that_of_no_reading_as_the_tracker_s():
    """An adaptor's summary() before fit/train returns what an unused tracker's does (it
    raised a RuntimeError, while CosmologyTracker.summary() answered)."""
    assert MonitorSession("Adaptor").summary().readings == 0
    assert "no reading" in MonitorSession("Adaptor").summary().table()

"""The end of a run (issue #32 item 7): `summary()` as data and its table on the console; the
background said once; a slow reading said while it runs and when it ends."""

from __future__ import annotations

import json
import logging
import statistics
import time

import torch
from torch import nn

from cosmo_optim.dual.causes import RESIDUAL_TOLERANCE
from cosmo_optim.monitor import CosmologyTracker
from cosmo_optim.monitor.console import timed
from cosmo_optim.monitor.dashboard import verdicts


def _run(model, lr, steps=20, every=5, momentum=0.9):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, generator=g), torch.randn(16, 1, generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    tracker = CosmologyTracker(model, nn.MSELoss(), probe_batch=(x, y), top_k=2,
                               every_n_steps=every)
    tracker.attach(opt)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return tracker


def test_a_linear_model_holds_at_every_reading_and_the_summary_says_so(caplog):
    """A linear model's outputs are linear in its weights: the residual is rounding, the dual
    holds at every tested reading, and the kernel never moves (T4, T12)."""
    torch.manual_seed(0)
    tracker = _run(nn.Linear(3, 1), lr=0.05)
    with caplog.at_level(logging.INFO, logger="cosmo_optim.monitor.console"):
        tracker.close()
    summary = tracker.summary()
    assert summary.readings == 5 and summary.steps == (0, 20)
    assert summary.tested == 4 and summary.held + summary.not_measurable == 4
    assert summary.causes == () and summary.kernel_change[1] < 1e-6
    first, last = tracker.history[0].scalars, tracker.history[-1].scalars
    assert summary.lambda_1 == (first["ntk/lambda_1"], last["ntk/lambda_1"])
    assert json.loads(json.dumps(summary.as_dict()))["readings"] == 5  # plain data
    table = caplog.text
    assert "cosmo-optim: the run's dual, 5 readings after optimiser steps 0–20" in table
    assert "λ_1" in table and "kernel change per interval" in table


def test_a_feature_learning_run_names_the_kernel_and_says_the_background_once():
    """A 4-unit tanh network at lr 0.3: the kernel moves more than 5 % per interval, the dual
    fails at those readings with that cause, and Ω_φ above 0.1 is one row of the table."""
    torch.manual_seed(0)
    tracker = _run(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)), lr=0.3)
    summary = tracker.summary()
    residuals = [r.scalars["duality/relative_residual"] for r in tracker.history
                 if "duality/relative_residual" in r.scalars]
    failed = sum(v > RESIDUAL_TOLERANCE for v in residuals)
    assert summary.tested == len(residuals) and summary.tested - summary.held >= failed > 0
    assert summary.residual == (statistics.median(residuals), max(residuals))
    assert summary.causes[0].name in ("kernel moved", "edge of stability")
    assert sum(c.readings for c in summary.causes) <= failed
    table = summary.table()
    assert "where it failed" in table and summary.causes[0].name in table
    omegas = [r.scalars["cosmology/omega_phi"] for r in tracker.history
              if "cosmology/omega_phi" in r.scalars]
    assert summary.omega_phi == (min(omegas), max(omegas))
    assert table.count("vacuum dominated") == 1


def test_the_verdict_card_notes_the_background_at_its_first_reading_only():
    scalars = {"cosmology/omega_phi": 388.0, "duality/relative_residual": 0.01}
    first = verdicts(scalars, previous={"cosmology/omega_phi": 0.05})
    later = verdicts({**scalars, "cosmology/omega_phi": 2.6e4}, previous=scalars)
    assert "note: not vacuum dominated" in first
    assert "note: not vacuum dominated" not in later
    assert "since an earlier reading" in later and "2.6e+04" in later


def test_a_slow_reading_is_said_while_it_runs_and_when_it_ends(caplog):
    with caplog.at_level(logging.INFO, logger="cosmo_optim.monitor.console"):
        with timed(7, "the NTK of 16 probe samples", seconds=0.05):
            time.sleep(0.3)
        with timed(8, "the NTK of 16 probe samples", seconds=5.0):
            pass
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "the reading at step 7 has run for" in lines[0]
    assert "the reading at step 7 took" in lines[1] and "Fix: a smaller probe_size" in lines[1]

"""Figures a screen can read (issue #21 item 7): ≥ 800 px wide at a set dpi, integer ticks on
the spectrum's mode axis, and a modes figure that draws the dotted predictions it names, or
names none when there is no prediction (no loss)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from cosmo_optim.monitor import CosmologyTracker
from cosmo_optim.monitor.figures import DPI, HEIGHT_PX, WIDTH_PX
from cosmo_optim.monitor.images import rgb


def _figures(loss, mse_steps):
    """The figures of a 6-step run with `loss` (None: no dual, no prediction)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    tracker = CosmologyTracker(model, loss, probe_batch=(x, y), top_k=5, every_n_steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tracker.attach(opt)
        mse_steps(model, opt, x, y, 6)
    return tracker.figures()


def test_every_figure_is_at_least_800_pixels_wide_at_a_set_dpi(mse_steps):
    figures = _figures(nn.MSELoss(), mse_steps)
    assert sorted(figures) == ["figures/modes", "figures/potential", "figures/spectrum"]
    assert WIDTH_PX >= 800
    for tag, fig in figures.items():
        assert fig.dpi == DPI, tag
        assert rgb(fig).shape == (HEIGHT_PX, WIDTH_PX, 3), tag


def test_the_spectrum_s_mode_axis_has_integer_ticks(mse_steps):
    ax = _figures(nn.MSELoss(), mse_steps)["figures/spectrum"].axes[0]
    fig = ax.figure
    fig.canvas.draw()
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


@pytest.mark.parametrize("loss", [nn.MSELoss(), None])
def test_the_modes_figure_promises_dotted_lines_only_when_it_draws_them(loss, mse_steps):
    ax = _figures(loss, mse_steps)["figures/modes"].axes[0]
    dotted = [line for line in ax.get_lines() if line.get_linestyle() == ":" and len(
        line.get_xdata())]
    title = ax.get_title()
    if loss is None:
        assert not dotted and "dotted" not in title and "no NTK prediction" in title
    else:
        assert dotted and "prediction (dotted" in title
        assert "NTK prediction" in [t.get_text() for t in ax.get_legend().get_texts()]

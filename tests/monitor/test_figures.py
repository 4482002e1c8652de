"""Figures a screen can read (issue #21 item 7): ≥ 800 px wide at a set dpi, integer ticks on
the spectrum's mode axis, and a modes figure on the data's scale that draws the predictions its
legend names and says which forecasts it leaves out (issue #28)."""

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
def test_the_modes_figure_draws_the_predictions_its_legend_names(loss, mse_steps):
    ax = _figures(loss, mse_steps)["figures/modes"].axes[0]
    dotted = [line for line in ax.get_lines() if line.get_linestyle() == ":" and len(
        line.get_xdata())]
    crosses = [line for line in ax.get_lines() if line.get_marker() == "x" and len(line.get_xdata())]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert crosses and "frozen-kernel prediction (T12)" in legend  # any loss: it needs none
    if loss is None:  # no dual: no forecast
        assert not dotted and not any("forecast" in t for t in legend)
    else:  # full batch on the probe batch: the forecasts stay on the data's scale
        assert dotted and "forecast, full batch on the probe batch (T10)" in legend
        assert "not drawn" not in ax.get_title()


def test_a_forecast_off_the_data_s_scale_is_left_out_and_the_title_says_why():
    from cosmo_optim.monitor.figures import figures
    from cosmo_optim.monitor.records import PredictedModes, Reading

    def reading(step, amplitude, forecast=None, scalars=None):
        prediction = None if forecast is None else PredictedModes(
            [step, step + 1], torch.tensor([[amplitude], [forecast]], dtype=torch.float64))
        return Reading(step, scalars or {}, torch.ones(1), torch.zeros(1), torch.tensor([amplitude]),
                       prediction, linearised_amplitudes=torch.tensor([amplitude * 1.01]))

    history = [reading(0, 1.0, forecast=1500.0), reading(1, 2.0, forecast=2.5), reading(2, 3.0)]
    ax = figures(history, None)["figures/modes"].axes[0]
    dotted = [line for line in ax.get_lines() if line.get_linestyle() == ":" and len(line.get_xdata())]
    assert len(dotted) == 1 and list(dotted[0].get_xdata()) == [1, 2]  # the sane one only
    assert ax.get_ylim()[1] < 10  # the data's scale, not the forecast's 1500
    assert "1 of 2 forecasts not drawn: off this scale" in ax.get_title()
    # A forecast the next reading found missing by more than half the motion (mini-batches) is
    # not drawn either, though on scale; the title carries the verdict of the readings.
    history = [reading(0, 1.0, forecast=1.5),
               reading(1, 2.0, forecast=2.5, scalars={"train/duality/forecast_residual": 0.9,
                                                      "train/duality/relative_residual": 0.01}),
               reading(2, 3.0, scalars={"train/duality/forecast_residual": 0.8,
                                        "train/duality/relative_residual": 0.2})]
    ax = figures(history, None)["figures/modes"].axes[0]
    assert not [line for line in ax.get_lines() if line.get_linestyle() == ":" and len(line.get_xdata())]
    assert "the dual holds at 1 of 2 readings" in ax.get_title() and "latest 0.2" in ax.get_title()

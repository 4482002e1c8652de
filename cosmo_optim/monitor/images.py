"""Figures for loggers that are not a ``SummaryWriter``: their own image API behind the one
method the TensorBoard extras call (``add_figure``), or one warning naming what is dropped.

Duck-typed, so no logger package is imported: Lightning's ``WandbLogger`` (``log_image``) and
``MLFlowLogger`` (``experiment.log_figure(run_id, ...)``), and the ``wandb`` / ``mlflow``
modules behind transformers' ``WandbCallback`` / ``MLflowCallback``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from cosmo_optim.monitor.tags import FIGURE_TAGS

__all__ = ["FigureWriter", "figures_dropped_warning", "image_writer", "rgb", "writers_of"]


def rgb(figure: Any) -> np.ndarray:
    """The figure's pixels, (height, width, 3) uint8, drawn on its Agg canvas."""
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


class FigureWriter:
    """A ``SummaryWriter``'s ``add_figure`` over another logger's image API: ``send(tag,
    figure, step)``."""

    def __init__(self, send: Callable[[str, Any, int], Any]) -> None:
        self.send = send

    def add_figure(self, tag: str, figure: Any, global_step: int, close: bool = False) -> None:
        """Send one figure, as ``SummaryWriter.add_figure(tag, figure, global_step)`` does."""
        self.send(tag, figure, global_step)


def _artifact(tag: str, step: int) -> str:
    return f"{tag}/step_{step:07d}.png"


def image_writer(logger: Any) -> FigureWriter | None:
    """The logger's image API as a `FigureWriter`, or None when it has none (CSV)."""
    if callable(getattr(logger, "log_image", None)):  # Lightning's WandbLogger (also Neptune)
        return FigureWriter(lambda tag, fig, step: logger.log_image(
            key=tag, images=[rgb(fig)], step=step))
    if isinstance(getattr(type(logger), "run_id", None), property):  # Lightning's MLFlowLogger
        client = logger.experiment
        if callable(getattr(client, "log_figure", None)):
            return FigureWriter(lambda tag, fig, step: client.log_figure(
                logger.run_id, fig, _artifact(tag, step)))
    wandb: Any = getattr(logger, "_wandb", None)  # transformers' WandbCallback: the wandb module
    if callable(getattr(wandb, "log", None)) and hasattr(wandb, "Image"):
        return FigureWriter(lambda tag, fig, step: wandb.log(
            {tag: wandb.Image(rgb(fig)), "train/global_step": step}))
    mlflow: Any = getattr(logger, "_ml_flow", None)  # transformers' MLflowCallback: mlflow
    if callable(getattr(mlflow, "log_figure", None)):
        return FigureWriter(lambda tag, fig, step: mlflow.log_figure(fig, _artifact(tag, step)))
    return None


def writers_of(loggers: Sequence[Any],
               summary_writer: Callable[[Any], Any]) -> tuple[list[Any], list[str]]:
    """Where a reading's extras go: each logger's ``SummaryWriter`` (`summary_writer(logger)`,
    None for other loggers: everything) or image API (`image_writer`: figures); and the class
    names of the loggers that have neither (they take no figure)."""
    writers, dropped = [], []
    for logger in loggers:
        writer = summary_writer(logger)
        writer = writer if writer is not None else image_writer(logger)
        writers += [writer] if writer is not None else []
        dropped += [] if writer is not None else [type(logger).__name__]
    return writers, dropped


def figures_dropped_warning(owner: str, names: Sequence[str]) -> str:
    """The one warning of a run whose figures some of its loggers cannot take."""
    return (
        f"{owner}: the figures ({', '.join(FIGURE_TAGS)}) are not sent to "
        f"{', '.join(sorted(set(names)))}, which has no image API (TensorBoard takes them "
        "with add_figure, W&B with log_image, MLflow with log_figure); the scalars are logged "
        "there as usual. Fix: add a TensorBoard, W&B or MLflow logger for the figures, or "
        "log_figures_every_n_steps=None. Said once per run."
    )

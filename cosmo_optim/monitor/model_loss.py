"""The model's own loss as the dual's per-sample loss (T4): ``loss="model"``.

A model that computes its training loss when given its targets (a Hugging Face model called
with ``labels=``: by its problem type, and for a language model over the next token) is
trained on that loss, whatever the monitor is told. With ``loss="model"`` (the Hugging Face
callback's default) the first reading calls the model once on the probe batch with its
targets, and keeps the first of `CANDIDATES` whose mean over the probe batch equals the loss
the model returned (to `MATCH_RTOL`): the dual then uses that per-sample loss ℓ(f_i, y_i) of
the outputs the kernel is taken of, and the console says which. `logits_of` picks the logits
of a ``ModelOutput``, dict or tuple (the outputs a Hugging Face model's loss is applied to).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

import torch
from torch import Tensor, nn

from cosmo_optim.losses import PerSampleLoss, per_sample_loss

__all__ = ["CANDIDATES", "MATCH_RTOL", "MODEL_LOSS", "logits_of", "own_loss"]

#: The `MonitorConfig.loss` that stands for the model's own loss.
MODEL_LOSS: Final = "model"
#: A candidate matches when its mean is within this relative distance of the model's loss.
MATCH_RTOL: Final = 1e-4
_IGNORED: Final = -100  # the target value a token loss ignores (PyTorch's and transformers')


def logits_of(out: Any) -> Tensor:
    """``out.logits`` / ``out["logits"]`` of a ModelOutput or dict, else ``out[0]``."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, Mapping) or hasattr(out, "keys"):
        return out["logits"]
    return out[0]


def _tokens(shift: bool) -> Callable[[Tensor, Tensor | None], Tensor]:
    """Cross-entropy per token of logits (N, T, V) against labels (N, T), tokens labelled −100
    left out, the labels one position ahead when `shift` (a causal LM predicts the next token);
    each sample's sum scaled by N / (tokens counted) so that the mean over the samples is the
    model's mean over the tokens of the batch."""
    def per_sample(f: Tensor, y: Tensor | None) -> Tensor:
        assert y is not None
        logits, labels = (f[:, :-1], y[:, 1:]) if shift else (f, y)
        losses = nn.functional.cross_entropy(
            logits.reshape(-1, f.shape[-1]), labels.reshape(-1).long(), ignore_index=_IGNORED,
            reduction="none").reshape(labels.shape)
        counted = (labels != _IGNORED).sum().clamp(min=1)
        return losses.sum(1) * (f.shape[0] / counted)

    return per_sample


def _squared(f: Tensor, y: Tensor | None) -> Tensor:
    assert y is not None
    return (f.reshape(len(f), -1) - y.reshape(len(y), -1).to(f)).pow(2).mean(1)


#: What a model's own loss may be: (what it is, when it applies to outputs f and targets y,
#: the per-sample loss). Tried in this order; the first whose mean matches is kept.
CANDIDATES: tuple[tuple[str, Callable[[Tensor, Tensor], bool], Any], ...] = (
    ("cross-entropy over the classes", lambda f, y: f.dim() == 2 and y.dim() == 1
     and not y.is_floating_point(), nn.CrossEntropyLoss()),
    ("cross-entropy of the next token (a causal language model: labels shifted by one, −100 "
     "ignored)", lambda f, y: f.dim() == 3 and y.shape == f.shape[:2], _tokens(True)),
    ("cross-entropy per token (token classification or masked LM: −100 ignored)",
     lambda f, y: f.dim() == 3 and y.shape == f.shape[:2], _tokens(False)),
    ("mean squared error (regression)", lambda f, y: f.numel() == y.numel()
     and y.is_floating_point(), _squared),
    ("binary cross-entropy of the logits (multi-label)", lambda f, y: f.shape == y.shape
     and y.is_floating_point(), nn.BCEWithLogitsLoss()),
)


def own_loss(model: nn.Module, inputs: Any, targets: Tensor, label_key: str,
             select: Callable[[Any], Tensor]) -> tuple[PerSampleLoss | None, str]:
    """The model's own loss on the probe batch as a per-sample loss of ``select(out)``, and
    what it is; (None, why) when the model returns no loss or none of `CANDIDATES` matches.
    `inputs` is a `cosmo_optim.ntk.ModelInputs` on the model's device and dtype; the model is
    called once more with its targets as keyword `label_key`."""
    out = inputs.call(lambda *a, **kw: model(*a, **kw, **{label_key: targets.to(
        inputs.device)}))
    loss = out.get("loss") if isinstance(out, Mapping) or hasattr(out, "get") else getattr(
        out, "loss", None)
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        return None, (f"the model returns no loss when called with {label_key}= (a "
                      f"{type(out).__name__})")
    f, y, value = select(out).detach().double().cpu(), targets.cpu(), float(loss)
    tried = []
    for name, applies, candidate in CANDIDATES:
        if not applies(f, y):
            continue
        ell = per_sample_loss(candidate)
        try:
            with torch.no_grad():
                mean = float(ell.per_sample(f, y).mean())
        except (ValueError, RuntimeError, IndexError):  # targets this loss cannot take
            continue
        tried.append(f"{name.split(' (')[0]} {mean:.6g}")
        if abs(mean - value) <= MATCH_RTOL * max(abs(value), 1.0):
            return PerSampleLoss(ell.per_sample, None, f"the model's own loss: {name}",
                                 ell.closed_gradient, ell.closed_hessian), name
    return None, (f"its loss on the probe batch, {value:.6g}, matches none of "
                  + ("; ".join(tried) or "the losses known for outputs of shape "
                     f"{tuple(f.shape)} and targets of shape {tuple(y.shape)}"))

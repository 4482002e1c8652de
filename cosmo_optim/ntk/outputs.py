"""The outputs a kernel differentiates: all components, one, or a selector's choice.

Private helper of :mod:`cosmo_optim.ntk`. ``output=`` names what the kernel is of: ``"trace"``
(every component, summed), ``"full"`` (every pair of components), an int (one flattened
component) or a selector, a callable from the model's output to ``(n, ...)`` values per
sample (``out.logits``, a gathered logit). The engine runs subsets of the probe batch (sample
0 alone, chunks, a permutation), so a selector that reads per-sample data takes the samples'
positions as a second argument: ``lambda out, index: out.gather(1, labels[index, None])``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["Output", "selected_outputs", "takes_index"]

Output = str | int | Callable[..., torch.Tensor]

_SUBSETS = (
    " The engine runs the samples alone and in chunks, so a selector must work on any subset "
    "of the probe batch; one that reads per-sample data (labels[:, None]) takes the samples' "
    "positions in the probe batch as a second argument. Fix: e.g. "
    "output=lambda out, index: out.gather(1, labels[index, None])."
)


def takes_index(output: Output) -> bool:
    """True for a selector of two required positional arguments, ``(out, index)``."""
    if not callable(output):
        return False
    try:
        params = inspect.signature(output).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature take the outputs alone
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in positional and p.default is p.empty for p in params) == 2


def selected_outputs(output: Output, out: Any, n: int,
                     index: torch.Tensor | None = None) -> torch.Tensor:
    """The components (n, C) of ``output`` (a selector, an index or a kernel kind) in the
    model's output ``out`` for n samples (at positions ``index`` of the probe batch, given to
    a selector ``(out, index)``), or a ValueError naming what is wrong."""
    if callable(output):
        try:
            out = output(out) if index is None else output(out, index)
        except (RuntimeError, IndexError, KeyError, TypeError) as error:
            raise ValueError(
                f"Invalid output: the selector raised on the outputs of {n} sample(s): "
                f"{str(error).splitlines()[0]}." + _SUBSETS) from error
    if not isinstance(out, torch.Tensor):
        kind = type(out).__name__
        raise ValueError(
            f"Invalid output: the model returned a {kind}, not a tensor, so the kernel "
            "does not know which values are the network's output. Fix: pass a selector, "
            "e.g. output=lambda out: out[0] or output=lambda out: out.logits."
        )
    if not out.is_floating_point():
        raise ValueError(
            f"Invalid output: the selected output is {out.dtype} (e.g. an argmax, a "
            "comparison), which has no derivative, so it has no kernel. Fix: select "
            "real-valued outputs, e.g. the logit of the predicted class, "
            "output=lambda out, index: out.gather(1, out.argmax(1, keepdim=True))."
        )
    if out.dim() == 0 or out.shape[0] != n:
        raise ValueError(
            f"Invalid output: the selected output has shape {tuple(out.shape)} for {n} "
            f"samples; it must have the samples on dim 0, shape ({n},) or ({n}, ...)."
            + _SUBSETS
        )
    flat = out.reshape(n, -1)
    if isinstance(output, int):
        if not -flat.shape[1] <= output < flat.shape[1]:
            raise ValueError(
                f"Invalid output: {output!r}; the model has {flat.shape[1]} output "
                "components per sample. Fix: pick an index in range."
            )
        return flat[:, output : output + 1 or None]
    return flat

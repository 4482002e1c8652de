"""The modes the engine computes in, whatever the caller's: grad, inference and autocast.

Private helper of :mod:`cosmo_optim.ntk`. People evaluate under ``torch.no_grad()`` or
``torch.inference_mode()`` and train under ``torch.autocast``; none of these may reach the
kernel's own arithmetic. :func:`engine_modes` turns gradients on, leaves inference mode and
switches autocast off for everything the engine computes. The model's forward runs as the
caller runs it: under the caller's autocast (:class:`Autocast`, captured at the call), so the
kernel is that of the function the caller trains, accumulated in at least float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["Autocast", "engine_modes"]


def _autocast_state(device_type: str) -> tuple[bool, torch.dtype]:
    """(enabled, dtype) of autocast for ``device_type`` (torch >= 2.4 API, else the older);
    a device without autocast (``meta``): disabled."""
    try:
        return (torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
    except RuntimeError:  # no autocast for this device type
        return False, torch.float32
    except (TypeError, AttributeError):  # torch 2.3
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
        return torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()


class Autocast:
    """The caller's autocast on the device the model runs on, re-entered around forwards."""

    def __init__(self, device: torch.device) -> None:
        self.device_type = device.type
        self.enabled, self.dtype = _autocast_state(device.type)

    def __call__(self) -> contextlib.AbstractContextManager[object]:
        """The caller's autocast (a no-op context when it had none)."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def describe(self) -> str:
        return f"autocast({self.device_type!r}, {self.dtype})" if self.enabled else "no autocast"


@contextlib.contextmanager
def engine_modes(device: torch.device) -> Iterator[None]:
    """Gradients on, inference mode off and autocast off (on the CPU and ``device``)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        for kind in {"cpu", device.type}:
            if _autocast_state(kind)[0]:
                stack.enter_context(torch.autocast(kind, enabled=False))
        yield

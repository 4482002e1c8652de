"""The device the engine's device-relevant tests run on: ``COSMO_TEST_DEVICE`` (default
``cpu``; ``benchmarks/gpu_check.sh`` sets ``cuda``). Tests that take the ``device`` fixture
run there; the brute-force reference always runs on a float64 CPU copy."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture
def device() -> torch.device:
    name = os.environ.get("COSMO_TEST_DEVICE", "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.fail(f"COSMO_TEST_DEVICE={name!r}, but torch.cuda.is_available() is False")
    return dev

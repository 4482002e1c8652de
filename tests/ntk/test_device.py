"""The engine on the test device (``COSMO_TEST_DEVICE``: cpu by default, cuda under
benchmarks/gpu_check.sh) against the brute-force reference on a float64 CPU copy.

Float64 kernels must match to 1e-8; float32 ones to the engine's own tolerance for the device
(TensorFloat-32 matmuls on a GPU round to 10 bits: cosmo_optim.ntk.per_sample.tolerance).
"""

from __future__ import annotations

import copy

import pytest
import torch
from brute_force import assert_exact, brute_force_ntk
from test_kernel import build

from cosmo_optim import empirical_ntk
from cosmo_optim.ntk import plan as plans
from cosmo_optim.ntk.per_sample import tolerance

CASES = ["tanh", "gelu", "cnn", "conv1d", "transformer", "tied", "twice", "convzoo", "attention"]


def on(device: torch.device, case: str, dtype: torch.dtype):
    """(model and batch on the device, model and batch in float64 on the CPU)."""
    model, x = build(case, dtype)
    reference = copy.deepcopy(model).double(), x.double() if x.is_floating_point() else x
    return model.to(device), x.to(device), reference


@pytest.mark.parametrize("method", ["auto", "structured", "jacobian"])
@pytest.mark.parametrize("case", CASES)
def test_float64_kernels_on_the_device(case: str, method: str, device: torch.device) -> None:
    model, x, (ref, xr) = on(device, case, torch.float64)
    K = empirical_ntk(model, x, method=method)
    assert K.device.type == device.type
    assert_exact(K, brute_force_ntk(ref, xr), 1e-8)


@pytest.mark.parametrize("case", ["gelu", "cnn", "transformer", "tied"])
def test_float32_full_kernels_on_the_device(case: str, device: torch.device) -> None:
    model, x, (ref, xr) = on(device, case, torch.float32)
    K = empirical_ntk(model, x, output="full", verify=True)
    assert K.dtype == torch.float32
    assert_exact(K, brute_force_ntk(ref, xr, full=True), tolerance(torch.float32, device))


def test_the_stored_plan_on_the_device(device: torch.device) -> None:
    model, x, (ref, xr) = on(device, "cnn", torch.float64)
    K = empirical_ntk(model, x, memory_budget=60_000)
    assert_exact(K, brute_force_ntk(ref, xr), 1e-8)


def test_the_sketch_on_the_device_is_exact_for_k_at_least_c(device: torch.device) -> None:
    model, x, (ref, xr) = on(device, "gelu", torch.float64)
    assert_exact(empirical_ntk(model, x, method="sketch", sketch_dim=3),
                 brute_force_ntk(ref, xr), 1e-8)
    a = empirical_ntk(model, x, method="sketch", sketch_dim=2, sketch_seed=1)
    assert torch.equal(a, empirical_ntk(model, x, method="sketch", sketch_dim=2, sketch_seed=1))


def test_the_default_budget_on_cuda_reads_free_device_memory(monkeypatch, device) -> None:
    """A quarter of ``torch.cuda.mem_get_info()``'s free bytes, within [256 MiB, 8 GiB]; on a
    CUDA test device against the device's own free memory too."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: (12 << 30, 80 << 30))
    assert plans.default_budget(torch.device("cuda")) == 3 << 30
    monkeypatch.undo()
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        expect = min(max(free // 4, 256 << 20), 8 << 30)
        assert abs(plans.default_budget(device) - expect) <= 64 << 20

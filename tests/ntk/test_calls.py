"""The calls users make: under no_grad or inference_mode, under autocast, low-precision models,
selectors of per-sample outputs; each against the brute-force per-sample kernel."""

from __future__ import annotations

import pytest
import torch
from brute_force import assert_exact, brute_force_ntk
from torch import nn

from cosmo_optim import empirical_ntk
from cosmo_optim.ntk import kernel as _ntk_kernel

METHODS = ["auto", "structured", "jacobian"]
LOW = 2e-2  # the stated tolerance of kernels of bfloat16/float16 forwards


def mlp(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 16), nn.GELU(),
                         nn.Linear(16, 3)).to(dtype)


X = torch.randn(6, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


# ------------------------------------------------------------------------------- grad modes
@pytest.mark.parametrize("method", [*METHODS, "sketch"])
def test_under_no_grad_the_kernel_is_exact(method: str) -> None:
    net = mlp()
    with torch.no_grad():
        K = empirical_ntk(net, X, method=method, verify=method != "sketch")
    assert_exact(K, brute_force_ntk(net, X))  # the sketch keeps sides of <= 12k entries exact


def test_under_inference_mode_with_inputs_made_there_the_kernel_is_exact() -> None:
    net = mlp()
    with torch.inference_mode():
        x = X.clone()  # an inference tensor
        K = empirical_ntk(net, x, verify=True)
    assert_exact(K, brute_force_ntk(net, X))


def test_a_model_made_under_inference_mode_is_refused_by_name() -> None:
    with torch.inference_mode():
        net = mlp()
    with pytest.raises(ValueError, match=r"parameters or buffers \['0.weight'.*inference tensors"):
        empirical_ntk(net, X)


def test_verify_computes_its_reference_with_gradients_on_under_the_callers_no_grad(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The failure of the first zoo: an all-zero kernel that verify passed, sharing it."""
    exact = _ntk_kernel.exact_kernel

    def zeroed(*args: object, **kwargs: object) -> object:
        result = exact(*args, **kwargs)
        return result._replace(kernel=0 * result.kernel)

    monkeypatch.setattr(_ntk_kernel, "exact_kernel", zeroed)
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"self-check failed"):
        empirical_ntk(mlp(), X, verify=True)


# -------------------------------------------------------------------------------- precision
@pytest.mark.parametrize("method", [*METHODS, "sketch"])
def test_the_callers_autocast_runs_the_forward_not_the_engine(method: str) -> None:
    net = mlp(torch.float32)
    x = X.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        K = empirical_ntk(net, x, method=method, verify=method != "sketch")
    assert K.dtype == torch.float32
    R = brute_force_ntk(net, x, autocast=torch.bfloat16)
    assert_exact(K, R, LOW)


class AutocastInside(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = mlp(torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.net(x).float()


@pytest.mark.parametrize("method", METHODS)
def test_autocast_inside_forward(method: str) -> None:
    model, x = AutocastInside(), X.float()
    K = empirical_ntk(model, x, method=method, verify=True)
    assert_exact(K, brute_force_ntk(model, x), LOW)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("output", ["trace", "full"])
def test_low_precision_models_accumulate_in_float32(dtype: torch.dtype, output: str) -> None:
    net, x = mlp(dtype), X.to(dtype)
    K = empirical_ntk(net, x, output=output, verify=True)
    assert K.dtype == torch.float32
    assert_exact(K, brute_force_ntk(net, x, full=output == "full"), LOW)


def test_integer_inputs_cast_in_forward_name_the_cast() -> None:
    class Pixels(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.head = nn.Conv2d(1, 2, 3), nn.Linear(2 * 4 * 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.conv(x / 255).flatten(1))  # uint8 / 255 is float32

    images = torch.randint(0, 255, (4, 1, 6, 6), dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"mixes dtypes .* inputs of torch.uint8 and parameters "
                                         r"of torch.float64 \(cast by dtype=torch.float64\)"):
        empirical_ntk(Pixels(), images, dtype=torch.float64)
    empirical_ntk(Pixels(), images)  # the fix the message names: dtype=None


# -------------------------------------------------------------------------------- selectors
LABELS = torch.tensor([0, 2, 1, 2, 0, 1])


@pytest.mark.parametrize("method", [*METHODS, "sketch"])
def test_a_selector_of_per_sample_labels_takes_the_sample_positions(method: str) -> None:
    net = mlp()
    correct = lambda out, index: out.gather(1, LABELS[index, None])  # noqa: E731
    K = empirical_ntk(net, X, output=correct, method=method)
    assert_exact(K, brute_force_ntk(net, X, correct))


def test_a_selector_of_the_whole_batchs_labels_is_named_with_the_fix() -> None:
    with pytest.raises(ValueError, match=r"selector raised on the outputs of 1 sample.*"
                                         r"output=lambda out, index: out.gather"):
        empirical_ntk(mlp(), X, output=lambda out: out.gather(1, LABELS[:, None]))


def test_an_integer_selection_is_named() -> None:
    with pytest.raises(ValueError, match=r"selected output is torch.int64 .* no derivative"):
        empirical_ntk(mlp(), X, output=lambda out: out.argmax(1))

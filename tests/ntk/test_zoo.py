"""A zoo of models the engine was not designed around, each against brute force in float64.

Every case either matches a per-sample autograd Jacobian (K = J Jᵀ, one backward per sample and
output component on a deep copy) to 1e-8 relative, or raises a clear error. Never a wrong number.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from brute_force import assert_exact, brute_force_ntk
from torch import nn
from torch.nn.utils import parametrizations

from cosmo_optim import empirical_ntk

METHODS = ["auto", "structured", "jacobian"]
Select = Callable[[object], torch.Tensor]


def seeded(build: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return build().double()


# ------------------------------------------------------------------ in-place activations
INPLACE = {
    "relu": lambda: nn.ReLU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.1, inplace=True),
    "elu": lambda: nn.ELU(inplace=True),
    "celu": lambda: nn.CELU(inplace=True),
    "selu": lambda: nn.SELU(inplace=True),
    "relu6": lambda: nn.ReLU6(inplace=True),
    "hardtanh": lambda: nn.Hardtanh(-0.5, 0.5, inplace=True),
    "silu": lambda: nn.SiLU(inplace=True),
    "mish": lambda: nn.Mish(inplace=True),
    "hardswish": lambda: nn.Hardswish(inplace=True),
    "hardsigmoid": lambda: nn.Hardsigmoid(inplace=True),
    "threshold": lambda: nn.Threshold(0.1, -1.0, inplace=True),
    "dropout_eval": lambda: nn.Dropout(0.5, inplace=True),
}


@pytest.mark.parametrize("act", sorted(INPLACE))
@pytest.mark.parametrize("method", METHODS)
def test_inplace_activation_after_linear(act: str, method: str) -> None:
    model = seeded(lambda: nn.Sequential(nn.Linear(4, 16), INPLACE[act](), nn.Linear(16, 16),
                                         INPLACE[act](), nn.Linear(16, 3)))
    x = torch.randn(7, 4, dtype=torch.float64)
    assert_exact(empirical_ntk(model, x, method=method), brute_force_ntk(model, x))


CONVS = {
    "conv1d": (lambda: nn.Conv1d(2, 4, 3, padding=1), (2, 9)),
    "conv2d": (lambda: nn.Conv2d(2, 4, 3, padding=1), (2, 6, 6)),
    "conv3d": (lambda: nn.Conv3d(2, 3, 2), (2, 4, 4, 4)),
    "conv_transpose1d": (lambda: nn.ConvTranspose1d(2, 4, 3, stride=2), (2, 5)),
    "conv_transpose2d": (lambda: nn.ConvTranspose2d(2, 3, 3, stride=2), (2, 4, 4)),
}


@pytest.mark.parametrize("act", ["relu", "leaky_relu", "hardtanh", "silu"])
@pytest.mark.parametrize("conv", sorted(CONVS))
def test_inplace_activation_after_conv(conv: str, act: str) -> None:
    layer, shape = CONVS[conv]
    model = seeded(lambda: nn.Sequential(layer(), INPLACE[act](), nn.Flatten(), nn.LazyLinear(2)))
    x = torch.randn(5, *shape, dtype=torch.float64)
    model(x)  # materialise the lazy layer
    assert_exact(empirical_ntk(model, x), brute_force_ntk(model, x))


class FunctionalInplace(nn.Module):
    """In-place ops written inside forward, not as modules."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if self.how == "method":
            h.relu_()
        elif self.how == "functional":
            h = F.relu(h, inplace=True)
        elif self.how == "residual":
            g = self.b(h)
            g += h  # in-place residual add on a layer output
            h = g
        elif self.how == "scale":
            h.mul_(2.0).tanh_()
        elif self.how == "slice":
            h[:, :3] = 0.0  # in-place write into part of a layer output
        elif self.how == "input":
            g = self.b(h)
            h.sigmoid_()  # the second layer's input changes after the layer used it
            h = g + h
        elif self.how == "hook_like":
            h = h.clone()
            h.add_(1.0).abs_()
        return self.c(h if self.how != "residual" else torch.tanh(h))


@pytest.mark.parametrize("how", ["method", "functional", "residual", "scale", "slice", "hook_like"])
@pytest.mark.parametrize("method", METHODS)
def test_functional_inplace_ops_in_forward(how: str, method: str) -> None:
    model = seeded(lambda: FunctionalInplace(how))
    x = torch.randn(6, 4, dtype=torch.float64)
    assert_exact(empirical_ntk(model, x, method=method), brute_force_ntk(model, x))


@pytest.mark.parametrize("method", METHODS)
def test_layer_input_overwritten_after_use_is_an_error_not_a_number(method: str) -> None:
    """Autograd itself cannot differentiate this model (training would raise too): so must we."""
    model = seeded(lambda: FunctionalInplace("input"))
    x = torch.randn(6, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        brute_force_ntk(model, x)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        empirical_ntk(model, x, method=method)


# ------------------------------------------------------------- compiled and wrapped modules
def test_compiled_module_eager_backend() -> None:
    model = seeded(lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True), nn.Linear(8, 2)))
    compiled = torch.compile(model, backend="eager")
    x = torch.randn(6, 4, dtype=torch.float64)
    assert_exact(empirical_ntk(compiled, x), brute_force_ntk(model, x))


def test_compiled_submodule_eager_backend() -> None:
    model = seeded(lambda: nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)))
    reference = copy.deepcopy(model)
    model[0] = torch.compile(model[0], backend="eager")
    x = torch.randn(6, 4, dtype=torch.float64)
    assert_exact(empirical_ntk(model, x), brute_force_ntk(reference, x))


# -------------------------------------------------------------------------------- PReLU
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("n", [1, 3, 6])
@pytest.mark.parametrize("method", METHODS)
def test_prelu_every_chunk_size(channels: int, n: int, method: str) -> None:
    model = seeded(lambda: nn.Sequential(nn.Linear(4, 3), nn.PReLU(channels), nn.Linear(3, 3)))
    with torch.no_grad():
        model[1].weight.uniform_(-0.5, 0.5)
    x = torch.randn(n, 4, dtype=torch.float64)
    assert_exact(empirical_ntk(model, x, method=method), brute_force_ntk(model, x))


def test_prelu_chunked_under_a_small_budget() -> None:
    model = seeded(lambda: nn.Sequential(nn.Linear(4, 3), nn.PReLU(3), nn.Linear(3, 3)))
    x = torch.randn(9, 4, dtype=torch.float64)
    K = empirical_ntk(model, x, memory_budget=40_000)
    assert_exact(K, brute_force_ntk(model, x))


# --------------------------------------------------------------------------- embeddings
EMBEDDINGS = {
    "plain": {},
    "padding_idx": {"padding_idx": 2},
    "max_norm": {"max_norm": 1.0},
    "scale_grad_by_freq": {"scale_grad_by_freq": True},
    "sparse": {"sparse": True},
    "norm_type": {"max_norm": 0.5, "norm_type": 1.0},
}


class Bag(nn.Module):
    def __init__(self, **options: object) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 4, **options)  # type: ignore[arg-type]
        self.head = nn.Linear(4, 2)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.emb(t)).sum(1))


@pytest.mark.parametrize("option", sorted(EMBEDDINGS))
@pytest.mark.parametrize("method", METHODS)
def test_embedding_options(option: str, method: str) -> None:
    model = seeded(lambda: Bag(**EMBEDDINGS[option]))
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    t = torch.tensor([[1, 2, 1, 3], [2, 2, 5, 0], [6, 1, 1, 1], [0, 3, 4, 2]])
    R = brute_force_ntk(model, t)
    assert_exact(empirical_ntk(model, t, method=method), R)
    for n, p in model.named_parameters():  # max_norm renormalises rows in place: not ours
        assert torch.equal(p, weights[n]), n


# ------------------------------------------------------------- parametrisations and hooks
def _norms() -> dict[str, Callable[[], nn.Module]]:
    def sn_old() -> nn.Module:
        return nn.utils.spectral_norm(nn.Linear(4, 8))

    def wn_old() -> nn.Module:
        return nn.utils.weight_norm(nn.Linear(4, 8))

    return {
        "weight_norm": lambda: parametrizations.weight_norm(nn.Linear(4, 8)),
        "spectral_norm": lambda: parametrizations.spectral_norm(nn.Linear(4, 8)),
        "orthogonal": lambda: parametrizations.orthogonal(nn.Linear(8, 8)),
        "weight_norm_hook": wn_old,
        "spectral_norm_hook": sn_old,
    }


@pytest.mark.parametrize("norm", sorted(_norms()))
@pytest.mark.parametrize("method", METHODS)
def test_weight_parametrisations(norm: str, method: str) -> None:
    first = _norms()[norm]
    width_in = 8 if norm == "orthogonal" else 4
    model = seeded(lambda: nn.Sequential(first(), nn.Tanh(), nn.Linear(8, 2)))
    x = torch.randn(5, width_in, dtype=torch.float64)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    R = brute_force_ntk(model, x)
    assert_exact(empirical_ntk(model, x, method=method), R)
    assert_exact(empirical_ntk(model, x, method=method, train_mode=True), R, rtol=1e-8) \
        if "spectral" not in norm else None
    if "spectral" in norm:  # power iteration in train mode: buffers must come back unchanged
        empirical_ntk(model, x, method=method, train_mode=True)
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n


def test_forward_hooks_and_pre_hooks() -> None:
    model = seeded(lambda: nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)))
    model[0].register_forward_pre_hook(lambda m, a: (a[0] * 2.0,))
    model[0].register_forward_hook(lambda m, a, y: y.mul_(0.5))  # in place, inside a hook
    model[2].register_forward_hook(lambda m, a, y: y + 1.0)
    x = torch.randn(6, 4, dtype=torch.float64)
    for method in METHODS:
        assert_exact(empirical_ntk(model, x, method=method), brute_force_ntk(model, x))


# --------------------------------------------------------------------- recurrent and norms
RECURRENT = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


class Recurrent(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.rnn = RECURRENT[kind](3, 5, batch_first=True)
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


@pytest.mark.parametrize("kind", sorted(RECURRENT))
def test_recurrent_layers(kind: str) -> None:
    model = seeded(lambda: Recurrent(kind))
    x = torch.randn(4, 6, 3, dtype=torch.float64)
    assert_exact(empirical_ntk(model, x), brute_force_ntk(model, x))


NORMS = {
    "group_norm": (lambda: nn.GroupNorm(2, 4), (4, 5, 5)),
    "instance_norm": (lambda: nn.InstanceNorm2d(4, affine=True), (4, 5, 5)),
    "batch_norm_eval": (lambda: nn.BatchNorm2d(4), (4, 5, 5)),
    "layer_norm_2d": (lambda: nn.LayerNorm([5, 5]), (4, 5, 5)),
    "rms_norm": (lambda: nn.RMSNorm(5), (4, 5, 5)),
}


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_normalisation_layers(norm: str) -> None:
    layer, shape = NORMS[norm]
    model = seeded(lambda: nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), layer(),
                                         nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(100, 2)))
    with torch.no_grad():  # non-trivial affine parameters and running statistics
        for p in model[1].parameters():
            p.uniform_(0.5, 1.5)
        for name in ("running_mean", "running_var"):
            if hasattr(model[1], name) and getattr(model[1], name) is not None:
                getattr(model[1], name).uniform_(0.5, 1.5)
    x = torch.randn(5, *shape, dtype=torch.float64)
    assert_exact(empirical_ntk(model, x), brute_force_ntk(model, x))


# ------------------------------------------------------------------- custom autograd, reuse
class CubeFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return 3 * x**2 * g


class Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 6), nn.Linear(6, 2)
        self.scale = nn.Parameter(torch.ones(6) * 0.7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(CubeFn.apply(self.a(x)) * self.scale)


class Reused(nn.Module):
    """One layer used twice, once on a residual path, with a shared bias-free projection."""

    def __init__(self) -> None:
        super().__init__()
        self.block, self.proj = nn.Linear(5, 5), nn.Linear(5, 5, bias=False)
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.block(x))
        h = h + torch.tanh(self.block(self.proj(h)))
        return self.head(self.proj(h))


@pytest.mark.parametrize("build", [Custom, Reused], ids=["custom_function", "reused"])
@pytest.mark.parametrize("method", METHODS)
def test_custom_function_and_reuse(build: Callable[[], nn.Module], method: str) -> None:
    model = seeded(build)
    x = torch.randn(6, model.a.in_features if isinstance(model, Custom) else 5,
                    dtype=torch.float64)
    assert_exact(empirical_ntk(model, x, method=method), brute_force_ntk(model, x))


def test_frozen_subset_with_inplace_activation() -> None:
    model = seeded(lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True),
                                         nn.Linear(8, 8), nn.ReLU(inplace=True), nn.Linear(8, 2)))
    model[2].weight.requires_grad_(False)
    x = torch.randn(6, 4, dtype=torch.float64)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert_exact(empirical_ntk(model, x), brute_force_ntk(model, x, names=names))


# ---------------------------------------------------------------------- structured outputs
class TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a(x), torch.tanh(self.b(x))


class DictOut(TupleOut):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        a, b = super().forward(x)
        return {"logits": a, "aux": b}


def test_tuple_and_dict_outputs_need_a_selector() -> None:
    x = torch.randn(5, 4, dtype=torch.float64)
    for model in (seeded(TupleOut), seeded(DictOut)):
        with pytest.raises(ValueError, match=r"returned a (tuple|dict).*output=lambda out"):
            empirical_ntk(model, x)
    model = seeded(DictOut)
    K = empirical_ntk(model, x, output=lambda out: out["logits"])
    assert_exact(K, brute_force_ntk(model, x, select=lambda out: out["logits"]))
    model = seeded(TupleOut)
    K = empirical_ntk(model, x, output=lambda out: out[1][:, 0])
    assert_exact(K, brute_force_ntk(model, x, select=lambda out: out[1][:, 0]))


def test_gradient_hooks_on_parameters_are_named_in_a_warning() -> None:
    """A hook that rescales a parameter's gradient changes training, not the derivative: the
    kernel is the derivative's (brute force with the hook removed), and a warning says so."""
    model = seeded(lambda: nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)))
    x = torch.randn(5, 4, dtype=torch.float64)
    R = brute_force_ntk(model, x)
    model[0].weight.register_hook(lambda g: 2.0 * g)
    with pytest.warns(UserWarning, match=r"\['0.weight'\] have gradient hooks"):
        K = empirical_ntk(model, x)
    assert_exact(K, R)



# ----------------------------------------------------- models a hostile new user brought
class SortUnsort(nn.Module):
    """Samples reordered around a layer (as sort-by-length pipelines do), then restored."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        perm = torch.argsort(x[:, 0])
        return self.b(torch.tanh(self.a(x[perm]))[torch.argsort(perm)])


class TimeMajorTrimmed(nn.Module):
    """Time-major rows trimmed to the batch's longest sequence: L = n by coincidence."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.a, self.h = nn.Embedding(10, 4), nn.Linear(4, 8), nn.Linear(8, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = ids != 0
        length = int(mask.sum(1).max())
        ids, mask = ids[:, :length].T, mask[:, :length].T
        return self.h((torch.tanh(self.a(self.emb(ids))) * mask.unsqueeze(-1)).sum(0))


class PhysicsInformed(nn.Module):
    """Returns u and du/dx: the weights also act inside the backward graph built in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = x.clone().requires_grad_(True)
            u = self.net(x)
            du = torch.autograd.grad(u.sum(), x, create_graph=True)[0]
        return torch.cat([u, du], dim=1)


class ForwardModeInside(PhysicsInformed):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.autograd.forward_ad as fwAD
        with fwAD.dual_level():
            u, du = fwAD.unpack_dual(self.net(fwAD.make_dual(x, torch.ones_like(x))))
        return torch.cat([u, du], 1)


class ListKeyword(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x))) * torch.cat(tensors=[self.a.bias, self.b.bias]).sum()


class NoGradInside(ListKeyword):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            h = torch.tanh(self.a(x))
        return self.b(h)


class WritesItsInput(ListKeyword):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.mul_(0.5)
        return self.b(torch.tanh(self.a(x)))


class VmapInside(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.h = nn.Linear(3, 4), nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_position = torch.func.vmap(lambda xi: torch.tanh(self.a(xi)), in_dims=1, out_dims=1)
        return self.h(per_position(x)).sum(1)


class VectorWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w, self.a = nn.Parameter(torch.randn(5)), nn.Linear(3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(torch.tanh(self.a(x)), self.w).unsqueeze(1)  # a 1-d weight


HOSTILE = {
    "sort_unsort": (SortUnsort, lambda: torch.randn(6, 3, dtype=torch.float64)),
    "time_major_trimmed": (TimeMajorTrimmed, lambda: torch.tensor(
        [[3, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6], [7, 8, 9, 0, 0, 0], [2, 2, 2, 2, 0, 0],
         [5, 4, 0, 0, 0, 0], [9, 1, 8, 2, 7, 0]])),
    "physics_informed": (PhysicsInformed, lambda: torch.randn(6, 2, dtype=torch.float64)),
    "forward_mode_inside": (ForwardModeInside, lambda: torch.randn(6, 2, dtype=torch.float64)),
    "list_keyword": (ListKeyword, lambda: torch.randn(6, 3, dtype=torch.float64)),
    "no_grad_inside": (NoGradInside, lambda: torch.randn(6, 3, dtype=torch.float64)),
    "vmap_inside": (VmapInside, lambda: torch.randn(5, 4, 3, dtype=torch.float64)),
    "vector_weight": (VectorWeight, lambda: torch.randn(6, 3, dtype=torch.float64)),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
@pytest.mark.parametrize("method", METHODS)
def test_models_a_hostile_user_brought(case: str, method: str) -> None:
    build, make = HOSTILE[case]
    model, x = seeded(build), make()
    assert_exact(empirical_ntk(model, x, method=method), brute_force_ntk(model, x))


def test_sort_unsort_with_only_two_samples_swapped() -> None:
    model = seeded(SortUnsort)
    x = torch.randn(6, 3, dtype=torch.float64)
    x[:, 0] = torch.tensor([0.0, 2.0, 1.0, 3.0, 4.0, 5.0])
    assert_exact(empirical_ntk(model, x), brute_force_ntk(model, x))


def test_forward_writing_its_input_never_reaches_the_callers_tensor() -> None:
    model, x = seeded(WritesItsInput), torch.randn(6, 3, dtype=torch.float64)
    kept = x.clone()
    R = brute_force_ntk(model, x.clone())
    assert_exact(empirical_ntk(model, x, verify=True), R)
    assert torch.equal(x, kept)


class BatchMean(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how, self.a, self.b = how, nn.Linear(3, 8), nn.Linear(8, 1)
        self.norm = nn.BatchNorm1d(8, track_running_stats=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if self.how == "centred":
            h = h - h.mean(0)
        elif self.how == "batch_norm":
            h = self.norm(h)
        out = self.b(torch.tanh(h))
        return out * x.shape[0] if self.how == "scaled" else out


@pytest.mark.parametrize("how", ["centred", "batch_norm", "scaled"])
@pytest.mark.parametrize("method", METHODS)
def test_models_that_couple_samples_are_refused(how: str, method: str) -> None:
    model, x = seeded(lambda: BatchMean(how)), torch.randn(6, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"samples are coupled .*per-sample NTK is undefined"):
        empirical_ntk(model, x, method=method)


class RandomForward(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how, self.a, self.b = how, nn.Linear(3, 8), nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x))
        h = F.dropout(h, 0.5) if self.how == "dropout" else F.rrelu(h, training=self.training)
        return self.b(h)


@pytest.mark.parametrize("how", ["dropout", "rrelu"])
def test_random_forwards_are_refused(how: str) -> None:
    model, x = seeded(lambda: RandomForward(how)), torch.randn(6, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=rf"draws random numbers \({how}"):
        empirical_ntk(model, x, train_mode=True)
    if how == "rrelu":  # deterministic in eval mode
        assert_exact(empirical_ntk(model, x), brute_force_ntk(model, x))


class Unregistered(ListKeyword):
    def __init__(self) -> None:
        super().__init__()
        self.refs = [self.a.weight]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x))) + (x @ self.refs[0].T).sum(-1, keepdim=True)


def test_parameters_behind_unregistered_references_are_refused() -> None:
    model, x = seeded(Unregistered), torch.randn(6, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"\['a.weight'\] are reached through references"):
        empirical_ntk(model, x)


def test_a_forward_that_rebinds_a_buffer_leaves_it_as_it_was() -> None:
    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 2)
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls = self.calls + 1
            return self.a(x)

    model = seeded(Counting)
    empirical_ntk(model, torch.randn(5, 3, dtype=torch.float64), verify=True)
    assert model.calls.item() == 0


def test_bad_inputs_and_outputs_are_named() -> None:
    model = seeded(lambda: nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"Invalid inputs: a list;.*torch.stack\(samples\)"):
        empirical_ntk(model, [torch.randn(3), torch.randn(3)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Invalid output: True"):
        empirical_ntk(model, torch.randn(4, 3, dtype=torch.float64), output=True)

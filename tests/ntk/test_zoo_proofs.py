"""Models that hide what the structured rules assume from a proof that checks less than it seems.

Each class of issue #20, with models of our own: a coupling that leaves sample 0 unchanged, a
forward that draws from generators torch does not own, rows that only some samples own, and
forwards that used to crash inside torch. Each case is exact against brute force (float64,
one autograd backward per sample and component on a copy) or raises an error naming the cause
and the fix. Never a number that is wrong.
"""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
from brute_force import assert_exact, brute_force_ntk
from test_zoo import METHODS, seeded
from torch import nn
from torch.utils.checkpoint import checkpoint

from cosmo_optim import empirical_ntk
from cosmo_optim.ntk import guards
from cosmo_optim.ntk.per_sample import tolerance

COUPLED = r"samples are coupled .*per-sample NTK is undefined"
RANDOM = r"random function and the NTK is undefined.*Fix: use train_mode=False"


class Net(nn.Module):
    """Linear → tanh → (a step that may couple samples) → Linear."""

    def __init__(self, d: int = 3, width: int = 8, out: int = 2) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(d, width), nn.Linear(width, out)

    def mix(self, h: torch.Tensor) -> torch.Tensor:
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.mix(torch.tanh(self.a(x))))


# ------------------------------------------------------------------------------- coupling
class Predecessor(Net):
    """Each sample mixes in its predecessor's features: sample 0 alone is unchanged."""

    def mix(self, h: torch.Tensor) -> torch.Tensor:
        return torch.cat([h[:1], h[1:] + 0.5 * h[:-1]])


class Capacity(Net):
    """Two experts with a capacity computed over the batch (half of it, in arrival order):
    samples past an expert's capacity are dropped, so the first sample never is."""

    def __init__(self) -> None:
        super().__init__()
        self.router, self.experts = nn.Linear(8, 2), nn.ModuleList(nn.Linear(8, 8)
                                                                    for _ in range(2))

    def mix(self, h: torch.Tensor) -> torch.Tensor:
        choice = self.router(h).argmax(-1)
        capacity = max(1, h.shape[0] // 2)
        out = torch.zeros_like(h)
        for e, expert in enumerate(self.experts):
            idx = (choice == e).nonzero().flatten()[:capacity]
            out = out.index_add(0, idx, expert(h[idx]))
        return h + out


class PaddedMean(nn.Module):
    """Sequences padded to the batch's longest one, then averaged over every position: a
    sample's mean depends on the others' lengths (not on its own when it is the longest)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 8), nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        valid = x[..., -1] > 0  # (N, T): the last feature marks real positions
        longest = int(valid.sum(1).max())
        h = torch.tanh(self.a(x[:, :longest])) * valid[:, :longest, None]
        return self.b(h.mean(1))


def padded_batch(n: int) -> torch.Tensor:
    x = torch.randn(n, 6, 3, dtype=torch.float64)
    lengths = [6] + [2 + i % 3 for i in range(n - 1)]  # sample 0 is the longest
    for i, length in enumerate(lengths):
        x[i, :length, -1], x[i, length:, -1] = 1.0, -1.0
    return x


class SmallShift(Net):
    """A float32 forward that adds a hundredth of the batch maximum: a coupling below the old
    100× tolerance of the scout but far above the kernel's own tolerance."""

    def mix(self, h: torch.Tensor) -> torch.Tensor:
        return h + 0.003 * h.amax(0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", ["predecessor", "capacity", "padded"])
def test_couplings_that_leave_sample_0_unchanged_are_refused(case: str, method: str) -> None:
    torch.manual_seed(1)
    model = {"predecessor": Predecessor, "capacity": Capacity, "padded": PaddedMean}[case]()
    model = model.double()
    x = padded_batch(7) if case == "padded" else torch.randn(7, 3, dtype=torch.float64)
    alone, batched = model(x[:1]), model(x)[:1]
    torch.testing.assert_close(alone, batched, rtol=1e-12, atol=0)  # sample 0 hides it
    with pytest.raises(ValueError, match=COUPLED):
        empirical_ntk(model, x, method=method)


def in_batch_ntk(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Σ_c ∂f_ic/∂θ · ∂f_jc/∂θ with f computed on the whole batch (one Jacobian by jacrev)."""
    n = x.shape[0]
    jac = torch.func.jacrev(lambda p: torch.func.functional_call(model, p, (x,)))(
        dict(model.named_parameters()))
    J = torch.cat([g.reshape(n, -1, g[0, 0].numel()) for g in jac.values()], -1)
    return torch.einsum("icp,jcp->ij", J, J)


def test_a_small_float32_coupling_is_refused() -> None:
    torch.manual_seed(1)
    model, x = SmallShift(), torch.randn(8, 3)
    wrong = brute_force_ntk(model.double(), x.double())
    right = in_batch_ntk(model, x.double())
    assert (wrong - right).abs().max() / right.abs().max() > 10 * tolerance(torch.float32)
    with pytest.raises(ValueError, match=COUPLED):  # neither kernel is the per-sample NTK
        empirical_ntk(model.float(), x)


@pytest.mark.parametrize("k", range(6))
def test_no_fixed_sample_can_hide_a_coupling(k: int) -> None:
    """A coupling of one sample to its neighbour, for each sample in turn."""

    class One(Net):
        def mix(self, h: torch.Tensor) -> torch.Tensor:
            if h.shape[0] <= k:
                return h
            return torch.cat([h[:k], h[k : k + 1] + 0.1 * h[(k + 1) % h.shape[0]], h[k + 1 :]])

    model, x = seeded(One), torch.randn(6, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=COUPLED):
        empirical_ntk(model, x)


@pytest.mark.parametrize("eps", [1e-11, 1e-6])
def test_a_coupling_under_the_tolerance_cannot_move_the_kernel_past_it(eps: float) -> None:
    """The tolerance is derived so that what passes leaves the kernel within its own."""

    class Mean(Net):
        def mix(self, h: torch.Tensor) -> torch.Tensor:
            return h + eps * h.mean(0)

    model, x = seeded(Mean), torch.randn(6, 3, dtype=torch.float64)
    if eps > guards.coupling_tolerance(torch.float64, x.device):
        with pytest.raises(ValueError, match=COUPLED):
            empirical_ntk(model, x)
        return
    assert_exact(empirical_ntk(model, x), in_batch_ntk(model, x), rtol=tolerance(torch.float64))


# ----------------------------------------------------------------------------- randomness
class NumpyNoise(Net):
    def __init__(self) -> None:
        super().__init__()
        self.rng = np.random.default_rng(0)  # private: no global state moves

    def mix(self, h: torch.Tensor) -> torch.Tensor:
        noise = torch.as_tensor(self.rng.normal(size=h.shape[1:]), dtype=h.dtype)
        return h + 0.1 * noise


class TimeMask(nn.Module):
    """SpecAugment-style masking of a random span of time steps, from a private generator."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.gen = nn.Linear(3, 8), nn.Linear(8, 1), torch.Generator()
        self.gen.manual_seed(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start = int(torch.randint(0, x.shape[1] - 2, (1,), generator=self.gen))
        keep = torch.ones(x.shape[1], dtype=x.dtype)
        keep[start : start + 2] = 0
        return self.b(torch.tanh(self.a(x)) * keep[:, None]).mean(1)


class LayerDrop(nn.Module):
    """Each of four residual blocks skipped with probability 0.3 by Python's `random`."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.out = nn.Linear(3, 8), nn.Linear(8, 1)
        self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        for block in self.blocks:
            if random.random() >= 0.3:
                h = h + torch.tanh(block(h))
        return self.out(h)


@pytest.mark.parametrize("method", ["auto", "jacobian", "sketch"])
@pytest.mark.parametrize("case", ["numpy_private", "time_mask", "layer_drop"])
def test_forwards_drawing_from_generators_torch_does_not_own_are_refused(
        case: str, method: str) -> None:
    torch.manual_seed(0)
    build = {"numpy_private": NumpyNoise, "time_mask": TimeMask, "layer_drop": LayerDrop}[case]
    model = build().double()
    x = torch.randn(6, 5, 3, dtype=torch.float64) if case == "time_mask" else torch.randn(
        6, 3, dtype=torch.float64)
    py_state = random.getstate()
    with pytest.raises(ValueError, match=RANDOM):
        empirical_ntk(model, x, method=method)
    assert random.getstate() == py_state  # the user's generators are left as they were


def test_a_random_forward_is_not_diagnosed_as_a_coupling() -> None:
    def quiet_twice(seed: int) -> bool:
        draws = torch.rand(3, generator=torch.Generator().manual_seed(seed))
        return bool(draws[0] >= 0.5 and draws[1] >= 0.5 and draws[2] < 0.5)

    seed = next(s for s in range(100) if quiet_twice(s))

    class Rare(Net):
        """Noise on half the calls, from a private generator whose first two draws (the
        scout's two forwards) are quiet."""

        def __init__(self) -> None:
            super().__init__()
            self.gen = torch.Generator().manual_seed(seed)

        def mix(self, h: torch.Tensor) -> torch.Tensor:
            return h + 0.5 if float(torch.rand((), generator=self.gen)) < 0.5 else h

    with pytest.raises(ValueError, match=RANDOM):
        empirical_ntk(seeded(Rare), torch.randn(6, 3, dtype=torch.float64))


# -------------------------------------------------------------------------- row ownership
class SortedTokens(nn.Module):
    """Tokens of the whole batch sorted by a router score, passed through an expert in that
    order, reshaped to (N, T, d) and unsorted: every call is batch-first, yet row s of the
    expert's input belongs to whichever sample its token came from. Per-sample overall."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.expert, self.out = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))  # (N, T, 4)
        n, t, d = h.shape
        flat = h.reshape(n * t, d)
        order = x.reshape(n * t, -1)[:, 0].argsort(descending=True)
        y = self.expert(flat[order].reshape(n, t, d)).reshape(n * t, d)[order.argsort()]
        return self.out(torch.tanh(y.reshape(n, t, d))).sum(1)


def presorted_for_the_first_eight(n: int) -> torch.Tensor:
    """Token scores descending over the batch on the 8 samples an 8-sample proof would take
    (linspace over the batch), interleaved elsewhere."""
    x = torch.randn(n, 2, 3, dtype=torch.float64)
    spread = torch.linspace(0, n - 1, 8).round().long().tolist()
    score = iter(torch.arange(2 * n, 0, -1, dtype=torch.float64).tolist())
    for i in spread + [i for i in range(n) if i not in spread]:
        x[i, :, 0] = torch.tensor([next(score), next(score)])
    others = [i for i in range(n) if i not in spread]
    x[others, 1, 0] += 2 * n  # their second tokens jump ahead of everyone's
    return x


@pytest.mark.parametrize("method", METHODS)
def test_rows_owned_by_a_subset_only_fall_back_to_the_exact_path(method: str) -> None:
    model, x = seeded(SortedTokens), presorted_for_the_first_eight(12)
    assert_exact(empirical_ntk(model, x, method=method), brute_force_ntk(model, x))


def test_rows_not_owned_in_a_later_chunk_fall_back_too() -> None:
    """The stored plan's chunks each prove ownership (a budget of a few samples per chunk)."""
    model, x = seeded(SortedTokens), presorted_for_the_first_eight(12)
    kernel = empirical_ntk(model, x, output="full", memory_budget=40_000)
    reference = brute_force_ntk(model, x)
    assert_exact(kernel.diagonal(dim1=2, dim2=3).sum(-1), reference)


# --------------------------------------------------------------------- crashes inside torch
class Checkpointed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.norm, self.b = nn.Linear(3, 8), nn.LayerNorm(8), nn.Linear(8, 2)

    def block(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.norm(self.a(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(checkpoint(self.block, x, use_reentrant=False))


@pytest.mark.parametrize("method", METHODS)
def test_float64_kernel_of_a_float32_model_with_non_reentrant_checkpointing(method: str) -> None:
    torch.manual_seed(0)
    model, x = Checkpointed(), torch.randn(5, 3)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    kernel = empirical_ntk(model, x, dtype=torch.float64, method=method)
    assert kernel.dtype == torch.float64
    assert_exact(kernel, brute_force_ntk(copy.deepcopy(model).double(), x.double()))
    assert all(torch.equal(t, before[n]) and t.dtype == torch.float32
               for n, t in model.state_dict().items())


class CastsInside(Net):
    def mix(self, h: torch.Tensor) -> torch.Tensor:
        return h.to(torch.float32)


def test_a_forward_that_casts_inside_names_the_cast() -> None:
    model, x = CastsInside(), torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"Invalid dtype: .*mixes dtypes.*x\.float\(\).*Fix:"):
        empirical_ntk(model, x, dtype=torch.float64)
    assert empirical_ntk(model, x).dtype == torch.float32  # its own dtype works


def test_inputs_of_another_dtype_than_the_model_name_it() -> None:
    with pytest.raises(ValueError, match=r"inputs of torch\.float64 and parameters of "
                                         r"torch\.float32"):
        empirical_ntk(Net(), torch.randn(4, 3, dtype=torch.float64))


def test_a_scripted_submodule_is_named() -> None:
    model = nn.Sequential(nn.Linear(3, 4), torch.jit.script(nn.Sequential(nn.Tanh(),
                                                                          nn.Linear(4, 1))))
    with pytest.raises(ValueError, match=r"module '1' is a torch\.jit\.script.*Fix: pass the "
                                         r"eager nn\.Module"):
        empirical_ntk(model, torch.randn(4, 3))


def test_tf32_gets_the_low_precision_tolerance() -> None:
    """Checked without a GPU: only the backend flags are read."""
    cuda, matmul, cudnn = torch.device("cuda"), torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.allow_tf32, cudnn.allow_tf32
    try:
        matmul.allow_tf32, cudnn.allow_tf32 = False, False
        assert tolerance(torch.float32, cuda) == tolerance(torch.float32)
        cudnn.allow_tf32 = True  # cuDNN's default: convolutions round to TensorFloat-32
        assert tolerance(torch.float32, cuda) > 100 * tolerance(torch.float32)
        assert tolerance(torch.float64, cuda) == tolerance(torch.float64)
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


# ------------------------------------------- found by a hostile user of the round-two engine
class SkipNormAlone(Net):
    """Eval-mode BatchNorm skipped for a batch of one (a common guard against BN at N = 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(8).eval()
        self.norm.running_mean.uniform_(-1, 1)
        self.norm.running_var.uniform_(0.5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.b(torch.tanh(self.norm(h) if x.shape[0] > 1 else h))


class TopHalf(Net):
    """The top half of the batch by one feature keeps its features, the rest are doubled."""

    def mix(self, h: torch.Tensor) -> torch.Tensor:
        top = h[:, 0].topk(max(1, h.shape[0] // 2)).indices
        return h.index_fill(0, top, 0.0) + h


@pytest.mark.parametrize("method", ["auto", "structured"])
@pytest.mark.parametrize("case", ["skip_norm_alone", "top_half"])
def test_forwards_that_change_with_the_batch_size_or_rank_are_refused(case: str,
                                                                      method: str) -> None:
    model = seeded({"skip_norm_alone": SkipNormAlone, "top_half": TopHalf}[case])
    with pytest.raises(ValueError, match=COUPLED):
        empirical_ntk(model, torch.randn(8, 3, dtype=torch.float64), method=method)


class Memo(Net):
    """Caches each sample's output by its values, and counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.cache: dict[tuple[float, ...], torch.Tensor] = {}
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        for xi in x:
            key = tuple(xi.tolist())
            if key not in self.cache:
                self.cache[key] = super().forward(xi[None])
        return torch.cat([self.cache[tuple(xi.tolist())] for xi in x])


@pytest.mark.parametrize("method", METHODS)
def test_counters_and_caches_in_forward_are_reset_and_left_as_they_were(method: str) -> None:
    model, x = seeded(Memo), torch.randn(6, 3, dtype=torch.float64)
    reference = brute_force_ntk(model, x)
    assert_exact(empirical_ntk(model, x, method=method, verify=True), reference)
    assert model.cache == {} and model.calls == 0


class Clamped(Net):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.a.weight.clamp_(-0.3, 0.3)  # weight clipping inside forward
        return super().forward(x)


@pytest.mark.parametrize("method", [*METHODS, "sketch"])
def test_a_forward_writing_its_own_weights_never_reaches_the_users(method: str) -> None:
    model, x = seeded(Clamped), torch.randn(6, 3, dtype=torch.float64)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    empirical_ntk(model, x, method=method, verify=method != "sketch")
    assert all(torch.equal(t, before[n]) for n, t in model.state_dict().items())


def test_verify_leaves_max_norm_embedding_rows_as_they_were() -> None:
    model = seeded(lambda: nn.Sequential(nn.Embedding(7, 4, max_norm=0.5), nn.Flatten(),
                                         nn.Linear(16, 2)))
    ids = torch.tensor([[1, 2, 1, 3], [2, 2, 5, 0], [6, 1, 1, 1], [0, 3, 4, 2]])
    weight = model[0].weight.detach().clone()
    empirical_ntk(model, ids, verify=True)
    assert torch.equal(model[0].weight, weight)


class Reentrant(Checkpointed):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = checkpoint(lambda t: torch.tanh(self.norm(t)), self.a(x), use_reentrant=True)
        return self.b(h)


class PairsOnly(Net):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x)).reshape(-1, 16)  # needs an even batch
        return h.sum(-1, keepdim=True).repeat_interleave(2, 0)


class Unpicklable(Checkpointed):
    def __init__(self) -> None:
        super().__init__()
        self.lock = __import__("threading").Lock()  # deepcopy refuses a lock


def test_more_raw_torch_errors_become_named_ones() -> None:
    x = torch.randn(6, 3, dtype=torch.float64)
    cases = [
        (lambda: empirical_ntk(Reentrant().double(), x), r"use_reentrant=True.*Fix: "),
        (lambda: empirical_ntk(PairsOnly().double(), x), r"batch of one sample.*Fix: make"),
        (lambda: empirical_ntk(Unpicklable(), x.float(), dtype=torch.float64),
         r"cannot be deep-copied.*Fix: cast"),
        (lambda: empirical_ntk(Net().to(torch.complex128), x.to(torch.complex128)),
         r"are complex.*Fix:"),
        (lambda: empirical_ntk(Net().double(), x, dtype=torch.int64), r"Invalid dtype: torch\.int64"),
        (lambda: empirical_ntk(Net().to("meta"), x.to("meta")), r"meta device.*Fix: materialise"),
        (lambda: empirical_ntk(Net().double(), x, train_mode="yes"), r"Invalid train_mode: 'yes'"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_params_as_a_generator_is_read_once() -> None:
    model, x = seeded(Net), torch.randn(4, 3, dtype=torch.float64)
    kernel = empirical_ntk(model, x, params=(n for n in ["b.weight"]))
    assert_exact(kernel, brute_force_ntk(model, x, names={"b.weight"}))


def test_float32_outputs_that_cancel_are_not_mistaken_for_a_coupling() -> None:
    """Outputs a thousand times smaller than the terms that make them: batched and one-sample
    forwards round differently by more than the tolerance relative to |f|; the float64 recheck
    tells rounding from coupling."""
    torch.manual_seed(0)
    model, x = Net(out=1, width=64), 1e-4 * torch.randn(16, 3)  # features nearly constant
    with torch.no_grad():
        model.b.weight.mul_(30)
        model.b.bias.sub_(model(x).mean())
    f = model(x).detach()
    alone = torch.cat([model(x[i : i + 1]) for i in range(16)]).detach()
    noise = float((f - alone).abs().max() / f.abs().max())
    assert guards.coupling_tolerance(torch.float32, x.device) < noise or noise == 0
    kernel = empirical_ntk(model, x)
    assert_exact(kernel.double(), brute_force_ntk(model.double(), x.double()), rtol=1e-4)


def test_weights_initialised_in_place_are_not_taken_for_weights_the_forward_writes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """nn.init bumps a parameter's version counter; only a write during the scout's forward
    makes a weight private (a private copy would push the per-sample Jacobian off vmap)."""
    from cosmo_optim.ntk import per_sample

    model = seeded(lambda: nn.Sequential(nn.Linear(3, 8), nn.GroupNorm(2, 8), nn.Linear(8, 1)))
    for p in model.parameters():
        nn.init.normal_(p)
    loops: list[int] = []
    loop = per_sample.PerSampleJacobian._loop
    monkeypatch.setattr(per_sample.PerSampleJacobian, "_loop",
                        lambda self, block, i: loops.append(i) or loop(self, block, i))
    x = torch.randn(12, 3, dtype=torch.float64)
    assert_exact(empirical_ntk(model, x), brute_force_ntk(model, x))
    assert len(loops) == 1  # the one spot check of vmap's rows, not a loop over samples

"""The engine's cost on the model families of issue #30, against the brute-force reference.

For each family the tests check (tests/ntk/test_model_inputs.py, test_calls.py, test_own_function.py,
test_quantised.py, test_state.py, test_sharded.py), time `empirical_ntk` (method="auto", trace
kernel) and the tests' own brute-force reference (tests/ntk/brute_force.py: one forward and one
`autograd.grad` per sample and output component, J Jᵀ in float64) on the same model and probe
batch, side by side in one process on one thread; each time is the best of `--repeats` runs
after one warm-up. The relative error of the kernel against the reference is printed beside it.

    python benchmarks/bench_ntk_families.py            # the table (a few minutes on 2 cores)
    python benchmarks/bench_ntk_families.py --smoke    # a tiny run that only checks it works
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "ntk"))  # the tests' reference and model builders
from brute_force import brute_force_ntk, relative_error  # noqa: E402
from families import lora, tiny_bert, tiny_gpt2, tiny_unet  # noqa: E402

from cosmo_optim import empirical_ntk  # noqa: E402
from cosmo_optim.ntk import ModelInputs  # noqa: E402

Case = tuple[nn.Module, Any, dict[str, Any], dict[str, Any]]  # model, inputs, engine, reference


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mlp(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 64), nn.GELU(),
                         nn.Linear(64, 3)).to(dtype)


class _Keywords(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 32), nn.Linear(32, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return self.b((torch.tanh(self.a(x) * scale) * mask[..., None]).sum(1))


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2).requires_grad_(False)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = (~mask)[..., None].to(x.dtype)
        return self.head((self.enc(x, src_key_padding_mask=mask) * keep).sum(1) / keep.sum(1))


class _Recurrent(nn.Module):
    """A GRU cell carrying its state from call to call (``carry=False``: the stateless twin
    that the reference runs, as every forward of the engine starts from the state at the call)."""

    def __init__(self, carry: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.cell, self.head, self.h, self.carry = nn.GRUCell(8, 32), nn.Linear(32, 3), None, carry

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.cell(x, self.h)
        if self.carry:
            self.h = h.detach()
        return self.head(h)


def _x(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(n, 8, generator=_gen(), dtype=torch.float64).to(dtype)


def _cases(n: int) -> dict[str, Callable[[], Case]]:
    """Family name -> a builder of (model, inputs, engine options, reference options)."""
    ids = torch.randint(1, 40, (n, 8), generator=_gen())
    mask = torch.ones(n, 8, dtype=torch.long)
    mask[::2, 5:] = 0
    labels = torch.randint(0, 3, (n,), generator=_gen())
    logits = lambda out: out.logits  # noqa: E731
    last = lambda out: out.logits[:, -1, :3]  # noqa: E731
    pixels = lambda out: out.sample[:, 0, :2, :2]  # noqa: E731
    correct = lambda out, index: out.gather(1, labels[index, None])  # noqa: E731
    pad = torch.zeros(n, 8, dtype=torch.bool)
    pad[::2, 5:] = True

    def keywords() -> Case:
        torch.manual_seed(0)
        b = {"x": torch.randn(n, 4, 8, generator=_gen(), dtype=torch.float64),
             "mask": (torch.rand(n, 4, generator=_gen()) > 0.3).double()}
        return _Keywords().double(), b, {}, {}

    def unet() -> Case:
        b = {"sample": torch.randn(max(n // 4, 2), 2, 8, 8, generator=_gen(), dtype=torch.float64),
             "timestep": torch.tensor(10),
             "encoder_hidden_states": torch.randn(max(n // 4, 2), 4, 8, generator=_gen(),
                                                  dtype=torch.float64)}
        return tiny_unet().double().eval(), b, {"output": pixels}, {"select": pixels}

    def qat() -> Case:
        import torch.ao.quantization as tq

        model = _mlp(torch.float32)
        model.qconfig = tq.get_default_qat_qconfig("fbgemm")
        model = tq.prepare_qat(model.train())
        model(_x(n, torch.float32))
        model.apply(tq.disable_observer)
        return model, _x(n, torch.float32), {}, {}

    def max_norm() -> Case:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Embedding(50, 32, max_norm=1.0), nn.Tanh(), nn.Flatten(),
                              nn.Linear(4 * 32, 3)).double()
        return model, torch.randint(0, 50, (n, 4), generator=_gen()), {}, {}

    return {
        "plain MLP (baseline)": lambda: (_mlp(), _x(n), {}, {}),
        "under torch.no_grad()": lambda: (_mlp(), _x(n), {"no_grad": True}, {}),
        "keyword inputs (x, mask)": keywords,
        "HF BERT, dict with padding": lambda: (
            tiny_bert().double().eval(), {"input_ids": ids, "attention_mask": mask},
            {"output": logits}, {"select": logits}),
        "diffusers UNet, scalar timestep": unet,
        "PEFT LoRA GPT-2 (train mode)": lambda: (
            lora(tiny_gpt2(), ["c_attn"]).double().train(), {"input_ids": ids},
            {"output": last, "train_mode": True}, {"select": last, "train": True}),
        "caller's autocast bf16": lambda: (
            _mlp(torch.float32), _x(n, torch.float32), {"autocast": True},
            {"autocast": torch.bfloat16}),
        "bfloat16 model": lambda: (_mlp(torch.bfloat16), _x(n, torch.bfloat16), {}, {}),
        "frozen TransformerEncoder, masked pool": lambda: (
            _Encoder().double().eval(), {"x": torch.randn(n, 8, 16, generator=_gen(),
                                                          dtype=torch.float64), "mask": pad},
            {}, {}),
        "QAT, observers frozen": qat,
        "max_norm embedding": max_norm,
        "recurrent state started afresh": lambda: (
            _Recurrent().double(), _x(n), {}, {"reference": _Recurrent(carry=False).double()}),
        "per-sample label selector": lambda: (_mlp(), _x(n), {"output": correct},
                                              {"select": correct}),
    }


def _best(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    out = fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _engine(model: nn.Module, inputs: Any, opts: dict[str, Any]) -> torch.Tensor:
    opts = dict(opts)
    grad = torch.no_grad() if opts.pop("no_grad", False) else contextlib.nullcontext()
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if opts.pop("autocast", False) \
        else contextlib.nullcontext()
    with grad, cast:
        return empirical_ntk(model, inputs, **opts)


@contextlib.contextmanager
def _one_rank() -> Iterator[None]:
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _fsdp2(n: int) -> Case:
    from torch.distributed.fsdp import fully_shard

    model = _mlp()
    plain = copy.deepcopy(model)  # the unsharded reference
    fully_shard(model[0])
    fully_shard(model[2])
    fully_shard(model)
    return model, _x(n), {}, {"reference": plain}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    n, repeats = (4, 1) if args.smoke else (args.samples, args.repeats)
    cases = _cases(n)
    if args.smoke:
        cases = {k: cases[k] for k in ("plain MLP (baseline)", "keyword inputs (x, mask)")}
    rows = []
    for name, build in cases.items():
        rows.append(_row(name, *build(), repeats))
    if not args.smoke:
        with _one_rank():
            rows.append(_row("FSDP2 fully_shard, 1 gloo rank", *_fsdp2(n), repeats))
    print(f"{'family':40s} {'N':>3s} {'engine':>9s} {'brute force':>12s} {'brute/engine':>13s}"
          f" {'rel. error':>10s}")
    for r in rows:
        print(f"{r['family']:40s} {r['N']:3d} {r['engine_s'] * 1e3:7.0f}ms "
              f"{r['brute_s'] * 1e3:10.0f}ms {r['ratio']:12.1f}x {r['error']:10.1e}")
    return rows


def _row(name: str, model: nn.Module, inputs: Any, opts: dict[str, Any],
         ref: dict[str, Any], repeats: int) -> dict[str, Any]:
    ref = dict(ref)
    reference = ref.pop("reference", model)
    engine_s, K = _best(lambda: _engine(model, inputs, opts), repeats)
    brute_s, R = _best(lambda: brute_force_ntk(reference, inputs, **ref), repeats)
    return {"family": name, "N": len(ModelInputs(inputs)), "engine_s": engine_s,
            "brute_s": brute_s, "ratio": brute_s / engine_s, "error": relative_error(K, R)}


if __name__ == "__main__":
    main()

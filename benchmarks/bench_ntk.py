"""Time and peak memory of `empirical_ntk` against the torch.func recipes and the floor.

Methods, each on the same model and probe batch (float32, scalar output, trace kernel):
  floor   one forward + backward of the probe batch (the cost any exact method must pay)
  engine  cosmo_optim.empirical_ntk (method="auto")
  jac     torch.func jacobian contraction: vmap(jacrev) per-sample Jacobian, einsum J Jᵀ
          (the tutorial recipe, Jacobian computed once since x1 = x2)
  ntvp    torch.func NTK-vector products (the tutorial's vjp/jvp recipe, vmapped over pairs)

Every (model, N, method) runs in a fresh subprocess. Time: the best of `--repeats` calls after
the first. Peak memory: the rise of the process's resident-set high-water mark
(`resource.getrusage(...).ru_maxrss`) during the first call, over the level reached after
building the model and inputs; it sees every allocation, torch's included (tracemalloc would
not). Cases estimated to take more than a minute or more than `--max-gb` are skipped and say so.

    python benchmarks/bench_ntk.py            # the real table (a few minutes on 2 cores)
    python benchmarks/bench_ntk.py --smoke    # a tiny run that only checks it works
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cosmo_optim import empirical_ntk

METHODS = ("floor", "engine", "jac", "ntvp")


class Encoder(nn.Module):
    """A transformer encoder block (d = 128, 4 heads, seq 16) with a mean-pooled scalar head."""

    def __init__(self, d: int = 128) -> None:
        super().__init__()
        self.block = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True)
        self.head = nn.Linear(d, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(x).mean(1))


def mlp(d_in: int, width: int, depth: int, act: type[nn.Module]) -> nn.Module:
    layers: list[nn.Module] = [nn.Linear(d_in, width), act()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), act()]
    return nn.Sequential(*layers, nn.Linear(width, 1))


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "MLP 64-512x4-1 tanh": (lambda: mlp(64, 512, 4, nn.Tanh), (64,)),
    "MLP 784-1024x3-1 relu": (lambda: mlp(784, 1024, 3, nn.ReLU), (784,)),
    "CNN conv32-conv64-pool-linear": (lambda: nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 12 * 12, 1)), (1, 28, 28)),
    "Transformer block d128 seq16": (Encoder, (16, 128)),
}
SMOKE_MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "MLP 8-16x2-1 tanh": (lambda: mlp(8, 16, 2, nn.Tanh), (8,)),
}


def recipe(model: nn.Module, method: str) -> Callable[[torch.Tensor], object]:
    params = {k: v.detach() for k, v in model.named_parameters()}

    def f1(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, p, (x.unsqueeze(0),)).squeeze(0)

    def floor(x: torch.Tensor) -> None:
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()

    def jac(x: torch.Tensor) -> torch.Tensor:
        J = [j.flatten(2) for j in vmap(jacrev(f1), (None, 0))(params, x).values()]
        return torch.stack([torch.einsum("Naf,Mbf->NMab", j, j) for j in J]).sum(0)

    def ntvp(x: torch.Tensor) -> torch.Tensor:
        def get_ntk(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
            out, vjp_fn = vjp(lambda p: f1(p, x1), params)

            def ntk_slice(vec: torch.Tensor) -> torch.Tensor:
                return jvp(lambda p: f1(p, x2), (params,), vjp_fn(vec))[1]

            return vmap(ntk_slice)(torch.eye(out.numel()).view(out.numel(), -1))

        return vmap(vmap(get_ntk, (None, 0)), (0, None))(x, x)

    fns = {"floor": floor, "jac": jac, "ntvp": ntvp,
           "engine": lambda x: empirical_ntk(model, x)}
    return fns[method]


def child(
    name: str, n: int, method: str, repeats: int, smoke: bool, threads: int
) -> dict[str, float]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    make, shape = (SMOKE_MODELS if smoke else MODELS)[name]
    model = make().eval()
    x = torch.randn(n, *shape)
    fn = recipe(model, method)
    with torch.no_grad():
        model(x[:2])  # warm the allocator and kernels before the baseline
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    fn(x)
    first = time.perf_counter() - t0
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    times = [first]
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return {"time_s": min(times[1:] or times), "peak_mb": peak_mb}


def skip_reason(name: str, n: int, method: str, max_gb: float) -> str | None:
    model, _ = MODELS.get(name, (None, None))
    P = sum(p.numel() for p in model().parameters()) if model else 0
    if method == "jac" and n * P * 4 * 2 > max_gb * 2**30:
        return f"J is {n * P * 4 / 2**30:.1f} GB"
    if method == "ntvp" and "Transformer" in name:
        return "fails: no forward-mode AD through fused attention"
    if method == "ntvp" and (n > 64 or "CNN" in name or "784" in name):
        return "> 1 min or OOM"  # measured: 22 s and +4.4 GB already for the tanh MLP, N = 64
    return None


def run_case(
    name: str, n: int, method: str, repeats: int, smoke: bool, threads: int
) -> dict[str, float]:
    if smoke:  # in-process: only checks that every recipe runs
        return child(name, n, method, repeats, smoke, threads)
    cmd = [sys.executable, __file__, "--child",
           json.dumps([name, n, method, repeats, smoke, threads])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny model, N = 8: checks it works")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--models", nargs="+", default=None,
                    help="substrings selecting model rows, e.g. CNN Transformer")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-gb", type=float, default=8.0, help="skip jac above this memory")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="torch threads per run (1 on a shared, loaded machine)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(*json.loads(args.child))))
        return []
    models = SMOKE_MODELS if args.smoke else MODELS
    if args.models:
        models = {k: v for k, v in models.items() if any(m in k for m in args.models)}
    sizes = [8] if args.smoke else args.sizes
    repeats = 1 if args.smoke else args.repeats
    print(f"| model | N | {' | '.join(METHODS)} | engine/floor | jac/engine (time, mem) |")
    print("|---|---|" + "---|" * (len(METHODS) + 2))
    rows: list[dict[str, object]] = []
    for name in models:
        for n in sizes:
            row: dict[str, object] = {"model": name, "N": n}
            for method in METHODS:
                reason = None if args.smoke else skip_reason(name, n, method, args.max_gb)
                row[method] = reason or run_case(name, n, method, repeats, args.smoke, args.threads)
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


def format_row(row: dict[str, object]) -> str:
    def cell(v: object) -> str:
        if isinstance(v, dict):
            return f"{v['time_s'] * 1e3:.0f} ms, +{max(v['peak_mb'], 0):.0f} MB"
        return f"skipped ({v})"

    eng, flo, jac = row["engine"], row["floor"], row["jac"]
    ratio = f"{eng['time_s'] / flo['time_s']:.2f}x" if isinstance(eng, dict) and isinstance(
        flo, dict) else "-"
    vs = "-"
    if isinstance(jac, dict) and isinstance(eng, dict):
        mem = jac["peak_mb"] / max(eng["peak_mb"], 1.0)
        vs = f"{jac['time_s'] / eng['time_s']:.1f}x, {mem:.0f}x"
    cells = " | ".join(cell(row[m]) for m in METHODS)
    return f"| {row['model']} | {row['N']} | {cells} | {ratio} | {vs} |"


if __name__ == "__main__":
    main()

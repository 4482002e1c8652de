"""What exactness costs: models whose parameters leave the structured rules, against the floor.

For each model class that sends some parameters to the exact per-sample path (docs/performance.md),
time `empirical_ntk` (method="auto", float32, scalar output, trace kernel) as a ratio to the
floor (one forward + backward of the same batch), next to a twin model of the same shape whose
parameters all take a structured rule. Also the self-check's cost (`verify=True`) as a ratio to
the kernel it checks. Pairs alternate in one process, one thread; each ratio is the median over
`--repeats` alternations.

    python benchmarks/bench_ntk_exact.py            # the table (about a minute on 2 cores)
    python benchmarks/bench_ntk_exact.py --smoke    # a tiny run that only checks it works
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cosmo_optim import empirical_ntk

Build = Callable[[int], nn.Module]  # width -> model


def mlp(act: Callable[[int], nn.Module]) -> Build:
    return lambda w: nn.Sequential(nn.Linear(64, w), act(w), nn.Linear(w, w), act(w),
                                   nn.Linear(w, 1))


class Recurrent(nn.Module):
    def __init__(self, width: int, cell: type[nn.Module]) -> None:
        super().__init__()
        self.rnn, self.head = cell(16, width, batch_first=True), nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


class Tokens(nn.Module):
    def __init__(self, width: int, **options: object) -> None:
        super().__init__()
        self.emb = nn.Embedding(1000, width, **options)  # type: ignore[arg-type]
        self.head = nn.Linear(width, 1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.emb(t)).mean(1))


def conv(norm: Callable[[int], nn.Module], dims: int = 2) -> Build:
    """Two convolutions with width/16 channels (at least 4), then a linear read-out."""
    Conv = nn.Conv3d if dims == 3 else nn.Conv2d

    def build(width: int) -> nn.Module:
        c = max(width // 16, 4)
        return nn.Sequential(Conv(3, c, 3, padding=1), norm(c), nn.ReLU(), Conv(c, c, 3),
                             nn.ReLU(), nn.Flatten(), nn.LazyLinear(1))

    return build


# name: (model, its input shape, a twin whose parameters all take structured rules, its input
# shape, token inputs)
CASES: dict[str, tuple[Build, tuple[int, ...], Build, tuple[int, ...], bool]] = {
    "MLP, ReLU(inplace=True)": (mlp(lambda w: nn.ReLU(inplace=True)), (64,),
                                mlp(lambda w: nn.ReLU()), (64,), False),
    "MLP, PReLU(width)": (mlp(nn.PReLU), (64,), mlp(lambda w: nn.ReLU()), (64,), False),
    "MLP, spectral_norm": (
        lambda w: nn.Sequential(nn.utils.parametrizations.spectral_norm(nn.Linear(64, w)),
                                nn.Tanh(), nn.Linear(w, 1)), (64,),
        lambda w: nn.Sequential(nn.Linear(64, w), nn.Tanh(), nn.Linear(w, 1)), (64,), False),
    "MLP, torch.compile": (lambda w: torch.compile(mlp(lambda v: nn.Tanh())(w), backend="eager"),
                           (64,), mlp(lambda v: nn.Tanh()), (64,), False),
    "CNN, GroupNorm": (conv(lambda w: nn.GroupNorm(4, w)), (3, 12, 12),
                       conv(lambda w: nn.Identity()), (3, 12, 12), False),
    "CNN 3-d (6³ voxels; twin 2-d, 15² pixels)": (conv(lambda w: nn.Identity(), 3), (3, 6, 6, 6),
                                                  conv(lambda w: nn.Identity()), (3, 15, 15),
                                                  False),
    "Embedding, scale_grad_by_freq": (lambda w: Tokens(w, scale_grad_by_freq=True), (12,),
                                      Tokens, (12,), True),
    "LSTM seq 12 (twin: MLP on the flat sequence)": (
        lambda w: Recurrent(w, nn.LSTM), (12, 16),
        lambda w: nn.Sequential(nn.Flatten(), nn.Linear(12 * 16, w), nn.Tanh(), nn.Linear(w, 1)),
        (12, 16), False),
}


def inputs(n: int, shape: tuple[int, ...], tokens: bool) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randint(0, 1000, (n, *shape)) if tokens else torch.randn(n, *shape)


def floor(model: nn.Module, x: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    model(x).sum().backward()


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(build: Build, width: int, x: torch.Tensor, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = build(width).eval()
    model(x[:2])  # materialise lazy layers
    floor(model, x)  # warm-up (compiled modules compile here)
    empirical_ntk(model, x[:2])
    ratios, checks = [], []
    for _ in range(repeats):
        t_floor = timed(lambda: floor(model, x))
        t_ntk = timed(lambda: empirical_ntk(model, x))
        t_verified = timed(lambda: empirical_ntk(model, x, verify=True))
        ratios.append(t_ntk / t_floor)
        checks.append(t_verified / t_ntk - 1)
    return {"ratio": statistics.median(ratios), "verify": statistics.median(checks)}


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny widths, N = 8: checks it works")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    n, width, repeats = (8, 8, 1) if args.smoke else (args.n, args.width, args.repeats)
    print(f"N = {n}, width {width}, 1 thread, median of {repeats}")
    print("| model | engine/floor | structured twin engine/floor | cost of exactness | "
          "verify=True extra |")
    print("|---|---|---|---|---|")
    rows: list[dict[str, object]] = []
    for name, (build, shape, twin, twin_shape, tokens) in CASES.items():
        got = measure(build, width, inputs(n, shape, tokens), repeats)
        ref = measure(twin, width, inputs(n, twin_shape, tokens), repeats)
        rows.append({"model": name, **got, "twin": ref["ratio"]})
        print(f"| {name} | {got['ratio']:.2f}x | {ref['ratio']:.2f}x | "
              f"{got['ratio'] / ref['ratio']:.1f}x | {100 * got['verify']:+.0f} % |", flush=True)
    return rows


if __name__ == "__main__":
    main()

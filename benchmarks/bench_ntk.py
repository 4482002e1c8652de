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

`--models gpt2` runs the sketch's table (see `gpt2_child`): a GPT-2-style Hugging Face model
(6 layers, width 384, vocabulary 8192, 64 tokens, 14.2M parameters, built from a config, no
weights downloaded), outputs = the last token's first C = 128 logits. Per N, one subprocess
alternates the pass limit (one forward, C backward passes), the exact trace kernel and the
sketch of k = 8 and 32 random combinations of the logits (`--repeats` rounds, CPU-time median
of each, so the methods share the machine's load) and measures the sketch's error against the
exact kernel: the largest relative error of a diagonal entry and of the top-4 eigenvalues,
and the kernel distance. Peak memory of each method comes from its own subprocess.

    python benchmarks/bench_ntk.py --models gpt2 --sizes 16 --threads 1

`--sketch-table` (with `--models gpt2`) prints instead, per N, the sketch's errors over four
seeds for k = 8, 16, 32, 64 (rms and max of |λ̂_a/λ_a − 1|, a = 1..4, the largest diagonal
error and the kernel distance), in-process, untimed:

    python benchmarks/bench_ntk.py --models gpt2 --sketch-table --sizes 16 --threads 1

`--models gpt2 --monitor [N ...]` measures the monitor instead (`gpt2_monitor`): the same
model trained as a language model (batch 16, 64 tokens) with a `CosmologyTracker` at its
default settings for probe sizes N (default 16 and 64), one subprocess per N.

    python benchmarks/bench_ntk.py --models gpt2 --monitor --threads 1

`--models real` runs the table of the models people train (`real_models.py`: ResNet-18 at
CIFAR size with BatchNorm, a ViT, GPT-2 small with the last token's first 8 logits, BERT-base
with a classification head; built from configs, no weights), one subprocess per (model, N):

    python benchmarks/bench_ntk.py --models real --threads 1
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_models

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


GPT2_BUDGET = 16 << 30  # bytes: the exact kernel stores N·P per-sample gradients (4 B each)
SKETCH_DIMS = (8, 32)  # combinations of the C logits in the sketch's table
SKETCH_C = 128  # logits of the last token the sketch's table differentiates


class LastLogit(nn.Module):
    """GPT-2-style LM -> the last token's first ``C`` logits (the first one alone, shape (N,),
    for C = 1); position ids batch-first (N, T), so the position embedding takes the embedding
    rule (with (1, T) it takes the jacobian path)."""

    def __init__(self, smoke: bool, C: int = 1) -> None:
        super().__init__()
        import transformers

        transformers.logging.set_verbosity_error()
        d, layers, vocab = (16, 2, 64) if smoke else (384, 6, 8192)
        cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=1024, n_embd=d,
                                      n_layer=layers, n_head=max(d // 64, 2), resid_pdrop=0.0,
                                      embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                                      eos_token_id=0)
        self.lm, self.C = transformers.GPT2LMHeadModel(cfg), C

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        logits = self.lm(ids, position_ids=pos).logits[:, -1]
        return logits[:, 0] if self.C == 1 else logits[:, : self.C]


def exact_by_blocks(model: nn.Module, x: torch.Tensor, budget: int) -> torch.Tensor:
    """The exact kernel as a sum over parameter blocks whose N·P gradients fit ``budget``."""
    blocks: list[list[str]] = [[]]
    size = 0
    for name, p in model.named_parameters():
        if blocks[-1] and (size + p.numel()) * x.shape[0] * 4 > budget // 2:
            blocks.append([])
            size = 0
        blocks[-1].append(name)
        size += p.numel()
    return sum(empirical_ntk(model, x, params=b, memory_budget=budget) for b in blocks)


def sketch_errors(K: torch.Tensor, S: torch.Tensor) -> dict[str, float]:
    """The sketch ``S`` against the exact kernel ``K``: the largest relative error of the
    diagonal and of the top-4 eigenvalues, and the kernel distance."""
    from cosmo_optim import kernel_distance

    K, S = K.double(), S.double()
    e, es = (torch.linalg.eigvalsh(k).flip(0)[:4] for k in (K, S))
    return {"diag_rel": float((S.diagonal() / K.diagonal() - 1).abs().max()),
            "eig4_rel": float(((es - e) / e).abs().max()),
            "distance": float(kernel_distance(K, S))}


def _pass_limit(model: nn.Module, x: torch.Tensor) -> None:
    """One forward and C backward passes of the C selected outputs (real_models.pass_limit)."""
    f = model(x)
    real_models.pass_limit(model, x, f.reshape(x.shape[0], -1).shape[1])


def gpt2_child(n: int, repeats: int, threads: int, smoke: bool, mem: str,
               shape: tuple[int, int, list[int]] | None = None) -> dict[str, object]:
    """One N, the last token's first C logits: alternate the pass limit (one forward, C
    backward passes), the exact trace kernel (C passes) and the sketch of k combinations (k
    passes), CPU time medians and the sketch's errors; or one method's peak memory.
    ``shape``: (C, tokens, the sketch's k values); default (SKETCH_C, 64, SKETCH_DIMS)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    C, tokens, dims = (16, 8, [4, 8]) if smoke else shape or (SKETCH_C, 64, list(SKETCH_DIMS))
    model = LastLogit(smoke, C).eval()
    x = torch.randint(0, model.lm.config.vocab_size, (n, tokens))
    fns: dict[str, Callable[[], object]] = {
        "limit": lambda: _pass_limit(model, x),
        "exact": lambda: empirical_ntk(model, x, memory_budget=GPT2_BUDGET)}
    for k in dims:
        fns[f"sketch{k}"] = lambda k=k: empirical_ntk(model, x, method="sketch", sketch_dim=k,
                                                      memory_budget=GPT2_BUDGET)
    if mem:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fns[mem]()
        return {"peak_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024}
    results = {name: fn() for name, fn in fns.items()}  # warm-up; keeps the kernels
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.process_time()
            fn()
            times[name].append(time.process_time() - t0)
    out: dict[str, object] = {"C": C}
    for name, ts in times.items():
        med = sorted(ts)[len(ts) // 2]
        out[name] = {"time_s": med, "spread": (max(ts) - min(ts)) / med}
        if name.startswith("sketch"):
            out[name] |= sketch_errors(results["exact"], results[name])  # type: ignore[arg-type]
    return out


def gpt2_sketch_table(sizes: list[int], threads: int, smoke: bool) -> None:
    """Per N and k: over four seeds, the rms (per a) and max of |λ̂_a/λ_a − 1|, the largest
    relative error of a diagonal entry, and the kernel distance, for the sketch of the last
    token's first C logits."""
    from cosmo_optim import kernel_distance

    torch.set_num_threads(threads)
    print("| N | C | k | λ_1 rms | λ_2 rms | λ_3 rms | λ_4 rms | max over a, seeds | "
          "diagonal max | kernel distance mean (max) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    C = 16 if smoke else SKETCH_C
    for n in sizes:
        torch.manual_seed(0)
        model = LastLogit(smoke, C).eval()
        x = torch.randint(0, model.lm.config.vocab_size, (n, 8 if smoke else 64))
        K = empirical_ntk(model, x, memory_budget=GPT2_BUDGET).double()
        e = torch.linalg.eigvalsh(K).flip(0)[:4]
        for k in (4, 8) if smoke else (8, 16, 32, 64):
            S = [empirical_ntk(model, x, method="sketch", sketch_dim=k, sketch_seed=s,
                               memory_budget=GPT2_BUDGET).double() for s in range(4)]
            E = torch.stack([torch.linalg.eigvalsh(t).flip(0)[:4] / e - 1 for t in S])
            diag = max(float((t.diagonal() / K.diagonal() - 1).abs().max()) for t in S)
            dist = [float(kernel_distance(K, t)) for t in S]
            rms = " | ".join(f"{v:.2%}" for v in E.pow(2).mean(0).sqrt())
            print(f"| {n} | {C} | {k} | {rms} | {E.abs().max():.2%} | {diag:.2%} | "
                  f"{sum(dist) / 4:.6f} ({max(dist):.6f}) |", flush=True)


def gpt2_table(sizes: list[int], repeats: int, threads: int, smoke: bool,
               shape: tuple[int, int, list[int]] | None = None) -> list[dict]:
    """`--models gpt2`: per N, `gpt2_child`'s times and errors and each method's peak memory
    (``shape``: C, tokens and the sketch's k values; None: the defaults)."""
    dims = [4, 8] if smoke else (shape[2] if shape else list(SKETCH_DIMS))
    methods = ["limit", "exact", *(f"sketch{k}" for k in dims)]
    print("| N | C | method | CPU time (median) | spread | /limit | peak memory | "
          "diagonal max err | top-4 eig. err | kernel dist. |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for n in sizes:
        res = gpt2_run([n, repeats, threads, smoke, "", shape], smoke)
        for m in methods:
            r = res[m]
            r["peak_mb"] = gpt2_run([n, 0, threads, smoke, m, shape], smoke)["peak_mb"]
            ratio = r["time_s"] / res["limit"]["time_s"]
            err = (f"{r['diag_rel']:.2%} | {r['eig4_rel']:.2%} | {r['distance']:.4f}"
                   if "distance" in r else "exact | exact | 0")
            print(f"| {n} | {res['C']} | {m} | {r['time_s']:.2f} s | ±{r['spread'] / 2:.0%} | "
                  f"{ratio:.2f}x | +{max(r['peak_mb'], 0):.0f} MB | {err} |", flush=True)
            rows.append({"N": n, "method": m, **r})
    return rows


def gpt2_monitor(probe_size: int, steps: int, threads: int, smoke: bool,
                 every: int) -> dict[str, float]:
    """Wall time per optimiser step of GPT-2-style LM training (batch 16, next-token
    cross-entropy, momentum SGD) with a `CosmologyTracker` at its default settings watching the
    last token's first logit (`LastLogit`), probing at step 0 and every `every` steps. The
    probe's extra time is a probe step's time minus the median step without a probe; the
    overhead is that extra over the training time of one probe interval."""
    from cosmo_optim import CosmologyTracker

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = LastLogit(smoke)
    tokens = (16, 8 if smoke else 64)
    vocab = model.lm.config.vocab_size
    probe = torch.randint(0, vocab, (probe_size, tokens[1]))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    tracker = CosmologyTracker(model, probe_batch=probe, probe_size=probe_size,
                               every_n_steps=every)
    t0 = time.perf_counter()
    tracker.attach(opt)  # probes step 0
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        ids = torch.randint(0, vocab, tokens)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        model.lm(ids, labels=ids).loss.backward()
        opt.step()  # the tracker's hook probes when due
        times.append(time.perf_counter() - t0)
    probed = [r.step for r in tracker.history]
    plain = sorted(t for i, t in enumerate(times, 1) if i not in probed)
    step_s = plain[len(plain) // 2]
    extra = sorted([first] + [times[i - 1] - step_s for i in probed if i > 0])
    probe_s = extra[len(extra) // 2]
    return {"step_s": step_s, "probe_s": probe_s, "probes": len(probed),
            "sketch_dim": tracker.history[-1].sketch_dim,
            "overhead": probe_s / (every * step_s)}


def gpt2_monitor_table(sizes: list[int], threads: int, smoke: bool) -> list[dict]:
    from cosmo_optim.monitor import MonitorConfig

    every = 2 if smoke else MonitorConfig().interval
    print(f"\nMonitor at its defaults (top_k = 4, a probe every {every} steps), "
          f"{2 * every + 1} training steps:\n")
    print("| probe_size | kernel | training step | probe (median of 3) | probe in steps | "
          "overhead |")
    print("|---|---|---|---|---|---|")
    rows = []
    for n in sizes:
        r = gpt2_run([n, 2 * every + 1, threads, smoke, every], smoke, "--gpt2-monitor")
        kernel = f"sketch k = {r['sketch_dim']}" if r["sketch_dim"] else "exact"
        print(f"| {n} | {kernel} | {r['step_s']:.2f} s | {r['probe_s']:.2f} s | "
              f"{r['probe_s'] / r['step_s']:.1f} | {r['overhead']:.1%} |", flush=True)
        rows.append({"probe_size": n, **r})
    return rows


def gpt2_run(args: list[object], smoke: bool, child: str = "--gpt2-child") -> dict:
    if smoke:
        fn = gpt2_child if child == "--gpt2-child" else gpt2_monitor
        return fn(*args)  # type: ignore[arg-type]
    cmd = [sys.executable, __file__, child, json.dumps(args)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


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
    ap.add_argument("--sketch-table", action="store_true",
                    help="with --models gpt2: the sketch's eigenvalue errors over four seeds")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--gpt2-child", help=argparse.SUPPRESS)
    ap.add_argument("--gpt2-monitor", help=argparse.SUPPRESS)
    ap.add_argument("--real-child", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu", help="with --models real: e.g. cuda")
    ap.add_argument("--sketch-c", type=int, default=SKETCH_C,
                    help="with --models gpt2: logits of the last token differentiated (C)")
    ap.add_argument("--tokens", type=int, default=64, help="with --models gpt2: tokens per sample")
    ap.add_argument("--sketch-dims", type=int, nargs="+", default=list(SKETCH_DIMS),
                    help="with --models gpt2: the sketch's k values")
    ap.add_argument("--monitor", type=int, nargs="*", default=None, metavar="N",
                    help="with --models gpt2: the monitor's overhead at these probe sizes")
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(*json.loads(args.child))))
        return []
    if args.gpt2_child:
        print(json.dumps(gpt2_child(*json.loads(args.gpt2_child))))
        return []
    if args.gpt2_monitor:
        print(json.dumps(gpt2_monitor(*json.loads(args.gpt2_monitor))))
        return []
    if args.real_child:
        print(json.dumps(real_models.child(*json.loads(args.real_child))))
        return []
    if args.models and args.models[0] == "real":
        return real_table(args.models[1:], args.sizes if "--sizes" in (argv or sys.argv) else None,
                          1 if args.smoke else args.repeats, args.threads, args.smoke,
                          args.device)
    if args.models == ["gpt2"] and args.sketch_table:
        gpt2_sketch_table([4] if args.smoke else args.sizes, args.threads, args.smoke)
        return []
    if args.models == ["gpt2"]:
        if args.monitor is not None:
            sizes = [4] if args.smoke else args.monitor or [16, 64]
            return gpt2_monitor_table(sizes, args.threads, args.smoke)
        sizes = [4] if args.smoke else args.sizes
        shape = (args.sketch_c, args.tokens, args.sketch_dims)
        return gpt2_table(sizes, 1 if args.smoke else args.repeats, args.threads, args.smoke,
                          shape)
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


def real_table(names: list[str], sizes: list[int] | None, repeats: int, threads: int,
               smoke: bool, device: str = "cpu") -> list[dict]:
    """`--models real [name ...]`: one fresh subprocess per (model, N); markdown rows."""
    print(real_models.HEADER)
    rows = []
    for name, (_, default_sizes) in real_models.MODELS.items():
        if names and not any(k.lower() in name.lower() for k in names):
            continue
        for n in [4] if smoke else sizes or default_sizes:
            args = [name, n, repeats, smoke, threads, device]
            if smoke:
                row = real_models.child(*args)
            else:
                cmd = [sys.executable, __file__, "--real-child", json.dumps(args)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                row = json.loads(out.strip().splitlines()[-1])
            rows.append(row)
            print(real_models.format_row(row), flush=True)
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

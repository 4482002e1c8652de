"""The models people train, built from configs (no weights downloaded), for `bench_ntk.py --models real`.

Each builder returns ``(model, inputs(n), C)``: the model in eval mode, a function drawing a
synthetic probe batch of n samples, and C, the number of output components the trace kernel
sums over. Per (model, N) one fresh subprocess measures, in one process and in alternated
rounds (median of each over ``repeats``, so that every column shares the machine's load):

  limit   the pass limit: one forward of the probe batch and C backward passes of the
          selected outputs (``torch.autograd.grad`` of each component's sum to every
          parameter), the least any reverse-mode method needs for C components
  trace   ``empirical_ntk(model, x)`` at its defaults
  full    ``empirical_ntk(model, x, output="full")`` at its defaults (what the monitor takes)

and the full kernel's own limit: the pass limit plus the contraction of the N·C per-sample
gradient rows, ``(N C)² P`` multiply-adds (the symmetric half of ``G Gᵀ``), at the rate of a
float32 matmul of that shape measured in the same process. Time is CPU time of the process
(``time.process_time``; on CUDA wall time after ``torch.cuda.synchronize``). Peak memory: the
rise of the resident-set high-water mark over the level after the limit's passes for the first
trace and full calls (on CUDA ``torch.cuda.max_memory_allocated`` above the model's). Run from
`bench_ntk.py --models real` (``--device cuda`` on a GPU).
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

Batch = Callable[[int], torch.Tensor]


class BasicBlock(nn.Module):
    """ResNet's two 3×3 convolutions with BatchNorm and an identity (or 1×1) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.short = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                       nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.short(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32×32 images (3×3 stem, no max-pool; 11.2M parameters), 10 classes."""

    def __init__(self, classes: int = 10, width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        layers, c = [], width
        for i, w in enumerate((width, 2 * width, 4 * width, 8 * width)):
            layers += [BasicBlock(c, w, 1 if i == 0 else 2), BasicBlock(w, w, 1)]
            c = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layers(self.stem(x)).mean((2, 3)))


def _with_stats(model: nn.Module) -> nn.Module:
    """BatchNorm running statistics as after training (not the init's 0 and 1)."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1, generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
    return model.eval()


class Logits(nn.Module):
    """A Hugging Face model -> ``logits`` (or the last token's first ``keep`` logits)."""

    def __init__(self, hf: nn.Module, keep: int | None = None) -> None:
        super().__init__()
        self.hf, self.keep = hf, keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.hf(x).logits
        return logits if self.keep is None else logits[:, -1, : self.keep]


def resnet18(smoke: bool) -> tuple[nn.Module, Batch, int]:
    model = _with_stats(ResNet18(width=8 if smoke else 64))
    return model, lambda n: torch.randn(n, 3, 32, 32), 10


def vit(smoke: bool) -> tuple[nn.Module, Batch, int]:
    import transformers

    d, layers = (32, 2) if smoke else (192, 12)
    cfg = transformers.ViTConfig(hidden_size=d, num_hidden_layers=layers, num_attention_heads=3
                                 if not smoke else 2, intermediate_size=4 * d, image_size=32,
                                 patch_size=4, num_labels=10, hidden_dropout_prob=0.0,
                                 attention_probs_dropout_prob=0.0)
    model = Logits(transformers.ViTForImageClassification(cfg)).eval()
    return model, lambda n: torch.randn(n, 3, 32, 32), 10


def gpt2(smoke: bool) -> tuple[nn.Module, Batch, int]:
    import transformers

    kw = dict(n_embd=32, n_layer=2, n_head=2, vocab_size=512, bos_token_id=0,
              eos_token_id=0) if smoke else {}
    cfg = transformers.GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **kw)
    model = Logits(transformers.GPT2LMHeadModel(cfg), keep=8).eval()
    return model, lambda n: torch.randint(cfg.vocab_size, (n, 32)), 8


def bert(smoke: bool) -> tuple[nn.Module, Batch, int]:
    import transformers

    kw = (dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               vocab_size=512) if smoke else {})
    cfg = transformers.BertConfig(num_labels=2, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0, **kw)
    model = Logits(transformers.BertForSequenceClassification(cfg)).eval()
    return model, lambda n: torch.randint(cfg.vocab_size, (n, 32)), 2


MODELS: dict[str, tuple[Callable[[bool], tuple[nn.Module, Batch, int]], tuple[int, ...]]] = {
    "ResNet-18": (resnet18, (16, 64)),
    "ViT": (vit, (16, 64)),
    "GPT-2 small": (gpt2, (8, 16)),
    "BERT-base": (bert, (8, 16)),
}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Clock:
    """CPU time of the process, or wall time after a synchronize on CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return time.perf_counter()
        return time.process_time()


def pass_limit(model: nn.Module, x: torch.Tensor, C: int) -> None:
    """One forward and C backward passes of the selected outputs to every parameter."""
    params = [p for p in model.parameters() if p.requires_grad]
    f = model(x).reshape(x.shape[0], -1)
    for c in range(C):
        torch.autograd.grad(f[:, c].sum(), params, retain_graph=c < C - 1)


def contraction_s(rows: int, P: int, device: torch.device, clock: _Clock) -> float:
    """Seconds for ``(rows)² P`` multiply-adds (the symmetric half of ``G Gᵀ``, G rows × P) at
    the measured float32 matmul rate of that shape (a block of at most 2²⁰ columns, scaled)."""
    width = min(P, 1 << 20)
    G = torch.randn(rows, width, device=device)
    G @ G.T  # warm-up
    t0 = clock()
    for _ in range(3):
        G @ G.T
    rate = 3 * rows * rows * width / (clock() - t0)  # multiply-adds per second
    return rows * rows * P / 2 / rate


def _peak(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _rss_mb()


def child(name: str, n: int, repeats: int, smoke: bool, threads: int,
          device: str = "cpu") -> dict[str, object]:
    """One (model, N): pass limit, trace and full kernel times (medians of alternated rounds),
    the full kernel's own limit, peak memory of the first trace and full calls."""
    from cosmo_optim import empirical_ntk

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    clock = _Clock(dev)
    model, batch, C = MODELS[name][0](smoke)
    model = model.to(dev)
    x = batch(n).to(dev)
    P = sum(p.numel() for p in model.parameters())
    pass_limit(model, x, C)  # warm-up
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    base = _peak(dev)
    row: dict[str, object] = {"model": name, "N": n, "C": C, "params": P, "device": device}
    calls = {"limit": lambda: pass_limit(model, x, C),
             "trace": lambda: empirical_ntk(model, x),
             "full": lambda: empirical_ntk(model, x, output="full")}
    for method in ("trace", "full"):  # first calls: peak memory
        try:
            calls[method]()
        except Exception as err:  # a refusal is a result of the table
            row[method] = f"{type(err).__name__}: {str(err)[:120]}"
            continue
        row[f"{method}_peak_mb"] = _peak(dev) - base
        base = _peak(dev)
    live = {m: f for m, f in calls.items() if not isinstance(row.get(m), str)}
    times: dict[str, list[float]] = {m: [] for m in live}
    for _ in range(repeats):
        for method, fn in live.items():
            t0 = clock()
            fn()
            times[method].append(clock() - t0)
    for method, ts in times.items():
        row[f"{method}_s"] = statistics.median(ts)
    row["contraction_s"] = contraction_s(n * C, P, dev, clock)
    return row


def format_row(row: dict[str, object]) -> str:
    """A markdown row: the pass limit, trace and full as multiples of it, the full kernel's
    own limit, peak memory."""
    f = float(row["limit_s"])  # type: ignore[arg-type]
    own = f + float(row["contraction_s"])  # type: ignore[arg-type]

    def cell(m: str, ref: float) -> str:
        if isinstance(row.get(m), str):
            return str(row[m])
        return f"{row[m + '_s'] / ref:.2f}× ({row[m + '_s']:.2f} s), +{row[m + '_peak_mb']:.0f} MB"

    full_own = "–" if isinstance(row.get("full"), str) else f"{row['full_s'] / own:.2f}×"
    return (f"| {row['model']} | {row['N']} | {row['C']} | {f:.2f} s | {cell('trace', f)} | "
            f"{cell('full', f)} | {own:.2f} s | {full_own} |")


HEADER = ("| model | N | C | pass limit | trace (× limit, +peak) | full (× limit, +peak) "
          "| full's own limit | full × own limit |\n|---|---|---|---|---|---|---|---|")

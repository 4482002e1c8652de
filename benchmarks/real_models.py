"""The models people train, built from configs (no weights downloaded), for `bench_ntk.py --models real`.

Each builder returns ``(model, inputs(n), C)``: the model in eval mode, a function drawing a
synthetic probe batch of n samples, and C, the number of output components the trace kernel
sums over. Per (model, N) one fresh subprocess measures, in this order and in one process:

  floor   one forward + backward of the summed selected outputs (median of the repeats)
  exact   ``empirical_ntk(model, x)`` at its defaults (median)
  sketch  ``empirical_ntk(model, x, method="sketch")`` at its defaults (median)

Peak memory: the rise of the resident-set high-water mark over the level after the floor, for
the first exact call, and on a CUDA device ``torch.cuda.max_memory_allocated`` above the
floor's. The sketch's error: the largest relative error of the top-4 eigenvalues against the
exact kernel. Run from `bench_ntk.py --models real`.
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


def _timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _eig4_error(K: torch.Tensor, S: torch.Tensor) -> float:
    e, es = (torch.linalg.eigvalsh(k.double()).flip(0)[:4] for k in (K, S))
    return float(((es - e) / e).abs().max())


def child(name: str, n: int, repeats: int, smoke: bool, threads: int) -> dict[str, object]:
    """One (model, N): floor, exact and sketch times (median), peak memory, sketch error."""
    from cosmo_optim import empirical_ntk

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, batch, C = MODELS[name][0](smoke)
    x = batch(n)

    def floor() -> None:
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()

    t_floor, _ = _timed(floor, repeats + 1)
    model.zero_grad(set_to_none=True)
    base = _rss_mb()
    row: dict[str, object] = {"model": name, "N": n, "C": C, "floor_s": t_floor,
                              "params": sum(p.numel() for p in model.parameters())}
    for method in ("exact", "sketch"):
        kw = {"method": "sketch"} if method == "sketch" else {}
        try:
            t0 = time.perf_counter()
            K = empirical_ntk(model, x, **kw)
            first = time.perf_counter() - t0
        except Exception as err:  # a refusal is a result of the table
            row[method] = f"{type(err).__name__}: {str(err)[:120]}"
            continue
        row[f"{method}_peak_mb"] = _rss_mb() - base
        base = _rss_mb()
        t, K = _timed(lambda kw=kw: empirical_ntk(model, x, **kw), repeats - 1) \
            if repeats > 1 else (first, K)
        row[f"{method}_s"] = t
        row[f"{method}_kernel"] = K
    if "exact_kernel" in row and "sketch_kernel" in row:
        row["sketch_eig4"] = _eig4_error(row["exact_kernel"], row["sketch_kernel"])
    row.pop("exact_kernel", None)
    row.pop("sketch_kernel", None)
    return row


def format_row(row: dict[str, object]) -> str:
    """A markdown row: times as multiples of the floor, peak memory, sketch error."""
    f = float(row["floor_s"])  # type: ignore[arg-type]

    def cell(m: str) -> str:
        if isinstance(row.get(m), str):
            return str(row[m])
        return f"{row[m + '_s'] / f:.1f}× ({row[m + '_s']:.1f} s), +{row[m + '_peak_mb']:.0f} MB"

    err = f"{100 * row['sketch_eig4']:.1f} %" if "sketch_eig4" in row else "–"
    return (f"| {row['model']} | {row['N']} | {row['C']} | {f:.2f} s | {cell('exact')} | "
            f"{cell('sketch')} | {err} |")


HEADER = ("| model | N | C | floor | exact (× floor, +peak RSS) | sketch (× floor, +peak RSS) "
          "| sketch top-4 error |\n|---|---|---|---|---|---|---|")

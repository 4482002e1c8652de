"""The memory plan of one NTK request: what the engine holds at once, and the chunks it works in.

A budget is a ceiling to plan under, not a reason to refuse. The engine's buffers are the
kernel (N² numbers, N²C² for ``output="full"``), the forward graph of the samples it runs at
once and one output component's cotangents, and whatever per-layer terms must outlive a chunk.
Two structured plans, in order of preference:

* **streaming** (trace kernel, the whole batch's graph fits): one forward of all N samples, then
  one backward per output component; each recognised layer's term for that component (its Gram
  product, or its per-sample gradients times their transpose) is added to the kernel as soon as
  its cotangent exists and dropped. Nothing outlives a component.
* **stored** (``output="full"``, or a graph too large for the budget): chunks of m samples;
  each layer's rows (Gram form) or per-sample gradients (all C components) are kept until the
  last chunk, for groups of layers whose terms fit the budget, one pass over the samples per
  group.

Parameters without a structured rule take the per-sample Jacobian path, which chunks over
samples and parameter blocks by itself (:mod:`.per_sample`). A request is refused only when
two samples' pass (or one sample's Jacobian rows) does not fit; the error names the smallest
budget that would.

The default budget (``memory_budget=None``) is a quarter of the memory free on the device of
the probe batch (``torch.cuda.mem_get_info`` on CUDA, ``MemAvailable`` on a CPU host), between
256 MiB and 8 GiB.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from cosmo_optim._common import MemoryBudgetError
from cosmo_optim.ntk.forms import Choice

__all__ = ["DEFAULT_FRACTION", "Plan", "default_budget", "structured_plan"]

DEFAULT_FRACTION = 0.25  # of the free memory on the probe batch's device
_FLOOR, _CEILING = 256 << 20, 8 << 30  # bytes: bounds of the default budget
_GRAPH_FACTOR = 4  # a chunk holds its graph, one component's cotangents, their running
# combination for the ownership proof (:mod:`.guards`) and a temporary


def default_budget(device: torch.device) -> int:
    """Bytes the engine may hold when ``memory_budget=None``: :data:`DEFAULT_FRACTION` of the
    memory free on ``device``, clipped to [256 MiB, 8 GiB]."""
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = _host_available()
    return int(min(max(DEFAULT_FRACTION * free, _FLOOR), _CEILING))


def _host_available() -> int:
    """Available host memory in bytes (``MemAvailable``; elsewhere: free pages, else 8 GiB)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


@dataclass(frozen=True)
class Plan:
    """How a request's structured parameters are computed within ``budget`` bytes."""

    budget: int
    kernel: int  # bytes of the kernel
    per_sample: int  # bytes one sample adds to a chunk (graph, cotangents, temporaries)
    streaming: bool
    chunk: int  # samples per forward
    groups: list[list[str]] = field(default_factory=list)  # parameters per pass
    forms: dict[str, Choice] = field(default_factory=dict)  # each parameter's form and cost
    full: bool = False  # the (N, N, C, C) kernel

    def describe(self) -> str:
        """The plan in words: one line per decision, bytes and forms per parameter."""
        mode = ("streaming: one forward of all samples, terms added per output component"
                if self.streaming else f"stored: chunks of {self.chunk} samples, "
                f"{len(self.groups)} pass(es) over the samples")
        lines = [f"memory_budget {self.budget} bytes; kernel {self.kernel}; "
                 f"{self.per_sample} per sample in a chunk", mode]
        for i, names in enumerate(self.groups):
            lines.append(f"pass {i + 1}: " + ", ".join(
                f"{n} [{self.forms[n].form.label}, {self.forms[n].cost.kept} B kept]"
                for n in names))
        return "\n".join(lines)


def structured_plan(budget: int, N: int, kernel: int, per_sample: int,
                    forms: dict[str, Choice], full: bool) -> Plan:
    """Choose streaming or stored, the chunk size and the groups of layers per pass.

    ``forms`` maps each structured parameter to its :class:`.forms.Choice` (the form and its
    cost: bytes its terms hold for all N samples in the stored plan, bytes of its term for one
    component and all N samples, as the streaming plan makes it); ``per_sample`` is one
    sample's forward tensors, :data:`_GRAPH_FACTOR` times which a chunk holds per sample. The
    chunk is as large as leaves room for the largest term, so that every parameter fits a
    group. The kernel is counted twice: the result and one executor's terms.
    """
    per_sample = _GRAPH_FACTOR * per_sample
    room = budget - 2 * kernel
    if not forms:
        return Plan(budget, kernel, per_sample, False, max(1, room // max(per_sample, 1)),
                    full=full)
    transient = max(c.cost.transient for c in forms.values())  # one layer's term, one component
    if not full and N * per_sample + transient <= room:
        return Plan(budget, kernel, per_sample, True, N, [list(forms)], forms, full)
    largest = max(c.cost.kept for c in forms.values())
    need = 2 * kernel + 2 * per_sample + largest  # two samples per chunk, every term in a group
    if budget < need:
        raise MemoryBudgetError(
            f"Invalid memory_budget: {budget!r} bytes; this request needs at least {need} "
            f"(kernel {kernel} twice, two samples' forward and one component's cotangents "
            f"{2 * per_sample}, the largest layer term {largest}). Fix: memory_budget={need} "
            "or more, fewer samples, or output='trace'."
        )
    chunk = max(2, min(N, room // 2 // per_sample, (room - largest) // per_sample))
    cap = room - chunk * per_sample
    groups: list[list[str]] = [[]]
    held = 0
    for name, choice in forms.items():
        if held + choice.cost.kept > cap and groups[-1]:
            groups.append([])
            held = 0
        groups[-1].append(name)
        held += choice.cost.kept
    groups = [g for g in groups if g]
    return Plan(budget, kernel, per_sample, False, chunk, groups, forms, full)

"""A TensorBoard dashboard that explains itself (docs/callbacks.md, docs/theory.md T3–T10).

`custom_scalar_layout` gives each quantity a chart of its own (one unit, one line per tag;
per-mode quantities one line per mode) and keeps only the charts a run fills; quantities that
span decades are charted through their `LOG10_OF` views (`log10_views`), written to
TensorBoard only, since a custom-scalars chart cannot set a log axis. `describe_scalars` gives
every monitor tag a description with its units (TensorBoard's summary metadata, shown beside
the chart); `verdicts` says in words whether the latest reading follows its dual and why
(`cosmo_optim.monitor.verdict`), a background that stays not vacuum dominated once. Only a
writer's duck-typed methods are used.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from cosmo_optim.dual.causes import RESIDUAL_TOLERANCE, VACUUM_TOLERANCE
from cosmo_optim.monitor.verdict import base_tag, named, verdict_of

__all__ = ["CHARTS", "DESCRIPTIONS", "LOG10_OF", "custom_scalar_layout", "describe_scalars",
           "description", "log10_views", "verdicts"]

#: What each scalar is, with its units (``{k}``: one per mode); the T-numbers of docs/theory.md.
DESCRIPTIONS: Mapping[str, str] = {  # the log10 views' are added below
    "cosmology/hubble_rate": "Hubble rate H = (1 − β)/(3 sqrt(η)), per unit of time "
                             "t = n sqrt(η) (T3).",
    "cosmology/vacuum_energy": "Vacuum energy Λ = 3H², an energy density (units of V) (T3).",
    "cosmology/efolds": "e-folds N_e = Σ_n (1 − β_n)/3, dimensionless, every step (T9).",
    "cosmology/alpha_eff": "α_eff = λ_mf/N, the mean field's coupling: the eigenvalue of the "
                           "mode(s) carrying the mean output over N (the mean kernel entry "
                           "where none does), NTK units (T7).",
    "cosmology/field": "Mean field φ̄ = mean of the outputs, in output units (T7).",
    "cosmology/potential": "V(φ̄) = α_eff ℓ̄(φ̄) + Λ, an energy density (T5, T7).",
    "cosmology/omega_phi": "Ω_φ = ρ_φ/Λ, dimensionless: ≤ 0.1 vacuum dominated (the gravity "
                           "dual holds), ≥ 1 it does not (T6).",
    "cosmology/slow_roll_epsilon": "ε_V = ½ (V'/V)², dimensionless; ≪ 1 slow roll (T9).",
    "cosmology/slow_roll_eta": "η_V = V''/V, dimensionless; |η_V| ≪ 1 slow roll (T9).",
    "cosmology/stability_margin": "max_k η κ_k / 2(1 + β), dimensionless: the discrete map "
                                  "diverges at ≥ 1 (T10).",
    "cosmology/nonfinite": "Readings skipped so far for NaN/inf outputs or NTK (a count).",
    "cosmology/failed_readings": "Readings skipped so far because they raised after the "
                                 "first one (out of memory, the kernel, the dual, ...), a "
                                 "count; the cosmology/failures card says why. Training is "
                                 "unaffected.",
    "ntk/lambda_1": "λ_1, top eigenvalue of the NTK on the probe batch, (output/parameter)² "
                    "units (T4, T7).",
    "ntk/ratio_{k}": "λ_k/λ_1, dimensionless: the hierarchy λ_1 ≫ λ_2 ≫ … (T7, T8).",
    "ntk/kernel_distance": "1 − cosine to the first reading's kernel, 0–1: 0 is the lazy "
                           "(constant-NTK) limit; quadratic in the angle, blind to scale (T4).",
    "ntk/kernel_change": "‖Θ − Θ_prev‖/‖Θ_prev‖ since the previous reading, dimensionless: "
                         "≤ 0.05 the kernel stays frozen (lazy limit), more is feature "
                         "learning; with BatchNorm it includes the running statistics' move "
                         "(T4, T12).",
    "ntk/basis_rotation": "1 − ‖U_0ᵀU‖²/k, 0–1: how far the top-k eigenspace turned (T7).",
    "ntk/mean_field_overlap": "Best |u_k·1|/sqrt(N) over all modes, 0–1: 1 is a perfectly "
                              "uniform mode (T7).",
    "ntk/sketch_dim": "Which kernel: 0 exact (k > 0: a sketch, older checkpoints) (T4).",
    "modes/amplitude_{k}": "f̃_k = u_kᵀ f in the current eigenbasis, output units (T7).",
    "modes/initial_amplitude_{k}": "f̃_k in the first reading's basis, output units (T7).",
    "modes/mass_over_hubble_{k}": "m_k/H, dimensionless: > 3/2 the mode oscillates (T8).",
    "modes/active": "Modes of the kernel on the probe batch (of N·C) not frozen over one "
                    "Hubble time (a count) (T8, T10).",
    "duality/residual": "RMS gap between the outputs and their linearisation through the "
                        "previous reading's frozen kernel, under the force training applied, "
                        "output units (T12).",
    "duality/relative_residual": "That gap over how far the outputs moved, dimensionless: "
                                 "≤ 0.05 the network follows its dual (the lazy limit), ≥ 1 "
                                 "no better than 'nothing moves' (T12).",
    "duality/rounding_floor": "ε‖f‖/‖f − f_prev‖ with ε the model dtype's precision, "
                              "dimensionless: the relative residual rounding alone gives; a "
                              "residual within 3× of it is not a measurement (T12).",
    "duality/forecast_residual": "Relative miss of the previous reading's forecast, made as if "
                                 "training were full-batch on the probe batch (all modes, "
                                 "T10); large under mini-batches by design, not a test of "
                                 "the dual.",
}
_MODE_INDEX = re.compile(r"_\d+$")

#: TensorBoard-only views: log10 of the positive quantities that span decades, so that each
#: chart shows its run at a readable scale (custom-scalars charts cannot set a log axis). Only
#: written to ``SummaryWriter``s, beside the scalars every logger gets; a value ≤ 0 or not
#: finite has no view at that step.
LOG10_OF: Mapping[str, str] = {
    f"{group}/log10_{name}": f"{group}/{name}" for group, name in (
        ("cosmology", "hubble_rate"), ("cosmology", "vacuum_energy"),
        ("cosmology", "omega_phi"), ("cosmology", "slow_roll_epsilon"),
        ("cosmology", "stability_margin"), ("ntk", "lambda_1"), ("ntk", "ratio_{k}"),
        ("ntk", "kernel_change"), ("ntk", "kernel_distance"), ("ntk", "basis_rotation"),
        ("modes", "mass_over_hubble_{k}"), ("duality", "residual"),
        ("duality", "relative_residual"), ("duality", "rounding_floor"),
        ("duality", "forecast_residual"))
}
DESCRIPTIONS = {**DESCRIPTIONS, **{
    view: f"log10 of {source}, a TensorBoard view for a readable chart. "
          + DESCRIPTIONS[source] for view, source in LOG10_OF.items()}}

#: The custom-scalars charts, by category: (title, tag pattern without prefix). Each holds one
#: quantity in one unit (a per-mode one: one line per mode, which the chart's Matches list names).
CHARTS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("the duality test (T4, T12)", (
        ("relative residual, log10: ≤ −1.3 (0.05) the network follows its dual, ≥ 0 no "
         "better than 'nothing moves'", "duality/log10_relative_residual"),
        ("rounding floor, log10: a relative residual within 0.5 of it is not a measurement",
         "duality/log10_rounding_floor"),
        ("RMS residual, log10 of output units", "duality/log10_residual"),
        ("kernel change since the last reading, log10: ≤ −1.3 (5 %) lazy, above it the "
         "network learns features", "ntk/log10_kernel_change"),
        ("forecast miss, log10 (as if trained full-batch on the probe batch, T10)",
         "duality/log10_forecast_residual"),
    )),
    ("the universe (T3, T9)", (
        ("Hubble rate H, log10 (per unit of time t = n sqrt(η))", "cosmology/log10_hubble_rate"),
        ("vacuum energy Λ = 3H², log10 (an energy density)", "cosmology/log10_vacuum_energy"),
        ("e-folds N_e (dimensionless; (1 − β)/3 per step)", "cosmology/efolds"),
    )),
    ("the background (T5, T6, T9, T10)", (
        ("vacuum domination Ω_φ, log10: ≤ −1 (0.1) vacuum dominated",
         "cosmology/log10_omega_phi"),
        ("slow roll ε_V, log10: ≪ 0 slow roll", "cosmology/log10_slow_roll_epsilon"),
        ("slow roll η_V (dimensionless, signed): |η_V| ≪ 1 slow roll", "cosmology/slow_roll_eta"),
        ("stability margin, log10: ≥ 0 the heavy-ball map diverges",
         "cosmology/log10_stability_margin"),
        ("mean field φ̄ (output units)", "cosmology/field"),
    )),
    ("the NTK and its modes (T4, T7, T8)", (
        ("top eigenvalue λ_1, log10 (NTK units)", "ntk/log10_lambda_1"),
        ("hierarchy λ_k/λ_1, log10: one line per mode k ≥ 2 (see Matches)",
         r"ntk/log10_ratio_\d+"),
        ("kernel distance from the first reading, log10 (1 − cosine)",
         "ntk/log10_kernel_distance"),
        ("basis rotation since the first reading, log10 (of the top-k eigenspace)",
         "ntk/log10_basis_rotation"),
        ("mode amplitudes f̃_k = u_kᵀf (output units): one line per mode (see Matches)",
         r"modes/amplitude_\d+"),
        ("mode amplitudes in the first reading's basis (output units): one line per mode",
         r"modes/initial_amplitude_\d+"),
        ("mode masses m_k/H, log10: > 0.18 (3/2) the mode oscillates; one line per mode",
         r"modes/log10_mass_over_hubble_\d+"),
    )),
)


def description(tag: str) -> str | None:
    """The description of a monitor tag, with any prefix (``train/``), else None."""
    base = base_tag(tag)
    if base is None:
        return None
    # ntk/lambda_1 is a name of its own, modes/amplitude_1 the first of modes/amplitude_{k}
    return DESCRIPTIONS.get(base) or DESCRIPTIONS.get(_MODE_INDEX.sub("_{k}", base))


def log10_views(scalars: Mapping[str, float]) -> dict[str, float]:
    """The `LOG10_OF` views of a reading's scalars (their prefix kept), for the positive
    finite values, to 1e-9 of a decade: a constant read with float rounding (Λ = 1 − 1e-16)
    would otherwise draw its chart on an axis of ±1e-16."""
    views = {}
    for tag, value in scalars.items():
        base = base_tag(tag)
        if base is None or not (value > 0 and math.isfinite(value)):
            continue
        group, name = base.split("/", 1)
        view = f"{group}/log10_{name}"
        if view in LOG10_OF or _MODE_INDEX.sub("_{k}", view) in LOG10_OF:
            views[tag[: len(tag) - len(base)] + view] = round(math.log10(value), 9) + 0.0
    return views


def custom_scalar_layout(prefix: str = "", tags: Iterable[str] | None = None) -> dict[str, Any]:
    """TensorBoard custom-scalars categories of `CHARTS` for the tags under `prefix` (also
    under ``train/`` + `prefix`, as the Hugging Face Trainer writes them, so that runs of both
    share one set of charts); given the `tags` a run wrote (without prefix), only the charts
    they fill."""
    own = prefix.removeprefix("train/")
    p = "^(?:train/)?" + re.escape(own)
    seen = None if tags is None else set(tags)
    layout: dict[str, Any] = {}
    for category, charts in CHARTS:
        filled = {title: ["Multiline", [rf"{p}{pattern}$"]] for title, pattern in charts
                  if seen is None or any(re.fullmatch(pattern, t) for t in seen)}
        if filled:
            layout[f"cosmo-optim{' ' + own if own else ''}: {category}"] = filled
    return layout


def describe_scalars(writer: Any) -> None:
    """Have `writer.add_scalar` attach each monitor tag's description to its first value.

    TensorBoard keeps a tag's summary metadata from its first value, and the frameworks
    (Lightning's ``log_metrics``, transformers' ``TensorBoardCallback``) write our scalars with
    ``add_scalar``, which has no description argument: so the writer's ``add_scalar`` is
    shadowed by one that sends that first value with ``SummaryMetadata.summary_description``
    and every other call on unchanged. Values and steps are those given; once per writer.
    """
    if "add_scalar" in vars(writer) or not hasattr(writer, "_get_file_writer"):
        return
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata

    original, seen = writer.add_scalar, set()

    def add_scalar(tag: str, scalar_value: Any, global_step: Any = None,
                   walltime: Any = None, *args: Any, **kwargs: Any) -> Any:
        text = None if tag in seen or args or kwargs else description(tag)
        seen.add(tag)  # every later value of any tag goes straight through
        if text is None:
            return original(tag, scalar_value, global_step, walltime, *args, **kwargs)
        metadata = SummaryMetadata(summary_description=text, plugin_data=(
            SummaryMetadata.PluginData(plugin_name="scalars")))
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(scalar_value),
                                               metadata=metadata)])
        writer._get_file_writer().add_summary(summary, global_step, walltime)
        return None

    writer.add_scalar = add_scalar


def verdicts(scalars: Mapping[str, float], *, previous: Mapping[str, float] | None = None,
             interval: int | None = None, max_lr: float | None = None) -> str:
    """A Markdown card: whether the network follows its dual at this reading and why
    (`verdict_of`, T12), then the numbers behind it with what each means (T6, T10, T12)."""
    verdict = verdict_of(scalars, previous=previous, interval=interval, max_lr=max_lr)
    s, before = named(scalars), named(previous or {})
    ongoing = min(s.get("cosmology/omega_phi", 0.0), before.get(
        "cosmology/omega_phi", 0.0)) > VACUUM_TOLERANCE
    if ongoing:  # said on the card of the first such reading, and in the run's summary
        verdict = dataclasses.replace(verdict, notes=tuple(
            n for n in verdict.notes if n.name != "not vacuum dominated"))
    lines = [f"**The dual {verdict.headline}** (relative residual ≤ {RESIDUAL_TOLERANCE:g}, "
             "T12)", ""]
    lines += [f"- {line}" for line in verdict.lines()] + [""]
    lines += ["| quantity | value | meaning |", "|---|---|---|"]
    for tag, name, meaning in _CARD:
        if tag in s:
            if tag == "cosmology/omega_phi" and ongoing:
                meaning += (f"; > {VACUUM_TOLERANCE:g} since an earlier reading, whose card has "
                            "the note (T6)")
            lines.append(f"| {name} | {s[tag]:.4g} | {meaning} |")
    return "\n".join(lines)


#: The card's rows: tag, name, what the value means.
_CARD = (
    ("duality/relative_residual", "relative residual (T12)",
     "≤ 0.05: the outputs follow the frozen kernel; ≥ 1: no better than 'nothing moves'"),
    ("duality/rounding_floor", "rounding floor (T12)",
     "the relative residual rounding alone gives: a residual near it is not a measurement"),
    ("ntk/kernel_change", "kernel change since the last reading (T4)",
     "≤ 0.05: lazy (frozen kernel); more: feature learning"),
    ("cosmology/stability_margin", "stability margin (T10)",
     "< 1: every mode inside the edge of stability"),
    ("cosmology/omega_phi", "Ω_φ (T6)", "≤ 0.1: vacuum dominated, a de Sitter background"),
    ("duality/forecast_residual", "forecast residual (T10)",
     "the forecast assumes full-batch training on the probe batch"),
)

"""A TensorBoard dashboard that explains itself (docs/callbacks.md, docs/theory.md T3–T10).

`custom_scalar_layout` puts quantities of one scale on one chart (Ω_φ apart from the slow-roll
parameters; H and Λ, the e-folds and the residuals on their own); `describe_scalars` gives
every monitor tag a description with its units (TensorBoard's summary metadata, shown beside
the chart); `verdicts` says in words whether the latest reading follows its dual and why
(`cosmo_optim.monitor.verdict`). Only a writer's duck-typed methods are used.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from cosmo_optim.dual.causes import RESIDUAL_TOLERANCE
from cosmo_optim.monitor.verdict import base_tag, named, verdict_of

__all__ = ["DESCRIPTIONS", "custom_scalar_layout", "describe_scalars", "description",
           "verdicts"]

#: What each scalar is, with its units (``{k}``: one per mode); the T-numbers of docs/theory.md.
DESCRIPTIONS: Mapping[str, str] = {
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
    "cosmology/nonfinite": "Probes skipped so far for NaN/inf outputs or NTK (a count).",
    "cosmology/failed_readings": "Readings skipped so far because they raised after the "
                                 "first one (out of memory, the kernel, the dual, ...), a "
                                 "count; the cosmology/failures card says why. Training is "
                                 "unaffected.",
    "ntk/lambda_1": "λ_1, top eigenvalue of the probe NTK, (output/parameter)² units (T4, T7).",
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
    "modes/initial_amplitude_{k}": "f̃_k in the first probe's basis, output units (T7).",
    "modes/mass_over_hubble_{k}": "m_k/H, dimensionless: > 3/2 the mode oscillates (T8).",
    "modes/active": "Modes of the probe kernel (of N·C) not frozen over one Hubble time (a "
                    "count) (T8, T10).",
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


def description(tag: str) -> str | None:
    """The description of a monitor tag, with any prefix (``train/``), else None."""
    base = base_tag(tag)
    if base is None:
        return None
    # ntk/lambda_1 is a name of its own, modes/amplitude_1 the first of modes/amplitude_{k}
    return DESCRIPTIONS.get(base) or DESCRIPTIONS.get(_MODE_INDEX.sub("_{k}", base))


def custom_scalar_layout(prefix: str = "") -> dict[str, Any]:
    """TensorBoard custom-scalars categories; each chart holds quantities of one scale."""
    p = re.escape(prefix)

    def chart(pattern: str) -> list[Any]:
        return ["Multiline", [rf"^{p}{pattern}$"]]

    return {
        "cosmo-optim: universe (T3, T9, T10)": {
            "Hubble rate H and vacuum energy Λ = 3H²":
                chart("cosmology/(hubble_rate|vacuum_energy)"),
            "e-folds N_e": chart("cosmology/efolds"),
            "duality residual (RMS, output units)": chart("duality/residual"),
            "relative residual (≤ 0.05: follows its dual, ≥ 1: no better than no motion)":
                chart("duality/relative_residual"),
            "forecast miss (as if trained full-batch on the probe batch)":
                chart("duality/forecast_residual"),
        },
        "cosmo-optim: background (T6, T9, T10)": {
            "vacuum domination Ω_φ (≤ 0.1: the gravity dual holds)":
                chart("cosmology/omega_phi"),
            "slow roll ε_V, η_V and stability margin (diverges at ≥ 1)":
                chart("cosmology/(slow_roll_epsilon|slow_roll_eta|stability_margin)"),
        },
        "cosmo-optim: NTK and modes (T4, T7, T8)": {
            "NTK hierarchy λ_k/λ_1": chart(r"ntk/ratio_\d+"),
            "NTK change since the last reading (≤ 0.05: lazy)": chart("ntk/kernel_change"),
            "NTK drift since the first reading": chart("ntk/(kernel_distance|basis_rotation)"),
            "mode amplitudes f̃ = Uᵀf": chart(r"modes/amplitude_\d+"),
            "mode amplitudes (basis at first probe)": chart(r"modes/initial_amplitude_\d+"),
            "mode masses m_k/H": chart(r"modes/mass_over_hubble_\d+"),
        },
    }


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
    s = named(scalars)
    lines = [f"**The dual {verdict.headline}** (relative residual ≤ {RESIDUAL_TOLERANCE:g}, "
             "T12)", ""]
    lines += [f"- {line}" for line in verdict.lines()] + [""]
    lines += ["| quantity | value | meaning |", "|---|---|---|"]
    for tag, name, meaning in _CARD:
        if tag in s:
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

"""Nothing changes for users unless on purpose (issue #13 item 6): the monitor logs the golden
values.

The reference, ``golden.json``, was recorded by ``golden_runs.py`` BEFORE the monitor was split
into the `cosmo_optim.monitor` package, from the single-module implementation, and recorded
again for issue #28, which changed what some tags mean: the residuals (now the linearisation
of T12), α_eff and what derives from it (the mean field's own modes, T7: the potential, Ω_φ,
slow roll), `modes/active` and the masses' histogram (all N·C modes), and added
`ntk/kernel_change` and `duality/forecast_residual`. Every other value of the new recording
agreed with the old one within the tolerance below, and the non-scalar events but the
layout and the histograms were equal. Recorded a third time for issue #32, which changed
what is written and where, not any value: the layout (only the charts a run fills, written
again when one fills), the log10 views written to TensorBoard beside the scalars, and the
Lightning run's steps (on Lightning's own step, n − 1 for the reading after n steps). Every
scalar of the #28 recording was found again, bitwise, at its (mapped) step. Comparing with that earlier output is deliberate here:
the point of this test is invariance across refactors, not correctness (the other monitor
tests compare against closed forms and torch.optim.SGD). Every scalar, histogram, custom-scalars layout and
figure tag is compared in order, the layout exactly; hyperparameters may gain keys but keep
their values.

How close is "the same value" (issue #18). The golden file was recorded on another machine,
and float32 arithmetic is not bitwise portable: the CPU's vector width and the thread count
change the order of the sums inside matmuls and reductions, so one machine's result differs
from another's by rounding alone. Two classes of values follow:

- **Exact by construction** (`EXACT`): H, Λ and the e-folds are float64 arithmetic on the
  optimiser's ``lr`` and ``momentum`` (docs/theory.md T4, T5), and the counts (non-finite
  values, active modes, sketch dimension) are integers; no float32 value and no reduction
  enters them. They agree to a few float64 ulps on any IEEE-754 machine (only libm's last
  bit may differ), so they are held to ``EXACT_RTOL = 1e-12``; a single float32 rounding in
  them would show as ~1e-8.
- **Float32 read-outs** (everything else): kernels, spectra, amplitudes and the residual come
  from float32 forwards, backwards and reductions over up to ~10³ terms, and the runs train
  for up to 13 steps first. A reduction of n terms summed in another order differs by about
  √n·u relative to the size of its terms (u = 2⁻²⁴ ≈ 6e-8: ~2e-6 for n = 10³), and a few
  training steps amplify that a few times. So a value may move by ``FLOAT32_RTOL = 1e-5``
  (~170 u) of its **scale**: the largest magnitude the tag takes in the run for tags measured
  in the model's own units, and 1 for the tags that are fractions in [0, 1] by definition
  (`UNIT_SCALE`: 1 − cosines and eigenvalue ratios are differences of O(1) numbers, so their
  rounding error is absolute, whatever their size). Measured: an AMD EPYC machine against
  the recording differs by at most 1.1e-6 of scale (``modes/amplitude_2``) and 2.5e-8 in
  absolute terms on the unit-scale tags, so the bound has ≥ 9× headroom and is still far
  below any change a refactor would make (those move values at 1e-3 or more).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from golden_runs import GOLDEN, RUNS, record

FLOAT32_RTOL = 1e-5
EXACT_RTOL = 1e-12
EXACT = {"cosmology/hubble_rate", "cosmology/vacuum_energy", "cosmology/efolds",
         "cosmology/nonfinite", "modes/active", "ntk/sketch_dim"}
UNIT_SCALE = {"ntk/kernel_distance", "ntk/basis_rotation", "ntk/mean_field_overlap"}


def _base(tag: str) -> str:
    return tag.removeprefix("train/")


def _scales(events: list[list[Any]]) -> dict[str, float]:
    """Each scalar tag's scale: its largest magnitude over the run (1 for unit-scale tags)."""
    scales: dict[str, float] = {}
    for _, tag, _, value in (e for e in events if e[0] == "scalar"):
        if isinstance(value, float) and math.isfinite(value):
            scales[tag] = max(scales.get(tag, 0.0), abs(value))
    base = {tag: _base(tag) for tag in scales}
    return {t: 1.0 if base[t] in UNIT_SCALE or base[t].startswith("ntk/ratio_") else s
            for t, s in scales.items()}


def _close(got: Any, want: Any, scale: float, tag: str) -> bool:
    if isinstance(want, str) or isinstance(got, str):  # "nan", "inf": recorded as text
        return got == want
    if _base(tag) in EXACT:
        return abs(got - want) <= EXACT_RTOL * abs(want)
    return abs(got - want) <= FLOAT32_RTOL * scale


def _mismatches(actual: list[list[Any]], expected: list[list[Any]]) -> list[str]:
    scales = _scales(expected)
    bad = []
    for got, want in zip(actual, expected, strict=True):
        if want[0] == "scalar":
            ok = _close(got[3], want[3], scales.get(want[1], 0.0), want[1])
        elif want[0] == "histogram":
            scale = max((abs(v) for v in want[3] if not isinstance(v, str)), default=0.0)
            ok = len(got[3]) == len(want[3]) and all(
                _close(g, w, scale, want[1]) for g, w in zip(got[3], want[3], strict=True))
        else:
            ok = got == want  # layouts and figure tags: exact
        if not ok:
            bad.append(f"{want[0]} {want[1] if want[0] != 'layout' else ''} at step "
                       f"{want[2] if len(want) > 2 else '-'}: got {got[-1]!r}, want {want[-1]!r}")
    return bad


def _split(events):
    hparams = [e for e in events if e[0] == "hparams"]
    return [e for e in events if e[0] != "hparams"], hparams


@pytest.mark.parametrize("name", sorted(RUNS))
def test_every_logged_value_equals_the_golden_run_recorded_before_the_refactor(name):
    if name == "lightning":
        pytest.importorskip("lightning")
    expected, expected_hparams = _split(json.loads(GOLDEN.read_text())[name])
    actual, actual_hparams = _split(record(name))
    assert [e[:3] if e[0] != "layout" else e for e in actual] == [
        e[:3] if e[0] != "layout" else e for e in expected
    ]  # the same events in the same order first, for a readable diff
    assert _mismatches(actual, expected) == []
    assert len(actual_hparams) == len(expected_hparams)
    for got, want in zip(actual_hparams, expected_hparams, strict=True):
        for key, value in want[1].items():  # from the optimiser: exact by construction
            assert got[1][key] == pytest.approx(value, rel=EXACT_RTOL, abs=0), key


def test_the_tolerance_catches_a_change_a_refactor_would_make():
    """The comparison is not vacuous: a read-out moved by 1e-4 of its scale, or H by a float32
    rounding, is reported; the golden run itself passes."""
    events = [e for e in json.loads(GOLDEN.read_text())["plain_regressor"] if e[0] != "hparams"]
    assert _mismatches(events, events) == []
    for tag, factor in (("ntk/lambda_1", 1 + 1e-4), ("cosmology/hubble_rate", 1 + 1e-8)):
        moved = [list(e) for e in events]
        i = next(i for i, e in enumerate(moved) if e[0] == "scalar" and e[1] == tag)
        moved[i][3] *= factor
        assert len(_mismatches(moved, events)) == 1, tag

"""Nothing changes for users (issue #13 item 6): the refactored monitor logs the golden values.

The reference, ``golden.json``, was recorded by ``golden_runs.py`` BEFORE the monitor was split
into the `cosmo_optim.monitor` package, from the single-module implementation. Comparing with
that earlier output is deliberate here (one tag was added since, ``ntk/sketch_dim``: 0.0 at
every probe, inserted in the log order; every other value is as recorded): the point of this test is invariance across the
refactor, not correctness (the other monitor tests compare against closed forms and
torch.optim.SGD). Every scalar, histogram, custom-scalars layout and figure tag is compared
exactly (float equality, in order); hyperparameters may gain keys but keep their values.
"""

from __future__ import annotations

import json

import pytest
from golden_runs import GOLDEN, RUNS, record


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
    assert actual == expected
    assert len(actual_hparams) == len(expected_hparams)
    for got, want in zip(actual_hparams, expected_hparams, strict=True):
        assert {k: got[1][k] for k in want[1]} == want[1]

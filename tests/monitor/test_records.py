"""Checkpoint form of the tracker state: exact JSON round trips, compact tensors, old files."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cosmo_optim.monitor.records import from_json, to_json


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.int64, torch.bool])
def test_tensors_round_trip_bit_for_bit_through_json_text(dtype):
    g = torch.Generator().manual_seed(0)
    t = (torch.randn(3, 4, generator=g) * 1e3).to(dtype)
    if dtype.is_floating_point:
        t[0, 0], t[1, 1], t[2, 2] = math.nan, math.inf, -0.0
    state = {"kernel": t, "pair": (t[:1], None), "empty": t[:0], "scalar": t[1, 2]}
    back = from_json(json.loads(json.dumps(to_json(state))))
    for key in ("kernel", "empty", "scalar"):
        assert back[key].dtype == dtype and back[key].shape == state[key].shape
        bits = [x.contiguous().reshape(-1).view(torch.uint8) for x in (back[key], state[key])]
        assert torch.equal(*bits)
    assert isinstance(back["pair"], tuple) and back["pair"][1] is None


def test_a_reference_kernel_takes_under_1_4_bytes_of_text_per_byte():
    """The HF callback keeps its state in trainer_state.json: a 1024 × 1024 float64 kernel
    (8 MiB) was 40 MB of JSON as a nested list of floats."""
    K = torch.randn(1024, 1024, dtype=torch.float64)
    assert len(json.dumps(to_json(K))) < 1.4 * K.numel() * 8


def test_state_written_as_nested_lists_by_earlier_versions_still_reads():
    old = {"__tensor__": [[1.0, 2.5], [math.inf, -3.0]], "dtype": "float64", "shape": [2, 2]}
    assert torch.equal(from_json(old), torch.tensor([[1.0, 2.5], [math.inf, -3.0]], dtype=torch.float64))

"""The multi-process tests' collector (tests/conftest.py) names the rank that left no result."""

import json

import pytest


def test_collect_returns_every_rank_in_order_and_names_a_missing_one(rank_results):
    results = rank_results()
    for rank in (1, 0):
        (results.directory / f"rank{rank}.json").write_text(json.dumps({"value": rank}))
    assert results.collect(2) == [{"value": 0}, {"value": 1}]
    with pytest.raises(pytest.fail.Exception, match=r"rank\(s\) \[2\] of 3 wrote no result(.|\n)*boom"):
        results.collect(3, stderr="Traceback ... boom")

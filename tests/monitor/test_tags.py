"""The tag list is defined once (`cosmo_optim.monitor.tags`) and documented exactly once."""

from __future__ import annotations

import re
from pathlib import Path

from cosmo_optim.monitor import SCALAR_TAGS, scalar_tags
from cosmo_optim.monitor.tags import (
    FIGURE_TAGS,
    HISTOGRAM_TAGS,
    NEEDS_DUAL,
    NEEDS_LOSS,
    TEXT_TAGS,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "callbacks.md"


def test_docs_table_lists_exactly_the_scalar_tags_in_order():
    rows = re.findall(r"^\| `([a-z_]+/[a-z_0-9{}]+)`", DOCS.read_text(), flags=re.M)
    assert rows == list(SCALAR_TAGS)


def test_docs_name_every_histogram_figure_and_text_tag():
    text = DOCS.read_text()
    for tag in (*HISTOGRAM_TAGS, *FIGURE_TAGS, *TEXT_TAGS):
        assert f"`{tag}`" in text, tag


def test_needs_sets_are_subsets_of_the_list_and_filter_scalar_tags():
    assert NEEDS_LOSS <= NEEDS_DUAL <= set(SCALAR_TAGS)
    assert not set(scalar_tags(3, dual=False)) & {t.format(k=1) for t in NEEDS_DUAL}
    assert set(scalar_tags(3, loss=False)) & set(NEEDS_LOSS) == set()
    assert "cosmology/hubble_rate" in scalar_tags(3, loss=False)
    assert scalar_tags(3, prefix="a/")[0] == "a/cosmology/hubble_rate"
    assert "cosmology/field" not in scalar_tags(3, outputs=2)
    assert "cosmology/failed_readings" not in scalar_tags(3)  # until a reading raised
    assert "cosmology/failed_readings" in scalar_tags(3, failed=True)

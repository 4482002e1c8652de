"""Fixtures shared by the whole suite."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis.configuration import set_hypothesis_home_dir

# Hypothesis keeps its files in the repository, not in whatever directory pytest runs from.
set_hypothesis_home_dir(Path(__file__).parents[1] / ".hypothesis")


class RankResults:
    """Where each rank of a multi-process test leaves its result: one JSON file per rank.

    Ranks that print to one shared stdout pipe can lose or interleave a line under load
    (issue #18); a file per rank cannot, and a missing one names the rank that failed.
    A script writes ``Path(directory, f"rank{rank}.json").write_text(json.dumps(result))``.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def collect(self, world: int, stderr: str = "") -> list[dict[str, Any]]:
        """The results of ranks 0 … world − 1, in rank order; fails naming any rank missing."""
        missing = [r for r in range(world) if not (self.directory / f"rank{r}.json").is_file()]
        if missing:
            pytest.fail(f"rank(s) {missing} of {world} wrote no result to {self.directory}; "
                        f"the processes' stderr ends:\n{stderr[-3000:]}")
        return [json.loads((self.directory / f"rank{r}.json").read_text()) for r in range(world)]


@pytest.fixture
def rank_results(tmp_path_factory: pytest.TempPathFactory) -> Callable[[], RankResults]:
    """Makes a `RankResults` in a fresh directory, one per multi-process run of a test."""
    return lambda: RankResults(tmp_path_factory.mktemp("ranks"))

"""Every ```python block in README.md and docs/*.md runs as written.

The blocks of one page run in order in one namespace, as a reader would paste them (a later
block may use the `model` of an earlier one), in a temporary working directory. A block may be
preceded by ``<!-- skip: needs <package> -->`` only when it needs a framework that is not
installed; CI installs every extra, so there none is skipped.
"""

from __future__ import annotations

import doctest
import importlib.util
import re
from pathlib import Path

import matplotlib
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:<!-- skip: needs (?P<needs>[\w.\-]+) -->\s*\n)?```python\n(?P<code>.*?)```", re.S)


def blocks(page: Path) -> list[tuple[str | None, str]]:
    return [(m["needs"], m["code"]) for m in BLOCK.finditer(page.read_text())]


#: Pages another branch owns, whose blocks do not run yet (the lead fixes them at merge).
PENDING = {"duality.md": "the example uses names defined elsewhere; owned by the duality work"}


def _params() -> list:
    return [pytest.param(p, marks=pytest.mark.xfail(reason=PENDING[p.name], strict=True))
            if p.name in PENDING else p for p in PAGES if blocks(p)]


@pytest.mark.parametrize("page", _params(), ids=lambda p: p.name)
def test_every_python_block_runs_as_written(page, tmp_path, monkeypatch):
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    threads = torch.get_num_threads()
    try:
        for i, (needs, code) in enumerate(blocks(page)):
            if needs is not None and importlib.util.find_spec(needs) is None:
                continue
            torch.manual_seed(0)
            name = f"{page.name}[block {i}]"
            if code.lstrip().startswith(">>>"):  # a doctest: its printed results are checked
                test = doctest.DocTestParser().get_doctest(code, namespace, name, name, 0)
                runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
                runner.run(test, clear_globs=False)
                namespace.update(test.globs)  # DocTest runs in a copy of the namespace
                assert runner.failures == 0, f"{name}: {runner.failures} failing example(s)"
            else:
                exec(compile(code, name, "exec"), namespace)
    finally:
        torch.set_num_threads(threads)

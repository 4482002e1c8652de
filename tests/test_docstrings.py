"""Every `>>>` example in the package's docstrings runs and prints what it claims."""

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import cosmo_optim

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(cosmo_optim.__path__, "cosmo_optim.")
    if m.name.split(".")[-1] != "__main__"
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


DOCS = sorted((Path(__file__).resolve().parents[1] / "docs").glob("*.md"))


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_documentation_examples_run(path):
    result = doctest.testfile(
        str(path), module_relative=False, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    assert result.failed == 0

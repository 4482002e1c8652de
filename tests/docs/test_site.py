"""The documentation site: builds strictly from any directory, shows every public class with
its signature, ships no build tooling and no internal notes."""

from __future__ import annotations

import html
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import cosmo_optim

ROOT = Path(__file__).resolve().parents[2]
MKDOCS = Path(sys.executable).with_name("mkdocs")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if not MKDOCS.exists():
        pytest.skip("mkdocs is not installed (the docs extra)")
    out = tmp_path_factory.mktemp("site")
    elsewhere = tmp_path_factory.mktemp("cwd")  # not the repository root
    subprocess.run([str(MKDOCS), "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
                    "--site-dir", str(out)], cwd=elsewhere, check=True, capture_output=True)
    return out


@pytest.mark.slow
def test_api_page_renders_every_public_class_and_both_callbacks_with_a_signature(site):
    text = html.unescape(re.sub(r"<[^>]+>", "", (site / "api" / "index.html").read_text()))
    classes = [n for n in cosmo_optim.__all__ if inspect.isclass(getattr(cosmo_optim, n))]
    for name in [*classes, "CosmologyMonitor", "CosmologyCallback", "MonitorConfig"]:
        cls = getattr(cosmo_optim, name, None)
        if isinstance(cls, type) and issubclass(cls, Exception):  # no signature: its bases
            assert re.search(rf"\b{name}\s*¶\s+Bases: {cls.__bases__[0].__name__}", text), name
            continue
        fields = getattr(cls, "_fields", None)
        if fields:  # a NamedTuple: its signature is its fields, each documented
            sections = [text[m.start():m.start() + 3000] for m in re.finditer(name, text)]
            assert any(all(f in part for f in fields) for part in sections), name
            continue
        assert re.search(rf"\b{name}\(\s*\n", text) or re.search(rf"\b{name}\((\w+):", text), name


@pytest.mark.slow
def test_build_tooling_is_not_published(site):
    assert not list(site.rglob("*.py"))


def test_published_pages_carry_no_internal_notes():
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        text = page.read_text()
        assert not re.search(r"for the lead|\bTODO\b|\bFIXME\b|README section", text), page.name

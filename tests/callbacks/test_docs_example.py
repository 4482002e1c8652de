"""The Hugging Face example of docs/callbacks.md runs as printed and prints what it says."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs" / "callbacks.md"


def test_the_docs_hugging_face_example_prints_every_due_probe(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    code = next(b for b in blocks if "CosmologyCallback(" in b and "hf.train()" in b)
    expected = re.search(r"# (\[[\d, ]+\])", code)
    assert expected is not None and expected.group(1) == "[0, 2, 4]"
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile("import torch\n" + code, str(DOCS), "exec"), {})
    assert out.getvalue().strip().splitlines()[-1] == expected.group(1)

"""Griffe extension for the API reference: render `>>>` examples as Python console blocks.

The package's docstrings put their doctests under "Example:" or straight into the text; in
Markdown a bare `>>>` line is a nested quote and `[0]["lr"]` a link. This wraps every run of
doctest lines (prompt, continuation and expected output, up to a blank line) that is not
already fenced in a ```pycon fence, and renames a singular "Example:" section to "Examples:".
"""

from __future__ import annotations

from typing import Any

import griffe


def fence_doctests(text: str) -> str:
    """Wrap unfenced doctest runs of a docstring in ```pycon fences."""
    out: list[str] = []
    fenced = in_run = False
    indent = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("```") and not in_run:
            fenced = not fenced
        elif not fenced and not in_run and stripped.startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}```pycon")
            in_run = True
        elif in_run and not stripped:
            out.append(f"{indent}```")
            in_run = False
        if stripped == "Example:" and not fenced:
            line = line.replace("Example:", "Examples:")
        out.append(line)
    if in_run:
        out.append(f"{indent}```")
    return "\n".join(out)


class DoctestFences(griffe.Extension):
    """Apply :func:`fence_doctests` to every docstring griffe loads."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = fence_doctests(obj.docstring.value)

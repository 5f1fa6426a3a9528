"""Generated blocks in markdown documents: a table named ``NAME`` sits between ``<!-- table: NAME -->`` and
``<!-- /table -->`` (indented like the opening marker, e.g. inside a list item); everything between the markers
is rewritten, everything outside them is left as it is."""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["BLOCK", "fill", "names"]

BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)<!-- table: (?P<name>[\w-]+) -->\n(?P<body>.*?)^(?P=indent)<!-- /table -->$",
    re.MULTILINE | re.DOTALL,
)


def names(text: str) -> list[str]:
    """The names of the generated blocks of ``text``, in order."""
    return [m["name"] for m in BLOCK.finditer(text)]


def fill(text: str, render: Callable[[str], str]) -> str:
    """``text`` with every generated block's body replaced by ``render(name)``, between blank lines."""

    def block(m: re.Match[str]) -> str:
        indent = m["indent"]
        body = "\n".join(indent + line if line else line for line in render(m["name"]).split("\n"))
        return f"{indent}<!-- table: {m['name']} -->\n\n{body}\n\n{indent}<!-- /table -->"

    return BLOCK.sub(block, text)

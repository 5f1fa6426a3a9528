"""Markdown tables and the number formats of the result tables (no torch: the table generator stays light)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

__all__ = ["bold", "markdown_table", "pct", "spread_cell"]


def _cell(text: str) -> str:
    return re.sub(r"(?<!\\)\|", r"\\|", text)  # a bare "|" would end the cell


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str] | None = None) -> str:
    """A markdown table: ``| a | b |`` rows under a ``|---|---|`` rule (``align``: one rule per column, e.g.
    ``"---:"``); a ``|`` inside a cell is escaped, an empty cell is written ``| |``.

    Raises:
        ValueError: if a row or the rule has another number of cells than the header.
    """
    rule = list(align) if align is not None else ["---"] * len(header)
    if len(rule) != len(header) or any(len(r) != len(header) for r in rows):
        raise ValueError(f"every row and the rule need {len(header)} cells, as the header {list(header)}.")

    def line(cells: Sequence[str]) -> str:
        return "|" + "|".join(f" {_cell(c)} " if c else " " for c in cells) + "|"

    return "\n".join([line(header), "|" + "|".join(rule) + "|", *map(line, rows)])


def pct(fraction: float, digits: int = 0) -> str:
    """``0.6`` → ``"60 %"`` (with ``digits`` decimals); exactly 0 → ``"0 %"``."""
    return "0 %" if fraction == 0 else f"{100 * fraction:.{digits}f} %"


def spread_cell(s: dict[str, Any], fmt: str = ".3f") -> str:
    """A spread (``mean``, ``min``, ``max``) as ``"mean (min–max)"``."""
    return f"{s['mean']:{fmt}} ({s['min']:{fmt}}–{s['max']:{fmt}})"


def bold(text: str, on: bool = True) -> str:
    """``**text**`` when ``on``."""
    return f"**{text}**" if on and text else text

"""The result tables of the documentation, generated from the JSON the benchmarks and recipes write.

Every table has a name and a function that reads its JSON under the repository root and returns the markdown
(:data:`TABLES`); ``python -m benchmarks.tables`` rewrites the blocks of :data:`DOCUMENTS` marked with that name
(:mod:`.markers`), and ``--check`` exits 1 where a document differs from what the JSON gives.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from benchmarks.tables import cost, headline, neurons, structured, training
from benchmarks.tables.markers import fill, names

__all__ = ["DOCUMENTS", "TABLES", "generate"]

DOCUMENTS = ("README.md", "docs/RESULTS.md")  # relative to the repository root

TABLES: dict[str, Callable[[Path], str]] = {  # name → table from the JSON under the root
    "headline": headline.headline,
    "main": training.main_job,
    "scale": cost.scale,
    "overhead": cost.overhead,
    "speed": cost.speed,
    "rounding-speed": cost.rounding_speed,
    "structured-scale": cost.structured_scale,
    "transfer": training.transfer,
    "distill-cost": training.distill_cost,
    "transfer-schedule": training.transfer_schedule,
    "quality": training.quality,
    "sweep": training.sweep,
    "pretrained": training.pretrained,
    "criteria": neurons.criteria,
    "mi-ablation": neurons.mi_ablation,
    "structured": structured.structured,
    "structured-speed": structured.structured_speed,
    "structured-cost": structured.structured_cost,
}


def generate(root: Path) -> dict[str, tuple[str, str]]:
    """``{document: (its text now, its text with every table generated from the JSON under root)}``.

    Raises:
        ValueError: for a block naming no known table, or a known table placed in no document or in two places.
    """
    out, placed = {}, []
    for doc in DOCUMENTS:
        text = (root / doc).read_text()
        unknown = [n for n in names(text) if n not in TABLES]
        if unknown:
            raise ValueError(f"{doc}: no table named {unknown}; known: {sorted(TABLES)}.")
        placed += names(text)
        out[doc] = (text, fill(text, lambda name: TABLES[name](root)))
    twice = sorted({n for n in placed if placed.count(n) > 1})
    missing = sorted(set(TABLES) - set(placed))
    if twice or missing:
        raise ValueError(f"every table is placed exactly once: twice {twice}, nowhere {missing}.")
    return out

"""Where the tables read their figures: JSON files under the repository root."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["load", "result"]


def load(root: Path, path: str) -> Any:
    """The JSON document at ``root / path``."""
    return json.loads((root / path).read_text())


def result(root: Path, name: str) -> Any:
    """The JSON a benchmark wrote: ``benchmarks/results/<name>.json``."""
    return load(root, f"benchmarks/results/{name}.json")

"""What the benchmarks write: the facts of the machine and software a figure was measured with, JSON files,
markdown tables (:mod:`benchmarks.markdown`), plots, and the spread of repeated measurements (the library's
``spread``: mean, min, max, sample standard deviation, count)."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from benchmarks.markdown import markdown_table
from lightning_prune.callbacks.report import spread

__all__ = ["RESULTS", "ROOT", "facts", "markdown_table", "pyplot", "spread", "write_json"]

ROOT = Path(__file__).resolve().parents[2]  # the repository
RESULTS = ROOT / "benchmarks" / "results"  # where every benchmark writes its JSON by default


def cpu_model() -> str:
    """The CPU's model name and the number of logical CPUs this process sees (from /proc/cpuinfo)."""
    names = [
        ln.split(":", 1)[1].strip()
        for ln in Path("/proc/cpuinfo").read_text().splitlines()
        if ln.startswith("model name")
    ]
    return f"{names[0]} ({len(names)} logical CPUs visible)" if names else platform.processor()


FACTS: dict[str, Callable[[], Any]] = {  # JSON key → how it is read, at the time of the call
    "cpu": cpu_model,
    "cpu_count": os.cpu_count,
    "torch_num_threads": torch.get_num_threads,
    "torch": lambda: torch.__version__,
    "lightning": lambda: pl.__version__,
    "python": platform.python_version,
    "platform": platform.platform,
    "processor": platform.processor,
    "load_average_1_5_15min_at_end": os.getloadavg,
}


def facts(*keys: str) -> dict[str, Any]:
    """``{key: value}`` of the named facts of the machine and software (:data:`FACTS`), in the order given.

    Raises:
        KeyError: for a key that is not a known fact.
    """
    unknown = [k for k in keys if k not in FACTS]
    if unknown:
        raise KeyError(f"unknown facts {unknown}; known: {sorted(FACTS)}.")
    return {k: FACTS[k]() for k in keys}


def write_json(path: Path, document: Any, default: Callable[[Any], Any] | None = None) -> None:
    """Write ``document`` as indented JSON to ``path``, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=default))


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend, or ``None`` where matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt

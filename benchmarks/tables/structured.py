"""Tables of structured pruning to a size (``structured.json``): quality of every row per family over seeds, and the
speed of each exported shape against the dense model beside its FLOP bound."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.markdown import bold, markdown_table, pct, spread_cell
from benchmarks.tables.source import result

__all__ = ["structured", "structured_speed"]


def _params(cell: dict[str, Any]) -> str:
    p = cell["params"]
    kept = cell.get("params_fraction")
    count = f"{p['mean'] / 1e3:.0f} k" if p["min"] == p["max"] else f"{p['min'] / 1e3:.0f}–{p['max'] / 1e3:.0f} k"
    return f"{count} ({pct(kept['mean'], 1)})" if kept else count


def structured(root: Path) -> str:
    """Per family and row: validation perplexity and its ratio to dense fine-tuning, mean (min–max) over seeds, and
    the parameters of the exported model; the best of ours in bold."""
    doc = result(root, "structured")
    summary = doc["summary"]
    header = ["family", "method", "val ppl, mean (min–max)", "× dense, mean (min–max)", "parameters (of dense)"]
    rows = []
    for family, fam in summary.items():
        best = fam["goals"].get("best_of_ours")
        for method, cell in fam["rows"].items():
            strong = method == best
            ratio = spread_cell(cell["ratio"]) if "ratio" in cell else "—"
            cells = [family, method, spread_cell(cell["val_ppl"]), ratio, _params(cell)]
            rows.append([bold(c, strong) for c in cells])
    return markdown_table(header, rows)


_SHAPE = {  # config field → short name
    "n_layer": "blocks",
    "num_hidden_layers": "blocks",
    "n_inner": "ffn",
    "intermediate_size": "ffn",
    "n_head": "heads",
    "num_attention_heads": "heads",
    "n_embd": "hidden",
    "hidden_size": "hidden",
}


def _shape(shape: dict[str, Any]) -> str:
    return ", ".join(f"{_SHAPE[k]} {v}" for k, v in shape.items() if k in _SHAPE)


def structured_speed(root: Path) -> str:
    """Per family and distinct exported shape (seed 0): throughput and latency speed-ups over dense against the FLOP
    bound, and how many rows exported that shape."""
    doc = result(root, "structured")
    speed, models = doc["speed"], doc["conditions"]["models"]
    header = ["family", "shape (rows exporting it)", "parameters", "throughput", "latency", "FLOP bound"]
    header += ["efficiency: throughput / latency"]
    rows = []
    for family, fam in speed["families"].items():
        for label, s in fam["shapes"].items():
            t, lat = s["throughput"], s["latency"]
            n = sum(1 for v in fam["rows"].values() if v == label)
            rows.append(
                [
                    family,
                    f"{_shape(s['shape'] or models[family])} ({n})",
                    f"{s['params'] / 1e3:.0f} k",
                    f"{t['speedup']:.2f}× ({t['tokens_per_s']:.0f} tok/s)",
                    f"{lat['speedup']:.2f}× ({lat['ms']:.1f} ms)",
                    f"{t['flop_bound']:.2f}×",
                    f"{pct(t['efficiency'])} / {pct(lat['efficiency'])}",
                ]
            )
    return markdown_table(header, rows)

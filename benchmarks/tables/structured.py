"""Tables of structured pruning to a size (``structured.json``): quality of every row per family over seeds, the
speed of each exported shape against the dense model beside its FLOP bound, and the callback's own cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.markdown import bold, markdown_table, pct, spread_cell
from benchmarks.tables.source import result

__all__ = ["structured", "structured_cost", "structured_speed"]


def _params(cell: dict[str, Any]) -> str:
    p = cell["params"]
    kept = cell.get("params_fraction")
    count = f"{p['mean'] / 1e3:.0f} k" if p["min"] == p["max"] else f"{p['min'] / 1e3:.0f}–{p['max'] / 1e3:.0f} k"
    return f"{count} ({pct(kept['mean'], 1)})" if kept else count


def _events(cell: dict[str, Any]) -> str:
    if "event_seconds" not in cell:
        return "—"
    events, run = cell["event_seconds"]["mean"], cell["run_seconds"]["mean"]
    return f"{events:.1f} s ({pct(events / run, 0)})"


def structured(root: Path) -> str:
    """Per family and row: validation perplexity and its ratio to dense fine-tuning, mean (min–max) over seeds, the
    parameters of the exported model and the time its pruning events took (measuring included); the best of ours
    in bold."""
    doc = result(root, "structured")
    summary = doc["summary"]
    header = ["family", "method", "val ppl, mean (min–max)", "× dense, mean (min–max)", "parameters (of dense)"]
    header += ["pruning events, s (of the run)"]
    rows = []
    for family, fam in summary.items():
        best = fam["goals"].get("best_of_ours")
        for method, cell in fam["rows"].items():
            strong = method == best
            ratio = spread_cell(cell["ratio"]) if "ratio" in cell else "—"
            cells = [family, method, spread_cell(cell["val_ppl"]), ratio, _params(cell), _events(cell)]
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


def structured_cost(root: Path) -> str:
    """Per family and configuration of ``StructuredPruning``: the training step time beside a run without it (same
    model, steps taking turns) and the time of one pruning event, also in training steps."""
    doc = result(root, "structured")
    over = doc["overhead"]
    header = ["family", "StructuredPruning", "step time", "× without", "one event", "event, in steps"]
    rows = []
    for family, fam in over["families"].items():
        for label, cell in fam.items():
            event = cell.get("event_s")
            rows.append(
                [
                    family,
                    label,
                    f"{cell['step_ms']:.1f} ms",
                    f"{cell['step_ratio']:.2f}×",
                    f"{event:.2f} s" if event is not None else "—",
                    f"{cell['event_in_steps']:.1f}" if event is not None else "—",
                ]
            )
    return markdown_table(header, rows)

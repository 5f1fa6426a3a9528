"""Tables of what pruning costs and buys in time and memory: the pruning event at scale, the callbacks' step-time
overhead, and the speed of physically shrunk models."""

from __future__ import annotations

from pathlib import Path

from benchmarks.markdown import bold, markdown_table, pct
from benchmarks.tables.source import result

__all__ = ["overhead", "rounding_speed", "scale", "speed", "structured_scale"]


def scale(root: Path) -> str:
    """``scale.json``: one global selection at 60 % per number of scores, beside ``kthvalue`` and the sort."""
    rows = result(root, "scale")["event"]
    by = {(r["scores"], r["method"]): r for r in rows}
    cells = []
    for n in dict.fromkeys(r["scores"] for r in rows):
        floor = by[n, "kthvalue floor"]["seconds"]

        def timed(method: str, digits: int = 2, n: int = n, floor: float = floor) -> str:
            r = by.get((n, method))
            return "—" if r is None else f"{r['seconds']:.2f} s ({r['seconds'] / floor:.{digits}f}×)"

        exact = by[n, "compute_masks"]
        cells.append(
            [
                f"{n / 1e6:.1f} M",
                timed("compute_masks"),
                timed("compute_masks cap"),
                f"{floor:.2f} s",
                timed("sort reference", 1),
                f"{exact['extra_bytes'] / exact['score_bytes']:.2f}",
            ]
        )
    header = [
        "scores",
        "exact selection",
        "with `max_layer_sparsity=0.7`",
        "one `kthvalue` (floor)",
        "sort (before)",
        "selection's extra memory / score bytes",
    ]
    return markdown_table(header, cells)


OVERHEAD_LABELS = {  # configuration in overhead.json → row label
    "plain": "plain",
    "tracking fp32": "tracking, float32 state",
    "tracking bf16": "tracking, bfloat16 state",
    "tracking + pruning": "tracking + pruning",
}


def _bytes_ratio(x: float) -> str:
    return "0" if x == 0 else f"{x:.2f}"


def overhead(root: Path) -> str:
    """``overhead.json``: median step, ratios to plain training and state bytes per configuration."""
    cells = []
    for r in result(root, "overhead")["rows"]:
        lo, hi = r["ratio_per_round_min_max"]
        cells.append(
            [
                OVERHEAD_LABELS[r["config"]],
                f"{r['median_ms']:.1f} ms",
                f"{r['ratio_vs_plain']:.3f}",
                f"{r['paired_ratio_median']:.3f}",
                "—" if r["config"] == "plain" else f"{lo:.3f}–{hi:.3f}",
                f"{r['cpu_ratio_vs_plain']:.3f}",
                _bytes_ratio(r["tracker_over_weights"]),
                _bytes_ratio(r["masks_over_weights"]),
            ]
        )
    header = [
        "config",
        "median step",
        "ratio vs plain",
        "paired ratio (median)",
        "ratio range over rounds",
        "CPU-time ratio",
        "tracker bytes / weight bytes",
        "mask bytes / weight bytes",
    ]
    return markdown_table(header, cells)


SPEED_LABELS = {  # configuration in speed.json → row label
    "gpt2 (E=512, n_inner=4096, 4 layers)": "GPT-2 E=512, n_inner=4096, 4 layers",
    "llama (E=512, intermediate=4096, 4 layers, GQA 8/4)": "Llama E=512, intermediate=4096, 4 layers, GQA 8/4",
}


def speed(root: Path) -> str:
    """``speed.json``: dense against shrunk forward passes; the throughput at the most neurons removed in bold."""
    rows = result(root, "speed")["rows"]
    most = max(r["ffn_removed"] for r in rows)
    cells = []
    for r in rows:
        latency = r["batch"] == 1
        dense, shrunk = (
            (f"{r['dense_ms']:.1f} ms", f"{r['shrunk_ms']:.1f} ms")
            if latency
            else (f"{r['dense_tokens_per_s']:.0f} tok/s", f"{r['shrunk_tokens_per_s']:.0f} tok/s")
        )
        cells.append(
            [
                SPEED_LABELS.get(r["config"], r["config"]),
                pct(r["ffn_removed"]),
                f"{r['batch']} × {r['seq']}",
                dense,
                shrunk,
                bold(f"{r['speedup']:.2f}×", not latency and r["ffn_removed"] == most),
                f"{r['flop_bound']:.2f}×",
                pct(r["efficiency"]),
                f"{r['dense_params'] / 1e6:.1f} M → {r['shrunk_params'] / 1e6:.1f} M",
            ]
        )
    header = [
        "config",
        "FFN neurons removed",
        "batch × seq",
        "dense",
        "shrunk",
        "speed-up",
        "FLOP bound",
        "efficiency",
        "parameters",
    ]
    return markdown_table(header, cells)


def rounding_speed(root: Path) -> str:
    """``rounding_speed.json``: exported feed-forward widths with and without rounding to a multiple of 128."""
    doc = result(root, "rounding_speed")
    c = doc["conditions"]
    rows = [
        [
            f"{r['intermediate_size']} ({r['shape']})",
            f"{r['tokens_per_second']:,.0f}",
            f"{r['latency_ms']:.1f} ms",
            f"{r['flop_bound']:.3f}×",
            f"{r['throughput_efficiency']:.3f}",
            f"{r['latency_efficiency']:.3f}",
        ]
        for r in doc["rows"]
    ]
    header = [
        "feed-forward width",
        f"tokens/s ({c['throughput']})",
        f"latency ({c['latency']})",
        "FLOP bound vs unrounded",
        "throughput per FLOP vs unrounded",
        "latency per FLOP vs unrounded",
    ]
    table = markdown_table(header, rows, ["---", "---:", "---:", "---:", "---:", "---:"])
    f = doc["facts"]
    return (
        f"{table}\n\n{c['model']}; {c['rounds']} rounds, {c['timing']}; {f['cpu_count']} CPU cores, torch {f['torch']}."
    )


def structured_scale(root: Path) -> str:
    """``structured_scale.json``: StructuredPruning's per-step and per-event cost at a 32 M-parameter Llama."""
    doc = result(root, "structured_scale")
    c, f = doc["conditions"], doc["facts"]
    rows = [["plain training", f"{doc['seconds_per_step']['plain'] * 1000:.0f} ms", "1.00×", "—"]]
    for k in ("activation", "taylor"):
        rows.append(
            [
                f'`StructuredPruning(0.5, …, criterion="{k}")`',
                f"{doc['seconds_per_step'][k] * 1000:.0f} ms",
                f"{doc['times_plain'][k]:.2f}×",
                f"{doc['event_seconds'][k]:.1f} s ({doc['event_in_plain_steps'][k]:.0f} plain steps)",
            ]
        )
    table = markdown_table(["run", "step", "× plain", "one event"], rows, ["---", "---:", "---:", "---:"])
    machine = f"{f['cpu_count']} CPU cores, torch {f['torch']}"
    return (
        f"{table}\n\n{c['model']}, batch {c['batch']}, {c['steps_per_fit']} steps a fit (the event at step "
        f"{c['event_step']}), {c['rounds']} rounds; {c['timing']}; {machine}."
    )

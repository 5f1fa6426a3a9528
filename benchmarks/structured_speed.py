"""Speed of the structured benchmark's exported models on the CPU: each family's dense model and every exported shape
(one per row, seed 0), timed interleaved in one process after warm-up, beside the FLOP bound.

Models are built from their shapes with random weights (speed does not depend on the values). Throughput: forward
passes of ``speed_batch × block_size`` tokens; latency: one sequence of ``block_size`` tokens; median of the
repeats, in which the models take turns. FLOP bound = dense FLOPs / exported FLOPs per forward
(:func:`benchmarks.speed.forward_flops`: every Linear/Conv1D and the attention products); efficiency = measured
speed-up / bound.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch

from benchmarks.speed import forward_flops, time_interleaved
from benchmarks.structured_runs import Config, build

__all__ = ["measure_speed"]


def _shapes(rows: list[dict[str, Any]], family: str) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """``({label: shape}, {method: label})``: each distinct exported shape at the first seed, labelled by the first
    method that exported it, and the label of every method's shape."""
    first = min((r["seed"] for r in rows if r["family"] == family), default=0)
    shapes: dict[str, dict[str, Any]] = {}
    labels: dict[str, str] = {}
    by_key: dict[str, str] = {}
    for r in rows:
        if r["family"] != family or r["seed"] != first:
            continue
        key = repr(sorted(r["shape"].items()))
        by_key.setdefault(key, r["method"])
        shapes.setdefault(by_key[key], r["shape"])
        labels[r["method"]] = by_key[key]
    return shapes, labels


def measure_speed(cfg: Config, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per family: per distinct exported shape, median times, speed-up over dense, FLOP bound and efficiency; and
    which shape each method exported."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.speed_threads)
    out: dict[str, Any] = {"threads": cfg.speed_threads, "seq": cfg.block_size, "families": {}}
    try:
        for family in cfg.families:
            shapes, labels = _shapes(rows, family)
            torch.manual_seed(0)
            dense_label = labels.get("dense fine-tuning", "dense")
            models = {dense_label: build(family, cfg).eval()}
            models |= {
                label: build(family, cfg, shape).eval() for label, shape in shapes.items() if label != dense_label
            }
            flops = {k: forward_flops(m, cfg.block_size) for k, m in models.items()}
            params = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
            per: dict[str, Any] = {}
            for kind, batch in (("throughput", cfg.speed_batch), ("latency", 1)):
                ids = torch.randint(0, 256, (batch, cfg.block_size))
                times = time_interleaved(models, ids, cfg.speed_repeats, warmup=3)
                med = {k: statistics.median(v) for k, v in times.items()}
                for k in models:
                    speedup, bound = med[dense_label] / med[k], flops[dense_label] / flops[k]
                    per.setdefault(k, {"params": params[k], "flops": flops[k], "shape": shapes.get(k)})
                    per[k][kind] = {
                        "batch": batch,
                        "ms": 1e3 * med[k],
                        "tokens_per_s": batch * cfg.block_size / med[k],
                        "speedup": speedup,
                        "flop_bound": bound,
                        "efficiency": speedup / bound,
                    }
            out["families"][family] = {"shapes": per, "rows": labels}
    finally:
        torch.set_num_threads(threads)
    return out

"""Mask selection at scale: time and memory of one pruning event over 10 M - 300 M scores, and bytes per mask entry.

Section ``event``: scores for the linear weights of a Llama-shaped model (``LAYERS`` blocks of q, k, v, o with
grouped-query k/v at a quarter of the width, gate, up, down at 8/3 of the width; 7 tensors per block, the width
chosen so that the total is about the requested size), each tensor ``|randn| · scale`` with a scale that differs
per tensor (log-spaced over two decades, as layers differ in practice), float32. Measured, each in a fresh
subprocess that first builds the scores:

* ``compute_masks``: ``compute_masks(scores, 0.6, "global")``;
* ``compute_masks cap``: the same with ``max_layer_sparsity=0.7`` (the cap binds on the low-scale tensors, so the
  capped selection iterates);
* ``kthvalue floor``: one ``torch.kthvalue`` over the scores already concatenated (the time excludes the
  concatenation; its memory is reported on its own row, ``concat``);
* ``sort reference`` (only at the smallest size, and ``sort reference cap``): the former implementation, a stable
  sort over the concatenation of all scores (kept in tests/test_masks.py as the exactness reference).

Time: ``time.perf_counter`` around the call, best of ``--repeats`` (default 3 below 50 M scores, else 1).
Extra memory: the process's peak resident set is reset just before the call (``5`` written to
``/proc/self/clear_refs``, which sets ``VmHWM`` to the current ``VmRSS``); reported is ``VmHWM`` after the call
minus ``VmRSS`` before it: temporaries and the returned masks (bool: a quarter of the float32 score bytes), as
bytes and as a fraction of the score bytes. The targets: time within 2x of the kthvalue floor, extra memory
≤ 1x the score bytes.

Section ``bytes``: bytes per entry of the masks of the smallest model in memory (bool) and packed (``pack_mask``,
8 entries per byte along each row), and the time of one pack and unpack.

Threads: ``torch.set_num_threads(1)`` by default (``--threads``), in every process: ``kthvalue`` runs on one thread
anyway, and the machine is shared with other jobs, so timings are noisy; each figure is one process's own run.

Run: ``python -m benchmarks.scale`` (10 M, 100 M and 300 M scores; a few minutes and ~3 GB at most),
``python -m benchmarks.scale --sizes 10M`` (quick). Writes ``benchmarks/results/scale.json``.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmarks.harness import facts
from benchmarks.harness.runner import Runner, option, parse, pool
from lightning_prune.masks import compute_masks, pack_mask, unpack_mask

__all__ = ["main", "make_scores", "shapes", "sort_reference"]

LAYERS = 12  # transformer blocks: 84 tensors
SPARSITY = 0.6
CAP = 0.7
TARGET_TIME_RATIO = 2.0  # compute_masks time / kthvalue time
TARGET_MEMORY_RATIO = 1.0  # extra peak memory / score bytes
METHODS = ("compute_masks", "compute_masks cap", "kthvalue floor", "sort reference", "sort reference cap")


def parse_size(text: str) -> int:
    """``"10M"`` → 10_000_000; ``"1.5G"`` → 1_500_000_000."""
    text = text.strip().upper()
    scale = {"K": 10**3, "M": 10**6, "G": 10**9}.get(text[-1], 1)
    return int(float(text.rstrip("KMG")) * scale)


def shapes(size: int) -> dict[str, tuple[int, int]]:
    """Linear weight shapes (out, in) of a Llama-shaped model with about ``size`` entries."""
    width = max(64, round(math.sqrt(size / (LAYERS * 10.5)) / 32) * 32)  # 10.5 · width² entries per block
    inner, kv = round(width * 8 / 3 / 32) * 32, width // 4
    out = {}
    for i in range(LAYERS):
        p = f"layers.{i}."
        out.update({p + "q": (width, width), p + "k": (kv, width), p + "v": (kv, width), p + "o": (width, width)})
        out.update({p + "gate": (inner, width), p + "up": (inner, width), p + "down": (width, inner)})
    return out


def make_scores(size: int) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(0)
    shp = shapes(size)
    scales = torch.logspace(-1, 1, len(shp))[torch.randperm(len(shp), generator=gen)]
    return {f: torch.randn(s, generator=gen).abs_().mul_(float(c)) for (f, s), c in zip(shp.items(), scales)}


def sort_reference(scores: dict[str, Tensor], sparsity: float, cap: float | None = None) -> dict[str, Tensor]:
    """The former selection: a stable sort over the concatenation of all scores (iterated under a cap)."""
    fqns = list(scores)
    sizes = {f: scores[f].numel() for f in fqns}
    budget = round(sparsity * sum(sizes.values()))
    caps = {f: round(cap * n) for f, n in sizes.items()} if cap is not None else {}
    fixed: dict[str, int] = {}
    while True:
        free = [f for f in fqns if f not in fixed]
        flat = torch.cat([scores[f].flatten().float() for f in free])
        k = max(0, min(budget - sum(fixed.values()), flat.numel()))
        chosen = torch.sort(flat, stable=True).indices[:k]
        ends = torch.tensor([sizes[f] for f in free]).cumsum(0)
        counts = torch.bincount(torch.bucketize(chosen, ends, right=True), minlength=len(free))
        over = [f for f, c in zip(free, counts.tolist()) if caps and c > caps[f]]
        if not over:
            break
        fixed.update({f: caps[f] for f in over})
    masks = {}
    for f in fixed:
        keep = torch.ones(sizes[f], dtype=torch.bool)
        keep[torch.sort(scores[f].flatten(), stable=True).indices[: fixed[f]]] = False
        masks[f] = keep.view_as(scores[f])
    keep_free = torch.ones(flat.numel(), dtype=torch.bool)
    keep_free[chosen] = False
    for f, part in zip(free, keep_free.split([sizes[f] for f in free])):
        masks[f] = part.view_as(scores[f])
    return masks


# ---- one measurement in a fresh process -----------------------------------------------------------------------


def _status(key: str) -> int:
    line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith(key + ":"))
    return int(line.split()[1]) * 1024  # kB


def _measured(fn: Any) -> tuple[float, int, Any]:
    """(seconds, extra peak bytes over the resident set before, result) of one call."""
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _status("VmRSS")
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    return seconds, _status("VmHWM") - before, result


def child(job: dict[str, Any]) -> dict[str, Any]:
    """Run in a fresh process: build the scores, then time and measure one method ``repeats`` times."""
    method, size, repeats = job["method"], job["size"], job["repeats"]
    torch.set_num_threads(job["threads"])
    scores = make_scores(size)
    n = sum(s.numel() for s in scores.values())
    row: dict[str, Any] = {"method": method, "scores": n, "tensors": len(scores), "score_bytes": 4 * n}
    if method == "kthvalue floor":
        _, concat_extra, flat = _measured(lambda: torch.cat([s.flatten() for s in scores.values()]))
        row["concat_extra_bytes"] = concat_extra
        fn = lambda: torch.kthvalue(flat, round(SPARSITY * n))  # noqa: E731
    elif method.startswith("compute_masks"):
        cap = CAP if method.endswith("cap") else None
        fn = lambda: compute_masks(scores, SPARSITY, "global", max_layer_sparsity=cap)  # noqa: E731
    else:
        cap = CAP if method.endswith("cap") else None
        fn = lambda: sort_reference(scores, SPARSITY, cap)  # noqa: E731
    times, extras = [], []
    for _ in range(repeats):
        seconds, extra, result = _measured(fn)
        times.append(seconds)
        extras.append(extra)
        if isinstance(result, dict):
            row["pruned"] = sum(int((~m).sum()) for m in result.values())
        del result
    row.update(seconds=min(times), all_seconds=times, extra_bytes=max(extras))
    return row


# ---- bytes per entry -----------------------------------------------------------------------------------------


def mask_bytes(size: int) -> dict[str, Any]:
    scores = make_scores(size)
    masks = compute_masks(scores, SPARSITY)
    n = sum(m.numel() for m in masks.values())
    start = time.perf_counter()
    packed = {f: pack_mask(m) for f, m in masks.items()}
    pack_s = time.perf_counter() - start
    start = time.perf_counter()
    back = {f: unpack_mask(p, masks[f].shape) for f, p in packed.items()}
    unpack_s = time.perf_counter() - start
    assert all(torch.equal(back[f], masks[f]) for f in masks)
    return {
        "entries": n,
        "bool_bytes_per_entry": sum(m.numel() * m.element_size() for m in masks.values()) / n,
        "packed_bytes_per_entry": sum(p.numel() * p.element_size() for p in packed.values()) / n,
        "pack_seconds": pack_s,
        "unpack_seconds": unpack_s,
    }


# ---- report --------------------------------------------------------------------------------------------------


@dataclass
class Config:
    sizes: str = option("10M,100M,300M", help="comma-separated numbers of scores")
    threads: int = option(1, help="torch.set_num_threads in every process")
    repeats: int = option(0, help="calls per measurement (default 3 below 50 M, else 1)")
    sort_up_to: str = option("20M", help="largest size to run the sort reference at")


def main(argv: list[str] | None = None) -> None:
    args, cli = parse(Config, argv, __doc__, "scale")
    torch.set_num_threads(args.threads)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    runner = Runner(args, cli, lambda r: {})
    load_start = os.getloadavg()
    jobs = []
    for size in sizes:
        repeats = args.repeats or (3 if size < 50_000_000 else 1)
        jobs += [{"method": m, "size": size, "repeats": repeats, "threads": args.threads} for m in METHODS
                 if not (m.startswith("sort") and size > parse_size(args.sort_up_to))]  # fmt: skip
    rows = []
    for job, r in pool(child, jobs, 1, fresh=True):
        rows.append(r)
        print(f"{r['scores'] / 1e6:.1f} M {job['method']}: {r['seconds']:.2f} s, +{r['extra_bytes'] / 2**20:.0f} MB")
    for r in rows:
        if "pruned" in r:
            r["exact_count"] = r["pruned"] == round(SPARSITY * r["scores"])  # round(s · N), cap or not (0.7 > 0.6)
    bytes_row = mask_bytes(min(sizes))
    checks = []
    for r in rows:
        if r["method"] == "compute_masks":
            floor = next(x for x in rows if x["scores"] == r["scores"] and x["method"] == "kthvalue floor")
            checks.append(
                {
                    "scores": r["scores"],
                    "time_ratio": r["seconds"] / floor["seconds"],
                    "memory_ratio": r["extra_bytes"] / r["score_bytes"],
                    "time_target_met": r["seconds"] / floor["seconds"] <= TARGET_TIME_RATIO,
                    "memory_target_met": r["extra_bytes"] / r["score_bytes"] <= TARGET_MEMORY_RATIO,
                }
            )
    result = {
        "conditions": {
            "device": "cpu",
            "torch_num_threads": args.threads,
            **facts("torch", "python", "platform", "cpu_count"),
            "load_average_1_5_15min_start_end": [load_start, os.getloadavg()],
            "sparsity": SPARSITY,
            "cap": CAP,
            "layers": LAYERS,
            "time": f"perf_counter around the call, best of {args.repeats or '3 (below 50 M) / 1'}, fresh process",
            "memory": "VmHWM after the call - VmRSS before it, VmHWM reset via /proc/self/clear_refs; includes the "
            "returned masks",
            "note": "shared 2-core machine with other jobs running: timings are noisy",
        },
        "targets": {"time_vs_kthvalue_max": TARGET_TIME_RATIO, "extra_vs_score_bytes_max": TARGET_MEMORY_RATIO},
        "event": rows,
        "checks": checks,
        "bytes": bytes_row,
        "seconds": runner.seconds,
    }
    print(json.dumps({"checks": checks, "bytes": bytes_row}))
    runner.finish(result)


if __name__ == "__main__":
    main()

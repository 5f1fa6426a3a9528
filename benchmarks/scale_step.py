"""Per-step and per-event cost of tracking + pruning on a GPT-2-small config (124 M parameters), on the CPU.

Two copies of the same model train side by side in one process, in interleaved rounds (the order alternates every
round, so drift in the machine's load falls on both): *plain* (forward, backward, AdamW step) and *pruned* (the same,
plus what ``ImportanceTracking`` + ``ScheduledPruning`` add to a step once masks exist: the running Taylor statistic
over the block weights and the registry's two fused mask passes around ``optimizer.step``). The pruning event
(scores, exact global selection, registry write, exact enforcement in weights and AdamW state) is timed once.
Bytes per parameter of masks (in memory and bit-packed) and of the statistic are measured from the tensors held.

``python -m benchmarks.scale_step`` (≈ 5 minutes on 2 cores); ``--quick`` for a 2-layer model. Writes
``benchmarks/results/scale_step.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from transformers import GPT2LMHeadModel

from benchmarks.harness import RESULTS, gpt2, markdown_table, write_json
from lightning_prune._registry import registry_of
from lightning_prune._selection import select_parameters
from lightning_prune.masks import compute_masks, pack_mask
from lightning_prune.trackers import RunningStats

__all__ = ["main", "run"]

TARGET_RATIO = 1.05  # step time of tracking + pruning relative to plain training


def step(
    model: GPT2LMHeadModel, opt: torch.optim.Optimizer, ids: torch.Tensor, stats: RunningStats | None, bf16: bool
) -> None:
    """One training step; with ``stats``, the tracker's update runs where Lightning calls it (before the step)."""
    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    if stats is not None:
        stats.update(dict(stats.params))
    opt.step()  # with masks, the registry's pre- and post-hooks run here
    opt.zero_grad(set_to_none=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    n_layer = 2 if args.quick else args.layers
    plain = gpt2(n_layer=n_layer, n_embd=args.width, n_head=args.width // 64, n_positions=1024, vocab_size=50257)
    plain = plain.to(args.device)
    config = plain.config
    pruned = copy.deepcopy(plain)
    opts = {
        name: torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.1)
        for name, m in (("plain", plain), ("pruned", pruned))
    }
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), device=args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else lambda: None
    params = {f: p for f, (_, p) in select_parameters(pruned).items()}
    stats = RunningStats(params, stats=("taylor",))
    stats.params = params  # what the callback hands the tracker each step
    step(plain, opts["plain"], ids, None, args.bf16)
    step(pruned, opts["pruned"], ids, stats, args.bf16)

    registry = registry_of(pruned)
    registry.resolve(pruned)
    sync()
    start = time.perf_counter()
    scores = {f: stats.value("taylor", f) for f in params}
    masks = compute_masks(scores, args.sparsity, "global")
    registry.write("ScheduledPruning", masks)
    registry.attach([opts["pruned"]])
    registry.enforce_([opts["pruned"]])
    sync()
    event_s = time.perf_counter() - start
    del scores

    times: dict[str, list[float]] = {"plain": [], "pruned": []}
    for r in range(args.rounds):
        order = ["plain", "pruned"] if r % 2 == 0 else ["pruned", "plain"]
        for name in order:
            model = plain if name == "plain" else pruned
            sync()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(model, opts[name], ids, stats if name == "pruned" else None, args.bf16)
            sync()
            times[name].append((time.perf_counter() - t0) / args.steps)
    ratios = [b / a for a, b in zip(times["plain"], times["pruned"])]
    zeros = sum(int((p == 0).sum()) for p in params.values())
    numel = sum(p.numel() for p in params.values())
    packed = sum(pack_mask(m).numel() for m in registry.keep.values())
    return {
        "conditions": {
            "model": f"GPT-2 config, {n_layer} layers × {args.width}, vocab {config.vocab_size}",
            "device": args.device,
            "autocast": "bf16" if args.bf16 else "none (float32)",
            "parameters": sum(p.numel() for p in plain.parameters()),
            "pruned_parameters": numel,
            "batch": [args.batch, args.seq],
            "threads": args.threads,
            "rounds": args.rounds,
            "steps_per_round": args.steps,
            "sparsity": args.sparsity,
            "statistic": "taylor (float32)",
        },
        "step_seconds": times,
        "ratio_per_round": ratios,
        "ratio_median": statistics.median(ratios),
        "target_ratio": TARGET_RATIO,
        "event_seconds": event_s,
        "event_in_plain_steps": event_s / statistics.median(times["plain"]),
        "measured_sparsity": zeros / numel,
        "bytes_per_parameter": {
            "masks_in_memory": registry.nbytes() / numel,
            "masks_packed_in_checkpoint": packed / numel,
            "statistic_taylor_float32": stats.nbytes() / numel,
        },
    }


def table(result: dict[str, Any]) -> str:
    b, ratios = result["bytes_per_parameter"], result["ratio_per_round"]
    rows = [
        [
            f"step time, tracking + pruning / plain (median of {len(ratios)} rounds)",
            f"{result['ratio_median']:.3f} (rounds {min(ratios):.3f}–{max(ratios):.3f}; "
            f"target ≤ {result['target_ratio']})",
        ],
        ["plain step", f"{statistics.median(result['step_seconds']['plain']):.2f} s"],
        ["pruning event", f"{result['event_seconds']:.2f} s = {result['event_in_plain_steps']:.2f} plain steps"],
        ["masks in memory", f"{b['masks_in_memory']:.3f} B/param"],
        ["masks in a checkpoint (bit-packed)", f"{b['masks_packed_in_checkpoint']:.3f} B/param"],
        ["Taylor statistic (float32)", f"{b['statistic_taylor_float32']:.3f} B/param"],
    ]
    return markdown_table(["figure", "measured"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 layers")
    parser.add_argument("--layers", type=int, default=12, help="12 × 768: GPT-2 small; 24 × 1024: medium")
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--device", type=str, default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for forward")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=2, help="steps per configuration per round")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "scale_step.json")
    args = parser.parse_args()
    result = run(args)
    write_json(args.out, result)
    print(table(result))


if __name__ == "__main__":
    main()

"""Per-step and per-event cost of tracking + pruning on a GPT-2-small config (124 M parameters), on the CPU.

Two copies of the same model train side by side in one process, in interleaved rounds (the order alternates every
round, so drift in the machine's load falls on both): *plain* (forward, backward, AdamW step) and *pruned* (the same,
plus what ``ImportanceTracking`` + ``ScheduledPruning`` add to a step once masks exist: the running Taylor statistic
over the block weights and the registry's two fused mask passes around ``optimizer.step``). The pruning event
(scores, exact global selection, registry write, exact enforcement in weights and AdamW state) is timed once.
Bytes per parameter of masks (in memory and bit-packed) and of the statistic are measured from the tensors held.

``python -m benchmarks.scale_step`` (≈ 5 minutes on 2 cores); ``--quick`` for a 2-layer model. Writes
``benchmarks/results/scale_step.json``.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GPT2LMHeadModel

from benchmarks.harness import gpt2
from benchmarks.harness.runner import Runner, option, parse
from benchmarks.harness.timing import take_turns
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


def run(args: Any) -> dict[str, Any]:
    """The measurement of ``args`` (a :class:`Config`, or any object with its fields)."""
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

    def steps(name: str, model: Any, tracker: RunningStats | None) -> Callable[[], None]:
        return lambda: [step(model, opts[name], ids, tracker, args.bf16) for _ in range(args.steps)]

    turns = {"plain": steps("plain", plain, None), "pruned": steps("pruned", pruned, stats)}
    rounds = take_turns(turns, args.rounds, rotate=1, sync=sync)[0]  # the order alternates every round
    times = {k: [t / args.steps for t in v] for k, v in rounds.items()}
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


@dataclass
class Config:
    quick: bool = option(False, cli=False)  # 2 layers (set by --quick)
    layers: int = option(12, help="12 × 768: GPT-2 small; 24 × 1024: medium")
    width: int = 768
    device: str = "cpu"
    bf16: bool = option(False, help="bf16 autocast for forward")
    batch: int = 4
    seq: int = 128
    rounds: int = 6
    steps: int = option(2, help="steps per configuration per round")
    sparsity: float = 0.5
    threads: int = 2


def main(argv: list[str] | None = None) -> None:
    cfg, args = parse(Config, argv, __doc__, "scale_step")
    cfg.quick = args.quick
    runner = Runner(cfg, args, lambda r: {})
    result = run(cfg)
    print(json.dumps({k: result[k] for k in ("ratio_median", "event_seconds", "bytes_per_parameter")}))
    runner.finish(result)


if __name__ == "__main__":
    main()

"""The step time of distillation, beside plain fine-tuning measured side by side: a frozen teacher (``"copy"``) and a
corrected one (``corrected=True``: the teacher trains on the same batches alongside the student).

Each configuration is a short fit of the same GPT-2 on the same KJV byte batches; the fits take turns over rounds
(`take_turns`), so the machine's load falls on all alike, and each is reported as the median over rounds of its
seconds per step, and that over plain fine-tuning's. Writes ``benchmarks/results/distill_cost.json``.

    python -m benchmarks.distill_cost            # GPT-2 4×128, batch 8 × 128 tokens, 12 steps a fit, 3 rounds
    python -m benchmarks.distill_cost --quick    # a tiny model, for the tests
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import RESULTS, facts, gpt2, quiet, seed_all, text_module, trainer, write_json
from benchmarks.harness.timing import StepTimer, take_turns
from lightning_prune import Distillation
from lightning_prune.lm import CausalLM

CONFIGS = ("plain", "copy", "corrected")


def _fit(kind: str, shape: dict[str, int], steps: int, batch: int) -> float:
    """Seconds per optimizer step of one short fit of ``kind`` (the first step, compilation and set-up, left out)."""
    seed_all(0)
    dm = text_module(source="kjv", tokenizer="byte", block_size=shape["n_positions"], batch_size=batch)
    module = CausalLM(model=gpt2(**shape), warmup_steps=2)
    callbacks = {"plain": [], "copy": [Distillation("copy", check_steps=0)]}.get(kind)
    if callbacks is None:
        callbacks = [Distillation("copy", corrected=True, check_steps=0)]
    timer = StepTimer()
    trainer(max_steps=steps, callbacks=[timer, *callbacks]).fit(module, dm)
    return statistics.median(timer.seconds[1:])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tiny model, 4 steps, 1 round (for the tests)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--out", default=str(RESULTS / "distill_cost.json"))
    args = parser.parse_args(argv)
    quiet(all_warnings=True)
    torch.set_num_threads(2)
    shape = dict(n_layer=4, n_embd=128, n_head=4, n_positions=128)
    steps, rounds, batch = args.steps, args.rounds, 8
    if args.quick:
        shape, steps, rounds, batch = dict(n_layer=1, n_embd=16, n_head=2, n_positions=16), 4, 1, 2
    started = time.perf_counter()
    seconds, per_step = take_turns(
        {k: (lambda k=k: _fit(k, shape, steps, batch)) for k in CONFIGS},
        rounds=rounds,
        warmup=0 if args.quick else 1,
        rotate=1,
    )
    medians = {k: statistics.median(v) for k, v in per_step.items()}
    result = {
        "benchmark": "distill_cost",
        "conditions": {
            "model": f"GPT-2 {shape['n_layer']}x{shape['n_embd']}",
            "batch": f"{batch} x {shape['n_positions']} byte tokens (KJV)",
            "steps_per_fit": steps,
            "rounds": rounds,
            "precision": "32-true",
            "optimizer": "AdamW (CausalLM's), the corrected teacher's own AdamW",
            "timing": (
                "fits take turns within each round, after one untimed round; the median over rounds of each fit's "
                "median step time"
            ),
        },
        "seconds_per_step": {k: medians[k] for k in CONFIGS},
        "per_round": {k: per_step[k] for k in CONFIGS},
        "fit_seconds": seconds,
        "times_plain": {k: medians[k] / medians["plain"] for k in CONFIGS},
        "wall_seconds": time.perf_counter() - started,
        "facts": facts("cpu", "cpu_count", "torch_num_threads", "torch", "lightning", "load_average_1_5_15min_at_end"),
    }
    write_json(Path(args.out), result)
    print({k: round(v, 3) for k, v in result["times_plain"].items()})
    return result


if __name__ == "__main__":
    main()

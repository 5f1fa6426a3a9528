"""The per-step and per-event cost of `StructuredPruning` at a size users train, beside plain training measured in
turns with it: a 32 M-parameter Llama (8 blocks × 512, GQA 8/4, SwiGLU 1408, vocabulary 8192), batch 4 × 128
tokens, AdamW, float32 on the CPU.

Each configuration is a short fit on the same random token batches; the fits take turns over rounds
(`take_turns`). A step's time is taken from ``on_train_batch_start`` to ``..._end``; the event step (the schedule's
one point) is reported on its own, in seconds and in plain steps, and the other steps as the median over the fit
and its ratio to plain training's. Writes ``benchmarks/results/structured_scale.json``.

    python -m benchmarks.structured_scale            # a few minutes on 2 cores
    python -m benchmarks.structured_scale --quick    # a tiny model, for the tests
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from benchmarks.harness import RESULTS, facts, llama, quiet, seed_all, trainer, write_json
from benchmarks.harness.timing import StepTimer, take_turns
from lightning_prune import AtSteps, StructuredPruning
from lightning_prune.lm import CausalLM

CONFIGS = ("plain", "activation", "taylor")


def _fit(kind: str, shape: dict[str, int], steps: int, event: int, batch: int, seq: int) -> list[float]:
    """The seconds of every step of one short fit of ``kind``."""
    seed_all(0)
    ids = torch.randint(0, shape["vocab_size"], (batch * steps, seq), generator=torch.Generator().manual_seed(0))
    loader = DataLoader([{"input_ids": x, "labels": x} for x in ids], batch_size=batch)
    module = CausalLM(model=llama(**shape), warmup_steps=2)
    timer = StepTimer()
    pruning = [] if kind == "plain" else [StructuredPruning(0.5, AtSteps({event: 1.0}), criterion=kind)]
    trainer(max_steps=steps, callbacks=[timer, *pruning]).fit(module, loader)
    return timer.seconds


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tiny model, 1 round (for the tests)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", default=str(RESULTS / "structured_scale.json"))
    args = parser.parse_args(argv)
    quiet(all_warnings=True)
    torch.set_num_threads(2)
    shape = dict(num_hidden_layers=8, hidden_size=512, intermediate_size=1408, num_attention_heads=8)
    shape |= dict(num_key_value_heads=4, vocab_size=8192, max_position_embeddings=128)
    steps, rounds, batch, seq = args.steps, args.rounds, 4, 128
    if args.quick:
        shape |= dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4)
        shape |= dict(num_key_value_heads=2, vocab_size=64)
        steps, rounds, batch, seq = 6, 1, 2, 16
    event = steps // 2
    params = sum(p.numel() for p in llama(**shape).parameters())
    started = time.perf_counter()
    _, runs = take_turns({k: (lambda k=k: _fit(k, shape, steps, event, batch, seq)) for k in CONFIGS}, rounds=rounds)
    steady = {k: statistics.median(s for r in runs[k] for i, s in enumerate(r) if i not in (0, event)) for k in CONFIGS}
    events = {k: statistics.median(r[event] for r in runs[k]) - steady[k] for k in CONFIGS if k != "plain"}
    result = {
        "benchmark": "structured_scale",
        "conditions": {
            "model": f"Llama {shape['num_hidden_layers']}x{shape['hidden_size']}, GQA, SwiGLU "
            f"{shape['intermediate_size']}, vocabulary {shape['vocab_size']} ({params:,} parameters)",
            "batch": f"{batch} x {seq} tokens",
            "steps_per_fit": steps,
            "event_step": event,
            "rounds": rounds,
            "structured": "StructuredPruning(0.5, AtSteps({event: 1.0}), criterion=..., loss_batches=4), all dims",
            "timing": "fits take turns within each round; the first step and the event step left out of the median",
        },
        "parameters": params,
        "seconds_per_step": steady,
        "times_plain": {k: steady[k] / steady["plain"] for k in CONFIGS},
        "event_seconds": events,
        "event_in_plain_steps": {k: v / steady["plain"] for k, v in events.items()},
        "steps": runs,
        "wall_seconds": time.perf_counter() - started,
        "facts": facts("cpu", "cpu_count", "torch_num_threads", "torch", "load_average_1_5_15min_at_end"),
    }
    write_json(Path(args.out), result)
    print({k: round(v, 3) for k, v in result["times_plain"].items()}, result["event_in_plain_steps"])
    return result


if __name__ == "__main__":
    main()

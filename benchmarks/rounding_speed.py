"""Speed of exported shapes with and without `multiple_of` rounding, on the CPU.

A Llama shape (hidden 512, 4 blocks, GQA 8/4, byte vocabulary) is shrunk from a feed-forward width of 4096 to a
width a unit-step allocation may land on (e.g. 1990) and to the nearest multiple of 128 below it (1920), and the
same for a second cut. The models take turns within every round (`take_turns`); reported are the median
throughput at batch 8 × 128 tokens and the median batch-1 latency (128 tokens), each beside the FLOP bound (FLOPs
per token from the layer shapes, `speed.forward_flops`): a rounded width that is faster per FLOP than the unrounded
one shows up as a higher efficiency. Writes ``benchmarks/results/rounding_speed.json``.

    python -m benchmarks.rounding_speed            # about a minute on 2 cores
    python -m benchmarks.rounding_speed --quick    # a tiny shape, for the tests
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import RESULTS, facts, llama, write_json
from benchmarks.harness.timing import take_turns
from benchmarks.speed import forward_flops
from lightning_prune.structured import shrink_

WIDTHS = {"unrounded": (1990, 1011), "multiple of 128": (1920, 1024)}  # kept feed-forward widths, two cuts


def _model(width: int, shape: dict[str, int]) -> torch.nn.Module:
    torch.manual_seed(0)
    model = llama(**shape).eval()
    masks = [torch.arange(shape["intermediate_size"]) < width for _ in range(shape["num_hidden_layers"])]
    return shrink_(model, neuron_masks=masks)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tiny shape, 1 round (for the tests)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default=str(RESULTS / "rounding_speed.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    shape = dict(num_hidden_layers=4, hidden_size=512, intermediate_size=4096, num_attention_heads=8)
    shape |= dict(num_key_value_heads=4, vocab_size=256, max_position_embeddings=256)
    widths, rounds, seq, batch = WIDTHS, args.rounds, 128, 8
    if args.quick:
        shape |= dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2)
        widths, rounds, seq, batch = {"unrounded": (30,), "multiple of 128": (32,)}, 1, 16, 2
    started = time.perf_counter()
    rows = []
    for cut in range(len(next(iter(widths.values())))):
        models = {name: _model(w[cut], shape) for name, w in widths.items()}
        ids = {b: torch.randint(0, 256, (b, seq), generator=torch.Generator().manual_seed(0)) for b in (1, batch)}

        def timed(model: torch.nn.Module, b: int, ids: dict[int, torch.Tensor] = ids) -> Any:
            def run() -> None:
                with torch.inference_mode():
                    model(input_ids=ids[b])

            return run

        configs = {f"{n} b{b}": timed(m, b) for n, m in models.items() for b in (1, batch)}
        seconds, _ = take_turns(configs, rounds=rounds, warmup=0 if args.quick else 2, rotate=1)
        for name, model in models.items():
            through = batch * seq / statistics.median(seconds[f"{name} b{batch}"])
            latency = statistics.median(seconds[f"{name} b1"]) * 1000
            rows.append(
                {
                    "cut": cut,
                    "shape": name,
                    "intermediate_size": model.config.intermediate_size,
                    "flops_per_token": forward_flops(model, seq) / seq,
                    "tokens_per_second": through,
                    "latency_ms": latency,
                }
            )
    for row in rows:  # speed per FLOP, relative to the unrounded shape of the same cut
        base = next(r for r in rows if r["cut"] == row["cut"] and r["shape"] == "unrounded")
        bound = base["flops_per_token"] / row["flops_per_token"]
        row["flop_bound"] = bound
        row["throughput_efficiency"] = row["tokens_per_second"] / base["tokens_per_second"] / bound
        row["latency_efficiency"] = base["latency_ms"] / row["latency_ms"] / bound
    result = {
        "benchmark": "rounding_speed",
        "conditions": {
            "model": "Llama, hidden 512, 4 blocks, GQA 8/4, byte vocabulary, random weights, float32, inference",
            "throughput": f"batch {batch} x {seq} tokens",
            "latency": f"batch 1 x {seq} tokens",
            "rounds": rounds,
            "timing": "the shapes take turns within each round, after 2 untimed rounds; medians",
        },
        "rows": rows,
        "wall_seconds": time.perf_counter() - started,
        "facts": facts("cpu", "cpu_count", "torch_num_threads", "torch", "load_average_1_5_15min_at_end"),
    }
    write_json(Path(args.out), result)
    return result


if __name__ == "__main__":
    main()

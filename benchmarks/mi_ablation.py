"""Why does mutual-information redundancy remove worse neurons than random? Measured ablations.

Same models, data, calibration and validation batches as ``benchmarks.criteria`` (GPT-2 configs of 2×128 and
4×288 trained dense on KJV bytes; reuse its ``--cache``). Each variant removes 50 % of every block's feed-forward
neurons one-shot (physically, :func:`lightning_prune.structured.shrink_`) and is measured right after removal and
after the same 25-step recovery as ``benchmarks.criteria`` (``none`` and ``refit`` only).

Variants of :func:`lightning_prune.mutual_information.redundant_neurons` (default: threshold 0, 8 correlation
neighbours, 256 samples, Silverman width, the lower mean |a| of a pair goes), one knob at a time:

* kernel width × 0.25, 0.5, 2, 4 of Silverman's rule;
* samples 64, 1024;
* threshold 0.25, 0.5, 0.75 (pairs below it do not count; the rest is filled by lowest mean |a|);
* which of a pair goes: the higher mean |a|, the lower Taylor score, a random one;
* candidates: 32 correlation neighbours.

Beside them the plain criteria (random ×3 seeds, mean |activation|, Taylor, weight norm) and two that condition
on the kept set, which the pairwise MI cannot: ``conditional`` removes, one at a time, the neuron whose activation
the kept neurons predict best (Gaussian MI to the kept set, −½·log(1 − R²)), and ``conditional × output``
(:func:`lightning_prune.compensation.conditional_redundancy` with outgoing weights) weighs that unexplained
variance by the neuron's outgoing weight norm² — the output error its removal leaves after the kept neurons take
over its part.

Each selection is measured three ways: ``none`` (the removed neurons simply vanish), ``bias`` (their mean output
folded into the output bias) and ``refit`` (the kept neurons' outgoing weights and the bias refitted by least
squares to the dense block output on the calibration tokens, :func:`lightning_prune.compensation.refit_outputs`).
Diagnostics per selection: the mean percentile (in the layer) of the removed neurons' mean |a| and the block
output error ‖ΔY‖/‖Y − Ȳ‖ on held-out tokens, per compensation; and the joint matrix-Rényi entropy of the first
k neurons of a layer, which shows why the kernel estimator cannot condition on a large kept set.

Run: ``python -m benchmarks.mi_ablation --cache runs/criteria-cache`` (after ``criteria --cache`` the models
load; about 15 minutes on 2 cores). Writes ``benchmarks/results/mi_ablation.json``.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks.criteria import SIZES, dense_model, train_
from benchmarks.harness import batches, byte_corpus, facts, val_loss
from benchmarks.harness.runner import Runner, option, parse
from lightning_prune.calibration import collect_activations, collect_taylor
from lightning_prune.compensation import conditional_redundancy, refit_outputs
from lightning_prune.mutual_information import (
    gaussian_gram,
    mean_abs_activation,
    redundant_neurons,
    renyi_entropy,
    weight_norm_scores,
)
from lightning_prune.structured import ffn_neuron_weights, ffn_output_modules, neuron_masks_from_scores, shrink_

COMPENSATIONS = ("none", "bias", "refit")


class Layer:
    """One block's calibration facts: activations (T, n), held-out activations, scores, outgoing weights (n, d)."""

    def __init__(self, acts: Tensor, held: Tensor, taylor: Tensor, w_in: Tensor, w_out: Tensor) -> None:
        self.acts, self.held, self.taylor, self.w_out = acts, held, taylor, w_out
        self.mean_abs = mean_abs_activation(acts)
        self.weight_norm = weight_norm_scores(w_in, w_out)


def mi(goes: str = "lower |a|", **kw) -> Callable[[Layer, int], Tensor]:
    """:func:`redundant_neurons` with ``kw``; ``goes`` picks which of a redundant pair is removed."""

    def select(layer: Layer, n_remove: int) -> Tensor:
        importance = {
            "lower |a|": lambda: layer.mean_abs,
            "higher |a|": lambda: -layer.mean_abs,
            "lower Taylor": lambda: layer.taylor,
            "random": lambda: torch.rand(layer.acts.shape[1], generator=torch.Generator().manual_seed(5)),
        }[goes]()
        return redundant_neurons(layer.acts, n_remove, importance=importance, **kw)

    return select


def scored(name: str, seed: int = 0) -> Callable[[Layer, int], Tensor]:
    def select(layer: Layer, n_remove: int) -> Tensor:
        n = layer.acts.shape[1]
        score = {
            "random": lambda: torch.rand(n, generator=torch.Generator().manual_seed(seed)),
            "activation": lambda: layer.mean_abs,
            "taylor": lambda: layer.taylor,
            "weight_norm": lambda: layer.weight_norm,
        }[name]()
        return neuron_masks_from_scores([score], n_remove / n)[0]

    return select


VARIANTS: dict[str, tuple[str, Callable[[Layer, int], Tensor]]] = {  # label → (knob, selection)
    "random (seed 0)": ("criterion", scored("random", 0)),
    "random (seed 1)": ("criterion", scored("random", 1)),
    "random (seed 2)": ("criterion", scored("random", 2)),
    "mean |activation|": ("criterion", scored("activation")),
    "Taylor": ("criterion", scored("taylor")),
    "weight norm": ("criterion", scored("weight_norm")),
    "MI default": ("criterion", mi()),
    "MI width ×0.25": ("kernel width", mi(kernel_width=0.25)),
    "MI width ×0.5": ("kernel width", mi(kernel_width=0.5)),
    "MI width ×2": ("kernel width", mi(kernel_width=2.0)),
    "MI width ×4": ("kernel width", mi(kernel_width=4.0)),
    "MI 64 samples": ("samples", mi(max_samples=64)),
    "MI 1024 samples": ("samples", mi(max_samples=1024)),
    "MI threshold 0.25": ("threshold", mi(threshold=0.25)),
    "MI threshold 0.5": ("threshold", mi(threshold=0.5)),
    "MI threshold 0.75": ("threshold", mi(threshold=0.75)),
    "MI: higher |a| of pair goes": ("which goes", mi("higher |a|")),
    "MI: lower Taylor of pair goes": ("which goes", mi("lower Taylor")),
    "MI: random one of pair goes": ("which goes", mi("random")),
    "MI 32 neighbours": ("candidates", mi(k=32)),
    "conditional (Gaussian MI to kept set)": ("conditioning", lambda lay, r: conditional_redundancy(lay.acts, r)),
    "conditional × output": ("conditioning", lambda lay, r: conditional_redundancy(lay.acts, r, lay.w_out)),
}


def removed_percentile(layers: list[Layer], masks: list[Tensor]) -> float:
    """Mean percentile (0 = least active) of the removed neurons' mean |a| within their layer."""
    values = []
    for layer, keep in zip(layers, masks, strict=True):
        rank = torch.argsort(torch.argsort(layer.mean_abs)).float() / (len(keep) - 1)
        values.append(rank[~keep.cpu()].mean().item())
    return 100.0 * sum(values) / len(values)


def compensated(dense: nn.Module, layers: list[Layer], masks: list[Tensor], how: str) -> nn.Module:
    model = copy.deepcopy(dense)
    if how != "none":
        for module, layer, keep in zip(ffn_output_modules(model).values(), layers, masks, strict=True):
            refit_outputs(module, layer.acts, keep, bias_only=how == "bias")
    return shrink_(model, neuron_masks=masks)


@torch.no_grad()
def block_error(dense: nn.Module, model: nn.Module, layers: list[Layer], masks: list[Tensor]) -> float:
    """Mean over blocks of ‖Y' − Y‖ / ‖Y − Ȳ‖ of the block output on held-out activations."""
    errs = []
    pairs = zip(ffn_output_modules(dense).values(), ffn_output_modules(model).values(), layers, masks, strict=True)
    for m0, m1, layer, keep in pairs:
        y = m0(layer.held)
        y1 = m1(layer.held[:, keep])
        errs.append(((y1 - y).norm() / (y - y.mean(0)).norm()).item())
    return sum(errs) / len(errs)


@torch.no_grad()
def joint_entropy_curve(acts: Tensor, ks: tuple[int, ...] = (1, 2, 4, 8, 16, 64), samples: int = 256) -> dict:
    """Matrix-Rényi (α = 2) joint entropy in bits of the first k neurons (Hadamard product of their Gram matrices)
    over ``samples`` tokens; its ceiling is log2(samples)."""
    a = acts[:samples].t()  # (n, N)
    out, prod = {}, torch.ones(a.shape[1], a.shape[1])
    for i in range(max(ks)):
        prod = prod * gaussian_gram(a[i])
        if i + 1 in ks:
            out[i + 1] = renyi_entropy(prod / prod.trace()).item()
    return {"bits": out, "ceiling_bits": float(torch.log2(torch.tensor(float(a.shape[1]))))}


def run_size(name: str, data: tuple[Tensor, Tensor], args: Any) -> dict:
    lr = SIZES[name][2]
    train, val_data = data
    dense, _ = dense_model(name, train, args)
    val = batches(val_data, args.val_batches, args.batch, args.seq, torch.Generator().manual_seed(2))
    calib = batches(train, args.calib_batches, args.batch, args.seq, torch.Generator().manual_seed(3))
    modules = ffn_output_modules(dense)
    acts = collect_activations(modules, dense, calib)
    held = collect_activations(modules, dense, val[:4])
    taylor = collect_taylor(modules, lambda ids: dense(ids, labels=ids).loss, calib)
    dense.zero_grad(set_to_none=True)
    layers = [
        Layer(acts[n], held[n], taylor[n], w_in, w_out)
        for n, (w_in, w_out) in zip(modules, ffn_neuron_weights(dense), strict=True)
    ]
    dense_loss = val_loss(dense, val)
    rows = []
    for label, (knob, select) in VARIANTS.items():
        if args.only and not any(o in label for o in args.only):
            continue
        t0 = time.perf_counter()
        masks = [select(layer, round(args.sparsity * layer.acts.shape[1])) for layer in layers]
        seconds = time.perf_counter() - t0
        row = {
            "size": name,
            "variant": label,
            "knob": knob,
            "select_seconds": seconds,
            "removed_activation_percentile": removed_percentile(layers, masks),
        }
        for how in COMPENSATIONS:
            model = compensated(dense, layers, masks, how)
            row[f"{how}/block_error"] = block_error(dense, model, layers, masks)
            row[f"{how}/after_removal"] = val_loss(model, val)
            if args.recovery_steps and how != "bias":
                train_(model, train, args.recovery_steps, lr / 4, args, seed=4)
                row[f"{how}/after_recovery"] = val_loss(model, val)
        rows.append(row)
        print(
            f"{name} {label}: " + " ".join(f"{k}={v:.3f}" for k, v in row.items() if isinstance(v, float)), flush=True
        )
    return {
        "dense_val_loss": dense_loss,
        "params": sum(p.numel() for p in dense.parameters()),
        "rows": rows,
        "joint_entropy": joint_entropy_curve(layers[0].acts),
    }


@dataclass
class Config:
    threads: int = torch.get_num_threads()
    sizes: tuple[str, ...] = option(tuple(SIZES), choices=list(SIZES))
    steps: int = option(1200, help="training steps of the dense models")
    source: str = option("kjv", cli=False)  # the models of benchmarks.criteria, on KJV bytes
    batch: int = 8
    seq: int = 128
    sparsity: float = 0.5
    calib_batches: int = 8
    val_batches: int = 16
    recovery_steps: int = 25
    only: tuple[str, ...] = option((), type=str, help="run only variants whose label contains one of these")


def main(argv: list[str] | None = None) -> None:
    args, cli = parse(Config, argv, __doc__, "mi_ablation")
    args.cache = cli.cache
    torch.set_num_threads(args.threads)
    runner = Runner(args, cli, lambda r: {})
    data = byte_corpus("kjv")
    results = {size: run_size(size, data, args) for size in args.sizes}
    out = {
        "conditions": {
            "train_steps": args.steps,
            "batch": args.batch,
            "seq": args.seq,
            "sparsity": args.sparsity,
            "calib_tokens": args.calib_batches * args.batch * args.seq,
            "val_tokens": args.val_batches * args.batch * args.seq,
            "recovery_steps": args.recovery_steps,
            **facts("torch_num_threads", "torch", "load_average_1_5_15min_at_end"),
        },
        "sizes": results,
        "seconds": runner.seconds,
    }
    for size, result in results.items():
        print(f"{size} joint entropy of the first k neurons: {json.dumps(result['joint_entropy'])}")
    runner.finish(out)


if __name__ == "__main__":
    main()

"""What the quality benchmarks measure after training: perplexity over held-out blocks, mean loss over held-out
batches, and the sparsity read from the weights themselves."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["measured_sparsity", "perplexity", "val_loss"]


@torch.no_grad()
def perplexity(model: nn.Module, blocks: Tensor, batch: int = 64) -> float:
    """exp(mean next-token NLL) over ``blocks`` (N, T), every block scored on its tokens 2..T."""
    was_training = model.training
    model.eval()
    nll, count = 0.0, 0
    for i in range(0, blocks.shape[0], batch):
        ids = blocks[i : i + batch]  # (b, T)
        logits = model(input_ids=ids).logits[:, :-1]  # (b, T-1, V)
        nll += F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="sum").item()
        count += ids[:, 1:].numel()
    model.train(was_training)
    return math.exp(nll / count)


@torch.no_grad()
def val_loss(model: nn.Module, val: list[Tensor]) -> float:
    """Mean of the model's own loss (``model(ids, labels=ids).loss``) over the batches ``val``; leaves it in eval."""
    model.eval()
    return sum(model(ids, labels=ids).loss.item() for ids in val) / len(val)


@torch.no_grad()
def measured_sparsity(module: nn.Module, fqns: list[str]) -> tuple[float, dict[str, float]]:
    """Fraction of exactly-zero entries of the pruned matrices ``fqns``, over all and per matrix (read from the
    weights, so masks must have been made permanent)."""
    params = dict(module.named_parameters())
    missing = [f for f in fqns if f not in params]
    if missing:
        raise RuntimeError(f"pruned weights are not plain parameters (masks not made permanent?): {missing[:3]}")
    zeros = {f: int((params[f] == 0).sum()) for f in fqns}
    total = sum(params[f].numel() for f in fqns)
    return sum(zeros.values()) / total, {f: zeros[f] / params[f].numel() for f in fqns}

"""Holding masks on tensors: exact clearing, a cheap finiteness check, and measured sparsity.

A pruned entry is cleared to exactly +0.0 whatever it held (NaN and infinity included) and a kept entry is left bit
for bit: `clear_` multiplies the tensors' integer views by the bool keep masks in one fused call.
`MaskRegistry` holds masks this way during training; `apply_masks_` is the
one-off form (export, recipes).

Examples:
    >>> w = {"a": torch.tensor([1.0, float("nan"), 3.0])}
    >>> apply_masks_(w, {"a": torch.tensor([False, True, False])})
    >>> w["a"], all_finite([w["a"]]), sparsity_report(w)
    (tensor([1., 0., 3.]), True, (0.3333333333333333, {'a': 0.3333333333333333}))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from lightning_prune._compat import foreach_mul_, foreach_norm

__all__ = ["all_finite", "apply_masks_", "clear_", "sparsity_report"]

_SAME_WIDTH = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}  # an integer dtype per element size


def _bits(t: Tensor) -> Tensor:
    """``t`` viewed as integers of the same width (same storage), so a multiply by a bool mask clears the pruned
    entries' bits whatever they hold: +0.0 exactly, also over NaN and infinity, and kept entries bit for bit."""
    return t if not t.is_floating_point() else t.view(_SAME_WIDTH[t.element_size()])


@torch.no_grad()
def clear_(tensors: Sequence[Tensor], keeps: Sequence[Tensor]) -> None:
    """Set every entry of each tensor whose ``keep`` is False to exactly +0.0, in place, whatever it held (NaN and
    infinity included), leaving the kept entries bit for bit: one fused multiply of the tensors' integer views by
    the bool masks (``torch._foreach_mul_``), which is also cheaper than a float multiply or ``masked_fill_``."""
    if tensors:
        foreach_mul_([_bits(t) for t in tensors], list(keeps))


@torch.no_grad()
def apply_masks_(tensors: Mapping[str, Tensor | None], pruned: Mapping[str, Tensor]) -> None:
    """Set the pruned entries (``pruned[fqn]`` True) of each tensor to exactly zero, in place (also over NaN).
    ``None`` tensors (no gradient) are skipped. Training holds masks through
    `MaskRegistry`; this is for one-off use (export, recipes)."""
    present = [f for f in pruned if tensors[f] is not None]
    clear_([tensors[f] for f in present], [~pruned[f].to(tensors[f].device) for f in present])


@torch.no_grad()
def all_finite(tensors: list[Tensor]) -> bool:
    """Whether every entry of every tensor is finite, with one host sync in the common case.

    The 2-norms of all tensors take one ``_foreach_norm``; only when one is not finite (a NaN or inf entry, or
    finite entries beyond ~1e19 whose squares overflow) is the exact per-tensor check run.
    """
    if not tensors:
        return True
    if bool(torch.isfinite(torch.stack(foreach_norm(tensors, 2))).all()):
        return True
    return all(bool(torch.isfinite(t).all()) for t in tensors)


@torch.no_grad()
def sparsity_report(tensors: Mapping[str, Tensor]) -> tuple[float, dict[str, float]]:
    """Measured sparsity: the fraction of entries that are exactly zero, over all tensors and per tensor."""
    zeros = {f: int((t == 0).sum()) for f, t in tensors.items()}
    total = sum(t.numel() for t in tensors.values())
    per_layer = {f: zeros[f] / tensors[f].numel() for f in tensors}
    return (sum(zeros.values()) / total if total else 0.0), per_layer

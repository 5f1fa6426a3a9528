"""Unstructured masks in each scope: one ranking over all weights, one per weight, one per output row.

A mask is a ``bool`` tensor shaped like its weight: True keeps the entry, False prunes it. The masks here prune
the lowest-scored entries (scores: higher = more important) at a target *sparsity* (the fraction of zeros):

- `global_masks` (``scope="global"``): exactly round(sparsity · total) entries across all weights, optionally
  with every weight held between a floor and a cap;
- `layer_masks` (``scope="layer"``): each weight within one entry of its own share;
- `output_masks` (``scope="output"``): each output row of each weight within one entry of its share of the
  inputs, as Wanda compares.

Entries already pruned should be given score −inf by the caller so they stay pruned. NaN scores raise
``ValueError``. Ties are broken by position (see `lightning_prune.masks.select`), and with ``layouts`` every
process passes and gets only its own shards.

Examples:
    >>> scores = {"a": torch.tensor([[4.0, 1.0], [3.0, 2.0]]), "b": torch.tensor([[0.5, 5.0, 6.0, 7.0]])}
    >>> global_masks(scores, 0.5)["b"]
    tensor([[False,  True,  True,  True]])
    >>> layer_masks(scores, 0.5)["b"]
    tensor([[False, False,  True,  True]])
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from lightning_prune._shards import Layout, same_everywhere
from lightning_prune.masks.select import (
    _apportion,
    _bounded_counts,
    _counts,
    _each,
    _full_numel,
    _items,
    _layouts,
    _prune_lowest,
)

__all__ = ["SCOPES", "global_masks", "layer_masks", "output_masks"]

SCOPES = ("global", "layer", "output")  # one ranking over all weights, per weight, per output row


def _down(x: float) -> int:
    """⌊x⌋, forgiving float noise just below an integer (0.3 · 10 is 3, not 2)."""
    return math.floor(x + 1e-9)


def _up(x: float) -> int:
    """⌈x⌉, forgiving float noise just above an integer."""
    return math.ceil(x - 1e-9)


@torch.no_grad()
def layer_masks(
    scores: Mapping[str, Tensor], sparsity: float, layouts: Mapping[str, Layout] | None = None
) -> dict[str, Tensor]:
    """Prune each tensor on its own: round(sparsity · total) entries in all, each tensor within one entry of
    sparsity · numel (the tensors with the largest remainders take the extra entry), its lowest-scored ones.

    Args:
        scores: ``{fqn: local scores}``.
        sparsity: fraction of each tensor's entries to prune.
        layouts: ``{fqn: Layout}`` of sharded tensors (default: every tensor whole and local).

    Raises:
        ValueError: if a score is NaN.
    """
    lay, group = _layouts(scores, layouts)
    items = _items(scores, lay)
    return _each(items, _apportion(sparsity, [_full_numel(lay[f]) for f, _, _ in items]), group)


@torch.no_grad()
def global_masks(
    scores: Mapping[str, Tensor],
    sparsity: float,
    max_layer_sparsity: float | None = None,
    layouts: Mapping[str, Layout] | None = None,
    min_layer_sparsity: float | None = None,
) -> dict[str, Tensor]:
    """Prune exactly the round(sparsity · total) lowest-scored entries across all tensors.

    With bounds, every tensor ends within ``[⌊min_layer_sparsity · numel⌋, ⌈max_layer_sparsity · numel⌉]`` pruned
    entries (each bound within one entry of its fraction, rounded away from the target, so any target between the
    floor and the cap can be met exactly) and the total is still exact: the ranking's threshold is the one at which
    the tensors' counts, each clamped to its bounds, add up to the budget (a tensor at its cap or floor takes its
    own lowest entries; the rest follow the global ranking). Entries scored −inf (already pruned, e.g. by another
    writer) always count: a tensor's cap is raised to them, never below.

    Args:
        scores: ``{fqn: local scores}``, −inf for entries already pruned.
        sparsity: fraction of all entries to prune.
        max_layer_sparsity: the most any one tensor may be pruned (None: no cap).
        layouts: ``{fqn: Layout}`` of sharded tensors (default: every tensor whole and local).
        min_layer_sparsity: the least any one tensor is pruned (None: no floor); at most ``sparsity``.

    Raises:
        ValueError: if a score is NaN, the floor exceeds ``sparsity`` or the cap, or no selection within the bounds
            prunes exactly the budget (the message gives the range the bounds allow).
    """
    if min_layer_sparsity is not None and min_layer_sparsity > min(sparsity, max_layer_sparsity or 1.0):
        raise ValueError(
            f"min_layer_sparsity={min_layer_sparsity} must not exceed the sparsity {sparsity} or the cap "
            f"{max_layer_sparsity}: the budget could not reach every floor."
        )
    lay, group = _layouts(scores, layouts)
    items = _items(scores, lay)
    sizes = [_full_numel(lay[f]) for f, _, _ in items]
    budget = round(sparsity * sum(sizes))
    if max_layer_sparsity is None and min_layer_sparsity is None:
        keeps = _prune_lowest(items, budget, group)
        return {f: keep.view(s.shape) for (f, s, _), keep in zip(items, keeps)}
    already = _counts(items, -math.inf, group)[1].tolist()  # entries scored −inf: pruned whatever the cap says
    hi = [n if max_layer_sparsity is None else max(_up(max_layer_sparsity * n), a) for n, a in zip(sizes, already)]
    lo = [0 if min_layer_sparsity is None else min(_down(min_layer_sparsity * n), h) for n, h in zip(sizes, hi)]
    lo = [max(low, a) for low, a in zip(lo, already)]  # what is pruned already stays pruned
    if not sum(lo) <= max(budget, sum(already)) or budget > sum(hi):  # (already above the budget: kept, no more)
        raise ValueError(
            f"cannot prune exactly {budget} of {sum(sizes)} entries (sparsity {sparsity}) with every tensor within "
            f"min_layer_sparsity={min_layer_sparsity} and max_layer_sparsity={max_layer_sparsity}: those bounds and "
            f"the {sum(already)} entries pruned already (by another writer) allow {sum(lo)} to {sum(hi)} pruned "
            "entries. Loosen the bounds (or layer_spread), change the target, or let the other writer prune less."
        )
    return _each(items, _bounded_counts(items, budget, lo, hi, group), group)


@torch.no_grad()
def output_masks(
    scores: Mapping[str, Tensor],
    sparsity: float,
    in_dims: Mapping[str, int],
    layouts: Mapping[str, Layout] | None = None,
) -> dict[str, Tensor]:
    """Prune the lowest-scored inputs of every output (each row of inputs; Wanda's per-output comparison), ties by
    position: round(sparsity · total) entries in all, every row within one entry of sparsity · fan_in (the extra
    entries go to whole tensors by largest remainder, and within a tensor to its first rows). A tensor that is not
    2-D counts as one row.

    Args:
        scores: ``{fqn: local scores}``.
        sparsity: fraction of each output's inputs to prune.
        in_dims: ``{fqn: input dim}`` (1 for ``nn.Linear`` weights, 0 for ``transformers``' ``Conv1D``).
        layouts: ``{fqn: Layout}`` of sharded tensors (default: every tensor whole and local).

    Raises:
        ValueError: if a 2-D tensor is split along its input dim (its rows are not local), or a score is NaN.
    """
    lay, _ = _layouts(scores, layouts)
    shapes = {}  # fqn -> (full rows, fan-in)
    for fqn, s in scores.items():
        if s.dim() != 2:
            shapes[fqn] = (1, _full_numel(lay[fqn]))
            continue
        d = in_dims.get(fqn, 1)
        if lay[fqn].sharded and lay[fqn].dim == d:
            raise ValueError(f"{fqn}: scope 'output' needs whole output rows, but it is split along its input dim {d}.")
        shapes[fqn] = (lay[fqn].shape[1 - d], lay[fqn].shape[d])
    extra = _row_extras(sparsity, shapes)
    masks = {}
    for fqn, s in scores.items():
        if s.dim() != 2:  # one row, maybe split over processes: the exact selection of its own lowest entries
            n = math.floor(sparsity * shapes[fqn][1]) + extra[fqn]
            masks.update(_each([(fqn, s, lay[fqn].sharded)], [n], same_everywhere({fqn: lay[fqn]})))
            continue
        d = in_dims.get(fqn, 1)
        rows = (s.reshape(1, -1) if s.dim() != 2 else s if d == 1 else s.t()).float()  # (out, in)
        if bool(rows.isnan().any()):
            raise ValueError(f"scores must not be NaN; found NaN in {fqn}.")
        first = lay[fqn].offset[1 - d] if s.dim() == 2 and lay[fqn].dim == 1 - d else 0  # global index of row 0
        plus = torch.arange(first, first + rows.shape[0], device=rows.device) < extra[fqn]  # (out,) one more
        q = math.floor(sparsity * shapes[fqn][1])
        ks = q + plus.long()  # (out,) entries to prune per row
        keep = torch.ones_like(rows, dtype=torch.bool)
        if rows.numel() and bool((ks > 0).any()):
            kth = rows.kthvalue(max(q, 1), dim=1, keepdim=True).values  # (out, 1) the k-th lowest of each row
            if bool(plus.any()):
                kth = torch.where(plus[:, None], rows.kthvalue(q + 1, dim=1, keepdim=True).values, kth)
            below = rows < kth
            eq = rows == kth
            need = ks[:, None] - below.sum(1, keepdim=True)  # (out, 1) ties to prune in each row, first by position
            keep = ~(below | (eq & (eq.cumsum(1, dtype=torch.int32) <= need)))
            keep[ks == 0] = True
        masks[fqn] = keep.view(s.shape) if s.dim() != 2 else keep if d == 1 else keep.t().contiguous()
    return masks


def _row_extras(sparsity: float, shapes: Mapping[str, tuple[int, int]]) -> dict[str, int]:
    """Per tensor, how many of its first rows prune one entry more than floor(sparsity · fan_in), so that
    round(sparsity · total) entries are pruned in all (largest remainders first, ties by order)."""
    base = {f: math.floor(sparsity * fan_in) * rows for f, (rows, fan_in) in shapes.items()}
    left = round(sparsity * sum(r * n for r, n in shapes.values())) - sum(base.values())
    order = sorted(shapes, key=lambda f: -(sparsity * shapes[f][1] - math.floor(sparsity * shapes[f][1])))
    extra = {}
    for f in order:
        rows, fan_in = shapes[f]
        extra[f] = min(max(left, 0), rows if math.floor(sparsity * fan_in) < fan_in else 0)
        left -= extra[f]
    return extra

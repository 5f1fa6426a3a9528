"""Mask patterns, and `compute_masks`: masks from scores for any scope and pattern.

A ``pattern`` says which entries may be pruned together:

- ``"unstructured"``: any entries, in a ``scope`` of `SCOPES` (``"global"``
  across all selected weights, per ``"layer"``, or per ``"output"`` row of each weight, as Wanda compares);
- ``"N:M"`` (e.g. ``"2:4"``): in every group of M consecutive inputs, at most M−N are pruned; a target s
  prunes round(s·M) of each group, capped at M−N (`nm_masks`);
- ``"row"``: whole output rows (neurons), ranked by their mean score, globally or per layer (`row_masks`).

The N:M and row patterns rank a NaN score highest, as a sort does; the unstructured pattern raises
``ValueError`` for one.

Examples:
    >>> scores = {"a": torch.tensor([[4.0, 1.0, 3.0, 2.0], [0.5, 5.0, 6.0, 7.0]])}
    >>> compute_masks(scores, 0.5, pattern="2:4")["a"]
    tensor([[ True, False,  True, False],
            [False, False,  True,  True]])
    >>> compute_masks(scores, 0.5, pattern="row")["a"]
    tensor([[False, False, False, False],
            [ True,  True,  True,  True]])
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from lightning_prune._shards import Layout, all_reduce_
from lightning_prune.masks.scopes import SCOPES, global_masks, layer_masks, output_masks
from lightning_prune.masks.select import _full_numel, _layouts

__all__ = ["compute_masks", "nm_masks", "parse_pattern", "row_masks"]


def parse_pattern(pattern: str) -> tuple[str, int, int]:
    """``"unstructured"`` → ("unstructured", 0, 0); ``"2:4"`` → ("nm", 2, 4); ``"row"`` → ("row", 0, 0).

    Raises:
        ValueError: for any other pattern, or N:M without 0 < N < M.
    """
    if pattern in ("unstructured", "row"):
        return pattern, 0, 0
    match = re.fullmatch(r"(\d+):(\d+)", pattern)
    if match:
        n, m = int(match[1]), int(match[2])
        if 0 < n < m:
            return "nm", n, m
    raise ValueError(f"pattern must be 'unstructured', 'row' or 'N:M' with 0 < N < M (e.g. '2:4'), got {pattern!r}.")


@torch.no_grad()
def nm_masks(
    scores: Mapping[str, Tensor],
    sparsity: float,
    n: int,
    m: int,
    dims: Mapping[str, int],
    layouts: Mapping[str, Layout] | None = None,
) -> dict[str, Tensor]:
    """In every group of ``m`` consecutive entries along each tensor's input dim, prune the lowest
    min(round(sparsity · m), m − n), ties by position.

    Args:
        scores: ``{fqn: local scores}``.
        sparsity: target fraction of each group to prune.
        n: entries kept at least per group.
        m: group size.
        dims: ``{fqn: input dim}`` (1 for ``nn.Linear`` weights, 0 for ``transformers``' ``Conv1D``).
        layouts: ``{fqn: Layout}`` of sharded tensors (default: every tensor whole and local).

    Raises:
        ValueError: if a tensor's input dim is not divisible by ``m``, or it is split along that dim at a size or
            offset that is not a multiple of ``m``.
    """
    lay, _ = _layouts(scores, layouts)
    prune = min(round(sparsity * m), m - n)
    masks = {}
    for fqn, s in scores.items():
        d = dims.get(fqn, s.dim() - 1) % max(s.dim(), 1)
        layout = lay[fqn]
        if layout.shape[d] % m:
            raise ValueError(
                f"{fqn}: input dim {d} has size {layout.shape[d]}, not divisible by M={m} of the N:M pattern."
            )
        if layout.sharded and layout.dim == d and (s.shape[d] % m or layout.offset[d] % m):
            raise ValueError(
                f"{fqn}: split along its input dim {d} at offset {layout.offset[d]} with {s.shape[d]} local "
                f"entries; both must be multiples of M={m} for the N:M pattern."
            )
        moved = s.movedim(d, -1)  # (..., in)
        groups = moved.reshape(-1, m).float()  # (G, m)
        keep = torch.ones_like(groups, dtype=torch.bool)
        keep.scatter_(1, torch.sort(groups, dim=1, stable=True).indices[:, :prune], False)
        masks[fqn] = keep.view(moved.shape).movedim(-1, d)
    return masks


def _row_sums(
    scores: Mapping[str, Tensor], dims: Mapping[str, int], lay: Mapping[str, Layout], group: Any
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Per output row of each full tensor, the mean of its scores that are not −inf (float64; −inf for a row pruned
    whole already) and the number of those entries, the same on every process. Entries scored −inf (already
    pruned, e.g. by another writer) neither rank a row nor count again."""
    sums, shared = {}, []
    for f, s in scores.items():
        d, layout = dims.get(f, 0), lay[f]
        rows = s.movedim(d, 0).flatten(1).double()  # (local out, in)
        live = ~torch.isneginf(rows)
        part = torch.stack([rows.where(live, 0.0).sum(1), live.sum(1).double()])  # (2, local out) sum, count
        full = torch.zeros(2, layout.shape[d], dtype=torch.float64, device=s.device)  # (2, out)
        if layout.sharded and layout.dim == d:
            full[:, layout.offset[d] : layout.offset[d] + part.shape[1]] = part
        else:
            full += part  # whole rows, or partial sums of rows split along an input dim
        sums[f] = full
        if layout.sharded:
            shared.append(f)
    if shared:
        flat = torch.cat([sums[f] for f in shared], dim=1)  # one all-reduce for all sharded tensors
        all_reduce_(flat, group)
        for f, part in zip(shared, flat.split([sums[f].shape[1] for f in shared], dim=1)):
            sums[f] = part
    means = {f: (v[0] / v[1]).where(v[1] > 0, -math.inf).cpu() for f, v in sums.items()}
    return means, {f: v[1].cpu() for f, v in sums.items()}


def _cap_rows(cap: float | None, rows: int, width: int) -> int:
    """Of ``rows`` rows of ``width`` entries, the most that fit whole in round(cap · numel) entries (all rows when
    there is no cap or no entries)."""
    return rows if cap is None or not width else round(cap * (rows * width)) // width  # rows · width = numel


def _lowest_rows(means: Tensor, k: int) -> Tensor:
    """Indices of the k lowest row means, ties by position (rows are few: a stable sort)."""
    return torch.sort(means, stable=True).indices[:k]


@torch.no_grad()
def row_masks(
    scores: Mapping[str, Tensor],
    sparsity: float,
    dims: Mapping[str, int],
    scope: str = "global",
    max_layer_sparsity: float | None = None,
    layouts: Mapping[str, Layout] | None = None,
) -> dict[str, Tensor]:
    """Prune whole output rows, ranked by mean score (ties by fqn order, then row index).

    Per layer: round(sparsity · rows) rows of each tensor. Globally: rows by increasing mean, in one ranking over
    all tensors, while the midpoint of each row's entries stays within round(sparsity · total) entries.
    ``max_layer_sparsity`` caps every tensor at round(cap · numel) pruned entries (whole rows, rounded down): in
    the global scope a tensor that would exceed it is held at its cap (its own lowest rows) and the others share
    the rest of the target by the same ranking, repeatedly until none exceeds its cap.

    Args:
        scores: ``{fqn: local scores}``.
        sparsity: fraction of the entries to prune.
        dims: ``{fqn: output dim}`` (0 for ``nn.Linear`` weights, 1 for ``transformers``' ``Conv1D``).
        scope: ``"global"`` or ``"layer"``.
        max_layer_sparsity: the most any one tensor may be pruned (None: no cap).
        layouts: ``{fqn: Layout}`` of sharded tensors (default: every tensor whole and local).
    """
    lay, group = _layouts(scores, layouts)
    means, live = _row_sums(scores, dims, lay, group)  # {fqn: (out,)} each
    width = {f: _full_numel(lay[f]) // max(r.numel(), 1) for f, r in means.items()}  # entries per row
    gone = {f: int((r == -math.inf).sum()) for f, r in means.items()}  # rows pruned whole already: always pruned
    cap_rows = {f: max(_cap_rows(max_layer_sparsity, r.numel(), width[f]), gone[f]) for f, r in means.items()}
    if scope == "layer":
        pruned_rows = {
            f: _lowest_rows(r, min(max(round(sparsity * r.numel()), gone[f]), cap_rows[f])) for f, r in means.items()
        }
    else:
        # the budget in entries: what is pruned already counts; a row adds only its entries still live
        target = sparsity * sum(_full_numel(lay[f]) for f in scores) - sum(
            width[f] * r.numel() - float(live[f].sum()) for f, r in means.items()
        )
        fixed: dict[str, int] = {}
        while True:
            free = [f for f in means if f not in fixed]
            flat = torch.cat([means[f] for f in free]) if free else torch.empty(0, dtype=torch.float64)
            w = torch.cat([live[f] for f in free]) if free else flat
            order = _lowest_rows(flat, flat.numel())
            cum = w[order].cumsum(0)
            left = target - sum(float(live[f][_lowest_rows(means[f], cap)].sum()) for f, cap in fixed.items())
            k = int((cum - 0.5 * w[order] <= left).sum()) if left > 0 else 0  # rows whose midpoint fits
            k = max(k, sum(gone[f] for f in free))  # rows pruned whole stay pruned
            chosen = torch.zeros(flat.numel(), dtype=torch.bool)
            chosen[order[:k]] = True
            pruned_rows = {
                f: part.nonzero().flatten() for f, part in zip(free, chosen.split([means[f].numel() for f in free]))
            }
            over = [f for f in free if pruned_rows[f].numel() > cap_rows[f]]
            if not over:
                break
            fixed.update({f: cap_rows[f] for f in over})
        pruned_rows.update({f: _lowest_rows(means[f], cap) for f, cap in fixed.items()})
    masks = {}
    for f, s in scores.items():
        d, layout = dims.get(f, 0), lay[f]
        keep = torch.ones_like(s, dtype=torch.bool).movedim(d, 0)  # (local out, ...)
        rows = pruned_rows[f]
        if layout.sharded and layout.dim == d:  # the local rows are [offset, offset + local out) of the full tensor
            rows = rows[(rows >= layout.offset[d]) & (rows < layout.offset[d] + keep.shape[0])] - layout.offset[d]
        keep[rows.to(s.device)] = False
        masks[f] = keep.movedim(0, d)
    return masks


def compute_masks(
    scores: Mapping[str, Tensor],
    sparsity: float,
    scope: str = "global",
    pattern: str = "unstructured",
    max_layer_sparsity: float | None = None,
    in_dims: Mapping[str, int] | None = None,
    layouts: Mapping[str, Layout] | None = None,
    min_layer_sparsity: float | None = None,
) -> dict[str, Tensor]:
    """Masks at ``sparsity`` for the given scope and pattern (see the module docstring).

    Args:
        scores: ``{fqn: local scores}``, higher = more important, −inf for entries already pruned; not NaN.
        sparsity: the fraction of entries to prune.
        scope: one of `SCOPES`.
        pattern: ``"unstructured"``, ``"row"`` or ``"N:M"``.
        max_layer_sparsity: the most any one tensor may be pruned, in the global scope (None: no cap).
        in_dims: ``{fqn: input dim}`` of each weight (default: the last dim); the output dim is the other.
        layouts: ``{fqn: Layout}`` of the tensors sharded over a process group (default: every tensor whole and
            local). Every process then passes its local shards and gets their masks.
        min_layer_sparsity: the least any one tensor is pruned, in the global scope with the unstructured pattern
            (None: no floor).

    Returns:
        ``{fqn: bool keep mask}`` shaped like each local score tensor.

    Raises:
        ValueError: for an unknown scope or pattern, ``"output"`` with a structured pattern, a NaN score (pattern
            ``"unstructured"``), or a sharded tensor whose split the pattern cannot mask locally.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}.")
    kind, n, m = parse_pattern(pattern)
    in_dims = dict(in_dims or {})
    if min_layer_sparsity is not None and (scope != "global" or kind != "unstructured"):
        raise ValueError("min_layer_sparsity bounds layers of the global unstructured ranking only.")
    if scope == "output" and kind != "unstructured":
        raise ValueError("scope 'output' ranks entries within each output; use it with pattern 'unstructured'.")
    if kind == "nm":
        return nm_masks(scores, sparsity, n, m, in_dims, layouts)
    if kind == "row":
        out_dims = {f: (0 if in_dims.get(f, s.dim() - 1) != 0 else 1) for f, s in scores.items()}
        return row_masks(scores, sparsity, out_dims, scope, max_layer_sparsity, layouts)
    if scope == "layer":
        return layer_masks(scores, sparsity, layouts)
    if scope == "output":
        return output_masks(scores, sparsity, {f: in_dims.get(f, s.dim() - 1) for f, s in scores.items()}, layouts)
    return global_masks(scores, sparsity, max_layer_sparsity, layouts, min_layer_sparsity)

"""Masks from scores, and masks that hold.

A mask is a ``bool`` tensor shaped like its weight: True keeps the entry, False prunes it. Masks are
computed from importance scores (higher = more important) at a target *sparsity* (the fraction of
zeros), in a ``scope`` (``"global"`` across all selected weights, per ``"layer"``, or per ``"output"`` row of
each weight, as Wanda compares) and a ``pattern``:

- ``"unstructured"``: any entries;
- ``"N:M"`` (e.g. ``"2:4"``): in every group of M consecutive inputs, at most M−N are pruned; a target s
  prunes round(s·M) of each group, capped at M−N;
- ``"row"``: whole output rows (neurons), ranked by their mean score.

Ties are broken by position (a stable sort), so every process computes the same masks from the same
scores. Entries already pruned should be given score −inf by the caller so they stay pruned.

Example:
    >>> scores = {"a": torch.tensor([[4.0, 1.0], [3.0, 2.0]])}
    >>> compute_masks(scores, 0.5)["a"]
    tensor([[ True, False],
            [ True, False]])
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor
from torch.optim import Optimizer

SCOPES = ("global", "layer", "output")  # one ranking over all weights, per weight, per output row

__all__ = [
    "SCOPES",
    "all_finite",
    "apply_masks_",
    "compute_masks",
    "global_masks",
    "hold_",
    "layer_masks",
    "mask_factors",
    "nm_masks",
    "output_masks",
    "parse_pattern",
    "row_masks",
    "sparsity_report",
]


def parse_pattern(pattern: str) -> tuple[str, int, int]:
    """``"unstructured"`` → ("unstructured", 0, 0); ``"2:4"`` → ("nm", 2, 4); ``"row"`` → ("row", 0, 0)."""
    if pattern in ("unstructured", "row"):
        return pattern, 0, 0
    match = re.fullmatch(r"(\d+):(\d+)", pattern)
    if match:
        n, m = int(match[1]), int(match[2])
        if 0 < n < m:
            return "nm", n, m
    raise ValueError(f"pattern must be 'unstructured', 'row' or 'N:M' with 0 < N < M (e.g. '2:4'), got {pattern!r}.")


def _lowest(flat: Tensor, k: int) -> Tensor:
    """Indices of the k lowest entries, ties broken by position."""
    return torch.sort(flat, stable=True).indices[:k]


@torch.no_grad()
def layer_masks(scores: Mapping[str, Tensor], sparsity: float) -> dict[str, Tensor]:
    """Prune round(sparsity · numel) lowest-scored entries of each tensor."""
    masks = {}
    for fqn, s in scores.items():
        keep = torch.ones(s.numel(), dtype=torch.bool, device=s.device)
        keep[_lowest(s.flatten(), round(sparsity * s.numel()))] = False
        masks[fqn] = keep.view_as(s)
    return masks


@torch.no_grad()
def output_masks(scores: Mapping[str, Tensor], sparsity: float, in_dims: Mapping[str, int]) -> dict[str, Tensor]:
    """Prune round(sparsity · fan_in) lowest-scored entries of every output (each row of inputs; Wanda's
    per-output comparison). Tensors that are not 2-D are pruned per tensor as in :func:`layer_masks`."""
    masks = {}
    for fqn, s in scores.items():
        if s.dim() != 2:
            masks.update(layer_masks({fqn: s}, sparsity))
            continue
        rows = s if in_dims.get(fqn, 1) == 1 else s.t()  # (out, in)
        order = torch.argsort(rows.float(), dim=1, stable=True)[:, : round(sparsity * rows.shape[1])]
        keep = torch.ones_like(rows, dtype=torch.bool).scatter_(1, order, False)
        masks[fqn] = keep if in_dims.get(fqn, 1) == 1 else keep.t().contiguous()
    return masks


@torch.no_grad()
def global_masks(
    scores: Mapping[str, Tensor], sparsity: float, max_layer_sparsity: float | None = None
) -> dict[str, Tensor]:
    """Prune the round(sparsity · total) lowest-scored entries across all tensors.

    With ``max_layer_sparsity``, no tensor is pruned beyond that fraction: a tensor that would be is held at
    its cap and the rest of the budget is spread over the others by the same global ranking.
    """
    fqns = list(scores)
    sizes = {f: scores[f].numel() for f in fqns}
    budget = round(sparsity * sum(sizes.values()))
    caps = {f: round(max_layer_sparsity * n) for f, n in sizes.items()} if max_layer_sparsity is not None else {}
    fixed: dict[str, int] = {}  # tensors held at their cap
    while True:
        free = [f for f in fqns if f not in fixed]
        flat = torch.cat([scores[f].flatten().float() for f in free]) if free else torch.empty(0)
        k = max(0, min(budget - sum(fixed.values()), flat.numel()))
        chosen = _lowest(flat, k)  # (k,) indices into the concatenation of `free`
        ends = torch.tensor([sizes[f] for f in free]).cumsum(0)
        counts = torch.bincount(torch.bucketize(chosen.cpu(), ends, right=True), minlength=len(free))
        over = [f for f, c in zip(free, counts.tolist()) if caps and c > caps[f]]
        if not over:
            break
        fixed.update({f: caps[f] for f in over})
    masks = layer_masks({f: scores[f] for f in fixed}, 0.0)
    for f in fixed:
        keep = masks[f].flatten()
        keep[_lowest(scores[f].flatten(), fixed[f])] = False
    keep_free = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    keep_free[chosen] = False
    for f, part in zip(free, keep_free.split([sizes[f] for f in free])):
        masks[f] = part.view_as(scores[f]).to(scores[f].device)
    return {f: masks[f] for f in fqns}


@torch.no_grad()
def nm_masks(
    scores: Mapping[str, Tensor], sparsity: float, n: int, m: int, dims: Mapping[str, int]
) -> dict[str, Tensor]:
    """In every group of ``m`` consecutive entries along each tensor's input dim, prune the lowest
    min(round(sparsity · m), m − n).

    Args:
        dims: ``{fqn: input dim}`` (1 for ``nn.Linear`` weights, 0 for ``transformers``' ``Conv1D``).

    Raises:
        ValueError: if a tensor's input dim is not divisible by ``m``.
    """
    prune = min(round(sparsity * m), m - n)
    masks = {}
    for fqn, s in scores.items():
        d = dims.get(fqn, s.dim() - 1)
        if s.shape[d] % m:
            raise ValueError(f"{fqn}: input dim {d} has size {s.shape[d]}, not divisible by M={m} of the N:M pattern.")
        moved = s.movedim(d, -1)  # (..., in)
        groups = moved.reshape(-1, m)  # (G, m)
        keep = torch.ones_like(groups, dtype=torch.bool)
        keep.scatter_(1, torch.sort(groups, dim=1, stable=True).indices[:, :prune], False)
        masks[fqn] = keep.view(moved.shape).movedim(-1, d)
    return masks


@torch.no_grad()
def row_masks(
    scores: Mapping[str, Tensor], sparsity: float, dims: Mapping[str, int], scope: str = "global"
) -> dict[str, Tensor]:
    """Prune whole output rows, ranked by mean score; per layer round(sparsity · rows), or globally the
    lowest rows until their entries reach round(sparsity · total).

    Args:
        dims: ``{fqn: output dim}`` (0 for ``nn.Linear`` weights, 1 for ``transformers``' ``Conv1D``).
    """
    rows = {f: s.movedim(dims.get(f, 0), 0).flatten(1).float().mean(1) for f, s in scores.items()}  # (out,)
    if scope == "layer":
        pruned_rows = {f: _lowest(r, round(sparsity * r.numel())) for f, r in rows.items()}
    else:
        fqns = list(rows)
        flat = torch.cat([rows[f] for f in fqns])
        width = torch.cat([torch.full_like(rows[f], scores[f].numel() // rows[f].numel()) for f in fqns])
        order = _lowest(flat, flat.numel())
        cum = width[order].cumsum(0)
        target = sparsity * sum(s.numel() for s in scores.values())
        k = int((cum - 0.5 * width[order] <= target).sum()) if target else 0  # rows whose midpoint fits
        chosen = torch.zeros(flat.numel(), dtype=torch.bool)
        chosen[order[:k]] = True
        pruned_rows = {
            f: part.nonzero().flatten() for f, part in zip(fqns, chosen.split([r.numel() for r in rows.values()]))
        }
    masks = {}
    for f, s in scores.items():
        keep = torch.ones_like(s, dtype=torch.bool).movedim(dims.get(f, 0), 0)
        keep[pruned_rows[f].to(s.device)] = False
        masks[f] = keep.movedim(0, dims.get(f, 0))
    return masks


def compute_masks(
    scores: Mapping[str, Tensor],
    sparsity: float,
    scope: str = "global",
    pattern: str = "unstructured",
    max_layer_sparsity: float | None = None,
    in_dims: Mapping[str, int] | None = None,
) -> dict[str, Tensor]:
    """Masks at ``sparsity`` for the given scope and pattern (see the module docstring).

    Args:
        in_dims: ``{fqn: input dim}`` of each weight (default: the last dim); the output dim is the other.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}.")
    kind, n, m = parse_pattern(pattern)
    in_dims = dict(in_dims or {})
    if scope == "output" and kind != "unstructured":
        raise ValueError("scope 'output' ranks entries within each output; use it with pattern 'unstructured'.")
    if kind == "nm":
        return nm_masks(scores, sparsity, n, m, in_dims)
    if kind == "row":
        out_dims = {f: (0 if in_dims.get(f, s.dim() - 1) != 0 else 1) for f, s in scores.items()}
        return row_masks(scores, sparsity, out_dims, scope)
    if scope == "layer":
        return layer_masks(scores, sparsity)
    if scope == "output":
        return output_masks(scores, sparsity, {f: in_dims.get(f, s.dim() - 1) for f, s in scores.items()})
    return global_masks(scores, sparsity, max_layer_sparsity)


@torch.no_grad()
def apply_masks_(
    tensors: Mapping[str, Tensor | None], pruned: Mapping[str, Tensor], factors: Mapping[str, Tensor] | None = None
) -> None:
    """Set the pruned entries (``pruned[fqn]`` True) of each tensor to exactly zero, in place.

    With ``factors`` (from :func:`mask_factors`: the masks as 0/1 in each tensor's dtype) CPU tensors are
    multiplied in one ``torch._foreach_mul_``, tens of times faster than ``masked_fill_`` there; since NaN·0 is
    NaN, a tensor left non-finite afterwards is masked again with ``masked_fill_``, so pruned entries are exact
    zeros in every case. That check reads a value back, free on the CPU but a sync on an accelerator, where
    ``masked_fill_`` is fast anyway and is used directly. ``None`` tensors (no gradient) are skipped.
    """
    fqns = [f for f in pruned if tensors[f] is not None]
    if factors is not None and fqns and all(f in factors for f in fqns):
        held = [tensors[f] for f in fqns]
        torch._foreach_mul_(held, [factors[f] for f in fqns])
        if all_finite(held):
            return
    for f in fqns:
        tensors[f].masked_fill_(pruned[f], 0)


def mask_factors(pruned: Mapping[str, Tensor], like: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``{fqn: 0/1 tensor}``: 0 where pruned, in the dtype of ``like[fqn]``, for the CPU tensors only (the fast
    path of :func:`apply_masks_`; elsewhere ``masked_fill_`` needs no copy)."""
    return {f: (~m).to(like[f].dtype) for f, m in pruned.items() if like[f].device.type == "cpu"}


@torch.no_grad()
def all_finite(tensors: list[Tensor]) -> bool:
    """Whether every entry of every tensor is finite, with one host sync in the common case.

    The 2-norms of all tensors take one ``_foreach_norm``; only when one is not finite (a NaN or inf entry, or
    finite entries beyond ~1e19 whose squares overflow) is the exact per-tensor check run.
    """
    if not tensors:
        return True
    if bool(torch.isfinite(torch.stack(torch._foreach_norm(tensors, 2))).all()):
        return True
    return all(bool(torch.isfinite(t).all()) for t in tensors)


@torch.no_grad()
def hold_(params: Mapping[str, Tensor], pruned: Mapping[str, Tensor], optimizers: Iterable[Optimizer] = ()) -> None:
    """Zero the pruned entries of the weights and of every optimizer state tensor shaped like them (Adam's
    ``exp_avg``/``exp_avg_sq``, SGD's ``momentum_buffer``), so that with masked gradients they stay zero."""
    apply_masks_(params, pruned)
    for optimizer in optimizers:
        for fqn, mask in pruned.items():
            for value in optimizer.state.get(params[fqn], {}).values():
                if isinstance(value, Tensor) and value.shape == mask.shape:
                    value.masked_fill_(mask, 0)


@torch.no_grad()
def sparsity_report(tensors: Mapping[str, Tensor]) -> tuple[float, dict[str, float]]:
    """Measured sparsity: the fraction of entries that are exactly zero, over all tensors and per tensor."""
    zeros = {f: int((t == 0).sum()) for f, t in tensors.items()}
    total = sum(t.numel() for t in tensors.values())
    per_layer = {f: zeros[f] / tensors[f].numel() for f in tensors}
    return (sum(zeros.values()) / total if total else 0.0), per_layer

"""Unit masks for structured pruning: from scores, and their validation against a model. True = keep.

One mask per dimension, built from scores by:

- neurons, per block ``(n,)`` (``(E, n)`` with experts):
  [`neuron_masks_from_scores`][lightning_prune.structured.neuron_masks_from_scores];
- heads, per block ``(n_heads,)`` over query heads:
  [`head_masks_from_scores`][lightning_prune.structured.head_masks_from_scores];
- layers, one ``(n_layers,)`` over the blocks:
  [`layer_mask_from_scores`][lightning_prune.structured.layer_mask_from_scores];
- hidden, one ``(hidden_size,)`` over residual features:
  [`hidden_mask_from_scores`][lightning_prune.structured.hidden_mask_from_scores];
- experts, per experts block ``(E,)``:
  [`expert_masks_from_scores`][lightning_prune.structured.expert_masks_from_scores].

Examples:
    >>> layer_mask_from_scores(torch.tensor([3.0, 1.0, 2.0]), n_remove=1).tolist()
    [True, False, True]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_prune.structured.layout import BlockLayout, block_layouts, out_features

__all__ = [
    "check_expert_masks",
    "check_head_masks",
    "check_hidden_mask",
    "check_layer_mask",
    "check_neuron_masks",
    "expert_masks_from_scores",
    "head_masks_from_scores",
    "hidden_mask_from_scores",
    "hidden_size",
    "layer_mask_from_scores",
    "neuron_masks_from_scores",
]


def _keep_highest(scores: Tensor, n_remove: int) -> Tensor:
    """Bool mask over the last axis of ``scores`` removing the ``n_remove`` lowest (the lower index on ties)."""
    flat = scores.float().reshape(-1, scores.shape[-1])  # (rows, n)
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep.scatter_(1, torch.argsort(flat, dim=1, stable=True)[:, :n_remove], False)
    return keep.view(scores.shape)


def neuron_masks_from_scores(scores: Sequence[Tensor], sparsity: float) -> list[Tensor]:
    """Per layer, remove the ``round(sparsity · n)`` lowest-scored neurons (the same number in every layer).

    A 2-D ``(E, n)`` score of an experts block removes that many neurons from every expert. Ties: the lower index
    is removed first.

    Raises:
        ValueError: if ``sparsity`` is not in [0, 1) or would remove every neuron of a layer.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be a fraction of neurons removed in [0, 1), got {sparsity!r}.")
    masks = []
    for i, s in enumerate(scores):
        n = s.shape[-1]
        n_remove = round(sparsity * n)
        if n_remove >= n:
            raise ValueError(f"sparsity {sparsity} removes all {n} neurons of layer {i}; keep at least one.")
        masks.append(_keep_highest(s, n_remove))
    return masks


def head_masks_from_scores(model: nn.Module, scores: Sequence[Tensor], n_remove: int) -> list[Tensor]:
    """Per layer, remove the ``n_remove`` lowest-scored query heads; with GQA, whole groups by summed score.

    Args:
        model: supplies the head and key/value head counts.
        scores: per layer, ``(n_heads,)`` scores of the query heads (higher = keep).
        n_remove: query heads to remove per layer.

    Raises:
        ValueError: if ``n_remove`` removes every head or is not a multiple of the GQA group size.
    """
    masks = []
    for lay, s in zip(block_layouts(model), scores, strict=True):
        group = lay.n_heads // lay.n_kv_heads
        if not 0 <= n_remove < lay.n_heads:
            raise ValueError(
                f"n_remove must be in [0, {lay.n_heads}) for {lay.n_heads} heads (keep at least one), got {n_remove}."
            )
        if n_remove % group:
            raise ValueError(
                f"n_remove={n_remove} breaks grouped-query attention: {lay.n_heads} query heads share "
                f"{lay.n_kv_heads} key/value heads in groups of {group}, so remove a multiple of {group} heads."
            )
        group_scores = s.float().view(lay.n_kv_heads, group).sum(1)  # (n_kv,)
        masks.append(_keep_highest(group_scores, n_remove // group).repeat_interleave(group))
    return masks


def _count(scores: Tensor, n_remove: int, what: str) -> Tensor:
    if scores.dim() != 1 or not 0 <= n_remove < scores.numel():
        raise ValueError(
            f"n_remove must be in [0, {scores.numel()}) {what} (keep at least one) for 1-D scores, got {n_remove} "
            f"for scores of shape {tuple(scores.shape)}."
        )
    return _keep_highest(scores, n_remove)


def layer_mask_from_scores(scores: Tensor, n_remove: int) -> Tensor:
    """Remove the ``n_remove`` lowest-scored blocks: a ``(n_layers,)`` mask.

    Raises:
        ValueError: if ``n_remove`` would remove every block.
    """
    return _count(scores, n_remove, "layers")


def hidden_mask_from_scores(scores: Tensor, n_remove: int) -> Tensor:
    """Remove the ``n_remove`` lowest-scored features of the residual stream: a ``(hidden_size,)`` mask.

    Raises:
        ValueError: if ``n_remove`` would remove every feature.
    """
    return _count(scores, n_remove, "hidden features")


def expert_masks_from_scores(scores: Sequence[Tensor], n_remove: int) -> list[Tensor]:
    """Per experts block, remove the ``n_remove`` lowest-scored experts (the same number in every block).

    Raises:
        ValueError: if ``n_remove`` would remove every expert of a block.
    """
    return [_count(s, n_remove, "experts") for s in scores]


def _check_masks(masks: Sequence[Tensor], shapes: list[tuple[int, ...]], what: str, uniform: bool) -> None:
    if len(masks) != len(shapes):
        raise ValueError(f"need one {what} mask per layer ({len(shapes)}), got {len(masks)}.")
    for i, (m, shape) in enumerate(zip(masks, shapes, strict=True)):
        if m.dtype != torch.bool or tuple(m.shape) != shape:
            raise ValueError(f"layer {i}: {what} mask must be bool of shape {shape}, got {m.dtype} {tuple(m.shape)}.")
        if not m.any(-1).all():
            raise ValueError(
                f"layer {i}: the {what} mask removes all {shape[-1]} {what}s; keep at least one per layer"
                + (" and expert." if len(shape) > 1 else ".")
            )
    kept = [m.sum(-1).tolist() for m in masks]  # per layer: a count, or one per expert
    if uniform and len({k for ks in kept for k in (ks if isinstance(ks, list) else [ks])}) > 1:
        raise ValueError(
            f"layers keep different numbers of {what}s {kept}: the config has one size for all layers, so a "
            f"physical shrink needs the same count in every layer (neuron_masks_from_scores / "
            f"head_masks_from_scores remove the same number per layer)."
        )


def check_neuron_masks(model: nn.Module, masks: Sequence[Tensor], uniform: bool = False) -> list[BlockLayout]:
    """Validate neuron masks (one bool ``(n,)`` per dense block, ``(E, n)`` per experts block) and return the layouts.

    With ``uniform``, every dense block must keep the same count, and every expert of every experts block too
    (dense and expert widths are separate config fields).

    Raises:
        ValueError: on a wrong count/shape/dtype, a layer (or expert) losing every neuron, or (``uniform``) unequal
            counts.
    """
    layouts = block_layouts(model)
    shapes = [(lay.n_experts, lay.n_neurons) if lay.n_experts else (lay.n_neurons,) for lay in layouts]
    _check_masks(masks, shapes, "neuron", uniform=False)
    for kind in (False, True):
        pairs = [(m, s) for m, s, lay in zip(masks, shapes, layouts, strict=True) if bool(lay.n_experts) == kind]
        _check_masks([m for m, _ in pairs], [s for _, s in pairs], "neuron", uniform)
    return layouts


def check_head_masks(model: nn.Module, masks: Sequence[Tensor], uniform: bool = False) -> list[BlockLayout]:
    """Validate head masks like [`check_neuron_masks`][lightning_prune.structured.check_neuron_masks], and that each GQA
    query group is kept or removed whole.

    Raises:
        ValueError: as [`check_neuron_masks`][lightning_prune.structured.check_neuron_masks], or if a key/value group is
            split.
    """
    layouts = block_layouts(model)
    _check_masks(masks, [(lay.n_heads,) for lay in layouts], "head", uniform)
    for lay, m in zip(layouts, masks, strict=True):
        group = lay.n_heads // lay.n_kv_heads
        grouped = m.view(lay.n_kv_heads, group)  # (n_kv, group)
        split = (grouped.any(1) & ~grouped.all(1)).nonzero().flatten().tolist()
        if split:
            raise ValueError(
                f"layer {lay.index}: head mask {m.int().tolist()} splits key/value group(s) {split}; with "
                f"grouped-query attention ({lay.n_heads} query heads, {lay.n_kv_heads} key/value heads, groups of "
                f"{group}) a key/value head and its whole query group must be kept or removed together."
            )
    return layouts


def check_expert_masks(model: nn.Module, masks: Sequence[Tensor], uniform: bool = False) -> list[BlockLayout]:
    """Validate expert masks (one bool ``(E,)`` per experts block, in order) and return those blocks' layouts.

    Raises:
        ValueError: for a model without experts, a wrong count/shape/dtype, a block losing every expert, or
            (``uniform``) unequal counts.
    """
    layouts = [lay for lay in block_layouts(model) if lay.n_experts]
    if not layouts:
        raise ValueError(f"{type(model).__name__} has no experts blocks; expert masks apply to mixture-of-experts.")
    _check_masks(masks, [(lay.n_experts,) for lay in layouts], "expert", uniform)
    return layouts


def check_layer_mask(model: nn.Module, mask: Tensor) -> list[BlockLayout]:
    """Validate a layer mask (bool ``(n_layers,)``, at least one kept) and return the layouts.

    Raises:
        ValueError: on a wrong shape/dtype or a mask that removes every block.
    """
    layouts = block_layouts(model)
    if mask.dtype != torch.bool or tuple(mask.shape) != (len(layouts),):
        raise ValueError(
            f"the layer mask must be bool of shape ({len(layouts)},), got {mask.dtype} {tuple(mask.shape)}."
        )
    if not mask.any():
        raise ValueError(f"the layer mask removes all {len(layouts)} layers; keep at least one.")
    return layouts


def hidden_size(model: nn.Module) -> int:
    """The current width of the residual stream, read from the first block's attention output projection."""
    return out_features(model.get_submodule(block_layouts(model)[0].attn_out))


def check_hidden_mask(model: nn.Module, mask: Tensor) -> list[BlockLayout]:
    """Validate a hidden-size mask (bool ``(hidden_size,)``, at least one kept) and return the layouts.

    Raises:
        ValueError: on a wrong shape/dtype or a mask that removes every feature.
    """
    layouts = block_layouts(model)
    d = hidden_size(model)
    if mask.dtype != torch.bool or tuple(mask.shape) != (d,):
        raise ValueError(f"the hidden mask must be bool of shape ({d},), got {mask.dtype} {tuple(mask.shape)}.")
    if not mask.any():
        raise ValueError(f"the hidden mask removes all {d} features of the residual stream; keep at least one.")
    return layouts

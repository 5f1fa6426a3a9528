"""The one physical shrink of a trained model: every writer's units cut out, every record followed."""

from __future__ import annotations

import torch
from torch import nn

from lightning_prune._registry import MaskRegistry, Shrink, block_renames
from lightning_prune.structured.layout import block_layouts
from lightning_prune.structured.units import Units, combine_units, shrink_units_, unit_cuts

__all__ = ["shrink_trained_"]


@torch.no_grad()
def shrink_trained_(model: nn.Module, prefix: str, registry: MaskRegistry | None, own: Units) -> nn.Module:
    """Cut out of the trained ``model`` (the ``transformers`` model at fqn ``prefix`` of the registry's module) the
    units every writer published for it (``own`` alone without a registry), as an export does, and let the
    registry follow: every writer's masks cut and renamed (blocks renumbered after removed layers), the unit records
    of this model dropped (they are gone), and the shrink kept for each callback to map its own state through.

    Returns:
        ``model``, smaller.
    """
    units = combine_units(registry.units, prefix) if registry is not None else None
    units = own if units is None else units & own
    dotted = f"{prefix}." if prefix else ""
    blocks = [dotted + lay.prefix for lay in block_layouts(model)]
    cuts = unit_cuts(model, units.dims(), units)
    shrink_units_(model, units)
    if registry is not None:
        names = set(registry.params) | {f for masks in registry.writers.values() for f in masks}
        registry.shrunk_(
            Shrink(
                cuts=tuple((dotted + c.fqn, c.dim, c.keep) for c in cuts if c.keep.dim() == 1),
                renames=block_renames(names, blocks, units.layers),
                prefix=prefix,
            )
        )
    return model

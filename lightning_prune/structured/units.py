"""The units of the five dimensions kept in one model, as one value: [`Units`][lightning_prune.structured.Units], the
entries they own, the shrink that cuts them out, how several writers combine, and a report of what was removed where.

A [`Units`][lightning_prune.structured.Units] holds bool keep masks in the shapes of `lightning_prune.structured.masks`
(``None``: that dimension untouched). It is what a structured pruning callback holds, checkpoints and publishes in the
model's `MaskRegistry` (``registry.units``), and what an export shrinks a copy by.

Examples:
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, n_inner=8, vocab_size=32))
    >>> units = Units.full(model, ("neurons", "layers"))
    >>> units.layers[1] = False
    >>> shrink_units_(model, units).config.n_layer
    1
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from lightning_prune.structured.cuts import (
    Cut,
    expert_cuts,
    expert_weight_masks,
    head_cuts,
    head_weight_masks,
    hidden_cuts,
    hidden_weight_masks,
    layer_weight_masks,
    neuron_cuts,
    neuron_weight_masks,
)
from lightning_prune.structured.layout import block_layouts, stream_layout
from lightning_prune.structured.masks import hidden_size
from lightning_prune.structured.shrink import norm_form, scale_norm_, shrink_

__all__ = ["DIMENSIONS", "Units", "combine_units", "match_masked_norms_", "shrink_units_", "unit_cuts"]

DIMENSIONS = ("neurons", "heads", "layers", "hidden", "experts")


def _and(a: Any, b: Any) -> Any:
    if a is None or b is None:
        return b if a is None else a
    if isinstance(a, Tensor):
        return a.bool() & b.bool()
    return [x.bool() & y.bool() for x, y in zip(a, b, strict=True)]


def _clone(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, Tensor):
        return value.detach().bool().cpu().clone()
    return [v.detach().bool().cpu().clone() for v in value]


@dataclass
class Units:
    """Keep masks (True keeps) of the five dimensions of one model; ``None`` leaves a dimension untouched."""

    neurons: list[Tensor] | None = None  # per block (n,)
    heads: list[Tensor] | None = None  # per block (n_heads,), whole key/value groups
    layers: Tensor | None = None  # (n_layers,)
    hidden: Tensor | None = None  # (hidden_size,)
    experts: list[Tensor] | None = None  # per experts block (E,)

    @classmethod
    def full(cls, model: nn.Module, dims: Iterable[str]) -> Units:
        """Everything kept, for the dimensions ``dims`` of ``model`` (as its modules are now).

        Raises:
            ValueError: for an unknown dimension, or experts asked of a model without experts blocks.
        """
        dims = list(dims)
        unknown = [d for d in dims if d not in DIMENSIONS]
        if unknown:
            raise ValueError(f"unknown dimensions {unknown}; choose from {DIMENSIONS}.")
        layouts = block_layouts(model)
        ones = lambda n: torch.ones(n, dtype=torch.bool)  # noqa: E731
        out = cls()
        if "neurons" in dims:
            out.neurons = [ones(lay.n_neurons) for lay in layouts]
        if "heads" in dims:
            out.heads = [ones(lay.n_heads) for lay in layouts]
        if "layers" in dims:
            out.layers = ones(len(layouts))
        if "hidden" in dims:
            out.hidden = ones(hidden_size(model))
        if "experts" in dims:
            experts = [ones(lay.n_experts) for lay in layouts if lay.n_experts]
            if not experts:
                raise ValueError(f"{type(model).__name__} has no experts blocks; 'experts' needs a mixture of experts.")
            out.experts = experts
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Units:
        """From ``{dimension: masks}`` (other keys, such as a registry entry's ``prefix``, are ignored)."""
        return cls(**{d: _clone(values.get(d)) for d in DIMENSIONS})

    def to_dict(self) -> dict[str, Any]:
        """``{dimension: masks}`` of the dimensions in use (copies on the CPU)."""
        return {d: _clone(getattr(self, d)) for d in DIMENSIONS if getattr(self, d) is not None}

    def dims(self) -> list[str]:
        """The dimensions in use."""
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def clone(self) -> Units:
        return Units(**{d: _clone(getattr(self, d)) for d in DIMENSIONS})

    def __and__(self, other: Units) -> Units:
        """What both keep (a unit removed by either is removed)."""
        return Units(**{d: _and(getattr(self, d), getattr(other, d)) for d in DIMENSIONS})

    def equal(self, other: Units) -> bool:
        """Whether both keep exactly the same units."""
        mine, theirs = self.to_dict(), other.to_dict()
        if set(mine) != set(theirs):
            return False
        flat = lambda v: [v] if isinstance(v, Tensor) else list(v)  # noqa: E731
        return all(
            len(flat(mine[d])) == len(flat(theirs[d]))
            and all(torch.equal(a, b) for a, b in zip(flat(mine[d]), flat(theirs[d]), strict=True))
            for d in mine
        )

    def removes_anything(self) -> bool:
        return any(not bool(m.all()) for v in self.to_dict().values() for m in ([v] if isinstance(v, Tensor) else v))

    def weight_masks(self, model: nn.Module) -> dict[str, Tensor]:
        """``{fqn in model: bool pruned}`` of every entry a removed unit owns (the union over the dimensions).

        Raises:
            ValueError: for masks that do not fit the model (see `lightning_prune.structured.cuts`).
        """
        parts: list[dict[str, Tensor]] = []
        if self.neurons is not None and any(not bool(m.all()) for m in self.neurons):
            parts.append(neuron_weight_masks(model, self.neurons))
        if self.heads is not None and any(not bool(m.all()) for m in self.heads):
            parts.append(head_weight_masks(model, self.heads))
        if self.layers is not None and not bool(self.layers.all()):
            parts.append(layer_weight_masks(model, self.layers))
        if self.hidden is not None and not bool(self.hidden.all()):
            parts.append(hidden_weight_masks(model, self.hidden))
        if self.experts is not None and any(not bool(m.all()) for m in self.experts):
            parts.append(expert_weight_masks(model, self.experts))
        out: dict[str, Tensor] = {}
        for part in parts:
            for fqn, pruned in part.items():
                out[fqn] = out[fqn] | pruned if fqn in out else pruned
        return out

    def shrink_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of [`shrink_`][lightning_prune.shrink_] for these units."""
        return dict(
            neuron_masks=self.neurons,
            head_masks=self.heads,
            layer_mask=self.layers,
            hidden_mask=self.hidden,
            expert_masks=self.experts,
        )

    def report(self) -> dict[str, Any]:
        """What is removed where: per dimension the units kept and removed in all, and per layer (or block)."""
        out: dict[str, Any] = {}
        for d, value in self.to_dict().items():
            masks = [value] if isinstance(value, Tensor) else value
            total = sum(m.numel() for m in masks)
            kept = sum(int(m.sum()) for m in masks)
            entry: dict[str, Any] = {"total": total, "kept": kept, "removed": total - kept}
            if d in ("layers", "hidden"):
                entry["removed_indices"] = (~value).nonzero().flatten().tolist()
            else:
                entry["kept_per_layer"] = [int(m.sum()) for m in masks]
                entry["removed_per_layer"] = [(~m).nonzero().flatten().tolist() for m in masks]
            out[d] = entry
        return out


def unit_cuts(model: nn.Module, dims: Iterable[str], units: Units | None = None) -> list[Cut]:
    """The cuts a shrink of ``units`` (default: every unit of ``dims``, as if any could go) makes to ``model``'s
    parameters: which parameters lose features along which axis, for neurons, heads, hidden features and experts."""
    units = units if units is not None else Units.full(model, dims)
    cuts = neuron_cuts(model, units.neurons) if units.neurons is not None else []
    cuts += head_cuts(model, units.heads) if units.heads is not None else []
    cuts += hidden_cuts(model, units.hidden) if units.hidden is not None else []
    cuts += expert_cuts(model, units.experts) if units.experts is not None else []
    return cuts


def combine_units(published: Mapping[str, Mapping[str, Any]], prefix: str) -> Units | None:
    """The units every writer of ``published`` (a registry's ``units``) keeps for the model at ``prefix``, or None
    when no writer published any for it."""
    found = [Units.from_dict(u) for u in published.values() if u.get("prefix", "") == prefix]
    if not found:
        return None
    out = found[0]
    for units in found[1:]:
        out = out & units
    return out


def _norms_over_hidden(model: nn.Module) -> list[nn.Module]:
    """The norms on the residual stream (inside and outside the blocks)."""
    names = [n for lay in block_layouts(model) for n in lay.norms]
    names += [n for n in stream_layout(model)[0] if not isinstance(model.get_submodule(n), nn.Embedding)]
    return [model.get_submodule(n) for n in names]


@torch.no_grad()
def match_masked_norms_(model: nn.Module, hidden: Tensor) -> list[str]:
    """Rescale the RMS norms on the residual stream so that, after the ``hidden`` features are cut out, they compute
    what they computed with those features held at zero (an RMS over ``d`` features, of which ``d − k`` are zero,
    is ``sqrt(k/d)`` times the RMS over the ``k`` kept ones). Exact up to the norm's epsilon.

    A norm whose output on an all-ones input is its weight is scaled by ``sqrt(d/k)``; one that computes
    ``(1 + weight)`` (Gemma) gets ``(1 + w)·sqrt(d/k) − 1``. LayerNorms (with a bias, or centring) are left alone:
    centring over zeros cannot be undone by a scale. (An input embedding scaled by ``sqrt(hidden_size)``, Gemma's,
    is kept at its scale by the shrink itself.)

    Returns:
        The class names of the norms left alone (empty when the shrink is exact).
    """
    d, k = hidden.numel(), int(hidden.sum())
    if k == d:
        return []
    scale = (d / k) ** 0.5
    skipped = []
    for norm in _norms_over_hidden(model):
        weight = getattr(norm, "weight", None)
        if not isinstance(weight, Tensor) or weight.numel() != d or getattr(norm, "bias", None) is not None:
            skipped.append(type(norm).__name__)
        elif (form := norm_form(norm, d)) is None:
            skipped.append(type(norm).__name__)
        else:
            scale_norm_(norm, scale, form)
    return sorted(set(skipped))


def shrink_units_(model: nn.Module, units: Units, masked: bool = True) -> nn.Module:
    """Physically remove ``units`` from ``model`` ([`shrink_`][lightning_prune.shrink_]); returns ``model``.

    Args:
        model: a supported ``transformers`` model, with the units' shapes.
        units: what to keep.
        masked: the model was trained with the removed units held at zero: rescale the RMS norms when hidden
            features go ([`match_masked_norms_`][lightning_prune.structured.match_masked_norms_]), so the smaller model
            computes what the masked one did.

    Raises:
        ValueError: if the units do not fit the model or the config cannot express the result; nothing changes.
    """
    from lightning_prune.structured.config import config_updates

    kwargs = units.shrink_kwargs()
    config_updates(model, **kwargs)  # validate everything before the norms change
    if masked and units.hidden is not None:
        match_masked_norms_(model, units.hidden)
    return shrink_(model, **kwargs)


def as_list(value: Tensor | Sequence[Tensor] | None) -> list[Tensor]:
    """A dimension's masks as a list (one tensor for ``layers`` and ``hidden``)."""
    if value is None:
        return []
    return [value] if isinstance(value, Tensor) else list(value)

"""The size of a model as a function of the units it keeps: parameters and FLOPs per token, without building it.

[`SizeModel`][lightning_prune.structured.SizeModel] reads, once, which parameter axes each dimension cuts (the
[`Cut`][lightning_prune.structured.Cut] s of masks that keep everything) and writes every parameter as a product of axis
sizes, each either fixed or ``base ·`` the units kept of one dimension; a parameter inside a block counts only while its
block is kept. Evaluating a [`Counts`][lightning_prune.structured.Counts] is then arithmetic: the allocation tries
thousands of candidates at the cost of one shrink.

FLOPs per token: 2 per multiply-add of every ``nn.Linear``/``Conv1D`` weight a token passes through (the output
head included, embedding lookups not), of the ``top_k`` experts a token uses in an experts block, and, with a
context of ``seq`` tokens, 2·2·seq·n_heads·head_dim per block for QKᵀ and AV.

Examples:
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, n_inner=8, vocab_size=32))
    >>> size = SizeModel.from_model(model)
    >>> size.params(size.full) == sum(p.numel() for p in model.parameters())
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from lightning_prune._selection import adapter_parameters, is_conv1d
from lightning_prune.structured.cuts import Cut, expert_cuts, head_cuts, hidden_cuts, neuron_cuts
from lightning_prune.structured.families import family_of
from lightning_prune.structured.layout import block_layouts
from lightning_prune.structured.masks import hidden_size
from lightning_prune.structured.units import Units

__all__ = ["Axis", "Counts", "SizeModel", "Term"]


@dataclass(frozen=True)
class Counts:
    """Units kept: per block the same count of neurons, key/value groups and experts; which blocks; the width."""

    neurons: int  # neurons per block
    groups: int  # key/value head groups per block (a group: one key/value head and its query heads)
    layers: tuple[bool, ...]  # which blocks are kept
    hidden: int  # residual-stream features
    experts: int  # experts per experts block

    def get(self, dim: str) -> int:
        """The count of ``dim`` (``layers``: the blocks kept)."""
        return sum(self.layers) if dim == "layers" else getattr(self, "groups" if dim == "heads" else dim)


@dataclass(frozen=True)
class Axis:
    """One axis of a parameter: ``base`` entries per unit kept of ``dim`` (at most ``cap`` units), or ``base``."""

    dim: str | None  # the dimension that scales it (None: fixed)
    base: int  # entries per unit (or the size of a fixed axis)
    cap: int = 0  # units counted at most (experts used per token); 0: no cap

    def size(self, counts: Counts) -> int:
        if self.dim is None:
            return self.base
        n = counts.get(self.dim)
        return self.base * (min(n, self.cap) if self.cap else n)


@dataclass(frozen=True)
class Term:
    """``factor · Π axes`` while block ``layer`` is kept (``None``: outside the blocks)."""

    layer: int | None
    factor: int
    axes: tuple[Axis, ...]

    def value(self, counts: Counts) -> int:
        if self.layer is not None and not counts.layers[self.layer]:
            return 0
        return self.factor * math.prod(a.size(counts) for a in self.axes)


def _layer_of(fqn: str, prefixes: Sequence[str]) -> int | None:
    return next((i for i, p in enumerate(prefixes) if fqn.startswith(p)), None)


def _probe_cuts(model: nn.Module) -> list[tuple[str, Cut, int]]:
    """``(dimension, cut, units of that dimension in the cut's block)`` of masks that keep everything."""
    layouts = block_layouts(model)
    full = Units.full(model, ("neurons", "heads", "hidden"))
    out = []
    dense = not any(lay.n_experts for lay in layouts)
    if dense:  # neurons of fused experts are not a dimension of the allocation
        for cut in neuron_cuts(model, full.neurons):
            out.append(("neurons", cut, layouts[_layer_of(cut.fqn, [f"{x.prefix}." for x in layouts])].n_neurons))
    for cut in head_cuts(model, full.heads):
        out.append(("heads", cut, layouts[_layer_of(cut.fqn, [f"{x.prefix}." for x in layouts])].n_kv_heads))
    try:
        out += [("hidden", cut, hidden_size(model)) for cut in hidden_cuts(model, full.hidden)]
    except ValueError:  # a parameter of the hidden size the description does not place: no hidden dimension
        pass
    if not dense:
        experts = [torch.ones(lay.n_experts, dtype=torch.bool) for lay in layouts if lay.n_experts]
        out += [("experts", cut, cut.keep.shape[-1]) for cut in expert_cuts(model, experts)]
    return out


class SizeModel:
    """Parameters and FLOPs per token of ``model`` shrunk to any [`Counts`][lightning_prune.structured.Counts] (see the
    module docstring)."""

    def __init__(self, params: list[Term], flops: list[Term], full: Counts, group: int) -> None:
        self.params_terms, self.flops_terms, self.full, self.group = params, flops, full, group

    @classmethod
    def from_model(cls, model: nn.Module, seq: int = 0) -> SizeModel:
        """Read the terms from ``model`` as its modules are now.

        Args:
            model: a supported ``transformers`` model.
            seq: context tokens counted in the attention products of the FLOPs per token (0: none).

        Raises:
            ValueError: if the model is not supported.
        """
        layouts = block_layouts(model)
        prefixes = [f"{lay.prefix}." for lay in layouts]
        adapters = adapter_parameters(model)  # merged into the base weights on export: not part of the size
        first = {id(p): n for n, p in model.named_parameters() if n not in adapters}
        params = {n: p for n, p in model.named_parameters() if n not in adapters}
        axes = {n: [Axis(None, s) for s in p.shape] for n, p in params.items()}
        for dim, cut, units in _probe_cuts(model):
            if cut.fqn in adapters:
                continue
            name = first[id(model.get_parameter(cut.fqn))]
            axes[name][cut.dim] = Axis(dim, cut.keep.shape[-1] // units)
        param_terms = [Term(_layer_of(n, prefixes), 1, tuple(a)) for n, a in axes.items()]
        flop_terms = []
        for name, module in model.named_modules():
            weight = getattr(module, "weight", None)
            if (isinstance(module, nn.Linear) or is_conv1d(module)) and id(weight) in first:
                flop_terms.append(Term(_layer_of(name + ".", prefixes), 2, tuple(axes[first[id(weight)]])))
        top_k = int(getattr(model.config, family_of(model).top_k_key, 0) or 0)
        for lay in layouts:
            for fqn in (lay.expert_in, lay.expert_out) if lay.n_experts else ():
                a = axes[first[id(model.get_parameter(fqn))]]
                flop_terms.append(Term(lay.index, 2, (Axis("experts", 1, cap=max(1, top_k)), *a[1:])))
            if seq:  # QKᵀ and AV: 2·2·seq multiply-adds per query feature
                per_group = lay.n_heads // lay.n_kv_heads * lay.head_dim
                flop_terms.append(Term(lay.index, 4 * seq, (Axis("heads", per_group),)))
        lay = layouts[0]
        full = Counts(
            neurons=lay.n_neurons,
            groups=lay.n_kv_heads,
            layers=(True,) * len(layouts),
            hidden=hidden_size(model),
            experts=max((x.n_experts for x in layouts), default=0),
        )
        return cls(param_terms, flop_terms, full, lay.n_heads // lay.n_kv_heads)

    def params(self, counts: Counts) -> int:
        """Parameters of the model shrunk to ``counts`` (tied parameters once)."""
        return sum(t.value(counts) for t in self.params_terms)

    def flops(self, counts: Counts) -> int:
        """FLOPs per token of the model shrunk to ``counts``."""
        return sum(t.value(counts) for t in self.flops_terms)

    def size(self, counts: Counts, metric: str) -> int:
        """``params`` or ``flops`` of ``counts``."""
        return self.flops(counts) if metric == "flops" else self.params(counts)

    def counts(self, units: Units) -> Counts:
        """The counts ``units`` keep (dimensions they leave alone at full size).

        Raises:
            ValueError: if the units keep different counts in different blocks (the config has one size).
        """

        def uniform(masks: Sequence[torch.Tensor], what: str) -> int:
            kept = {int(m.sum()) for m in masks}
            if len(kept) != 1:
                raise ValueError(f"blocks keep different numbers of {what} {sorted(kept)}; the config has one size.")
            return kept.pop()

        out = self.full
        if units.neurons is not None:
            out = replace(out, neurons=uniform(units.neurons, "neurons"))
        if units.heads is not None:
            out = replace(out, groups=uniform(units.heads, "heads") // self.group)
        if units.layers is not None:
            out = replace(out, layers=tuple(bool(k) for k in units.layers))
        if units.hidden is not None:
            out = replace(out, hidden=int(units.hidden.sum()))
        if units.experts is not None:
            out = replace(out, experts=uniform(units.experts, "experts"))
        return out

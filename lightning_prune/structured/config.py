"""The config a physical shrink will write, validated before anything changes.

``transformers`` configs hold one size per dimension for all layers (one ``intermediate_size``, one head count,
one expert count), so a shrink must keep the same count in every layer. Heads and hidden features can be removed
only where the family's attention reads an explicit ``head_dim`` from the config (otherwise it derives
``hidden_size // num_attention_heads`` and a smaller model would reload with a different head size).

Examples:
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64))
    >>> config_updates(model, layer_mask=torch.tensor([True, False]))
    {'num_hidden_layers': 1}
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_prune.structured.cuts import Cut, expert_cuts, head_cuts, hidden_cuts, neuron_cuts
from lightning_prune.structured.families import Family, family_of
from lightning_prune.structured.layout import block_layouts
from lightning_prune.structured.masks import (
    check_expert_masks,
    check_head_masks,
    check_hidden_mask,
    check_layer_mask,
    check_neuron_masks,
    hidden_size,
)

__all__ = ["ROUNDED", "config_accepts", "config_for", "config_updates", "counts_updates"]


def _derived_head_dim(kind: str, what: str, fix: str) -> ValueError:
    return ValueError(
        f"physically removing {what} is not supported for {kind}: transformers derives its head size as "
        f"hidden_size // num_attention_heads, so the smaller model would not reload with from_pretrained. {fix}"
    )


def _heads(model: nn.Module, family: Family, masks: Sequence[Tensor]) -> dict[str, Any]:
    layouts = check_head_masks(model, masks, uniform=True)
    if all(bool(m.all()) for m in masks):
        return {}
    kind = model.config.model_type
    if not family.head_dim_key:
        raise _derived_head_dim(
            kind, "attention heads", f"Use mask_heads_ to zero {kind} heads, or shrink only neurons."
        )
    lay = layouts[0]
    group = lay.n_heads // lay.n_kv_heads
    kept = int(masks[0].sum())
    if not family.kv_key and group > 1:
        raise ValueError(f"{kind}'s config has no key/value head count to record {lay.n_kv_heads} key/value heads.")
    updates: dict[str, Any] = {"num_attention_heads": kept, family.head_dim_key: lay.head_dim}
    if family.kv_key:
        updates[family.kv_key] = kept // group
    return updates


def _neurons(model: nn.Module, family: Family, masks: Sequence[Tensor]) -> dict[str, Any]:
    layouts = check_neuron_masks(model, masks, uniform=True)
    updates: dict[str, Any] = {}
    for lay, m in zip(layouts, masks, strict=True):
        key = family.expert_ffn_key if lay.n_experts else family.ffn_key
        kept = int(m.view(-1, m.shape[-1])[0].sum())
        if updates.setdefault(key, kept) != kept:
            raise ValueError(
                f"dense blocks keep {updates[key]} neurons and experts {kept} (or the reverse), but the config holds "
                f"one {key!r} for both; keep the same count in both kinds of block."
            )
    return updates


def _experts(model: nn.Module, family: Family, masks: Sequence[Tensor]) -> dict[str, Any]:
    check_expert_masks(model, masks, uniform=True)
    if all(bool(m.all()) for m in masks):
        return {}
    if not family.experts_key:
        raise ValueError(f"{model.config.model_type}'s config has no expert count to record the experts kept.")
    kept = int(masks[0].sum())
    updates: dict[str, Any] = {family.experts_key: kept}
    top_k = getattr(model.config, family.top_k_key, None)
    if isinstance(top_k, int) and top_k > kept:
        updates[family.top_k_key] = kept  # a token cannot use more experts than there are
    return updates


def _layers(model: nn.Module, family: Family, mask: Tensor) -> dict[str, Any]:
    layouts = check_layer_mask(model, mask)
    if bool(mask.all()):
        return {}
    config = model.config
    flags = [f for f in family.depth_flags if getattr(config, f, False)]
    if flags:
        raise ValueError(
            f"cannot remove layers of this {config.model_type} model: with {flags} set, a block's output depends on "
            f"its index, so the remaining blocks would compute something else after renumbering."
        )
    kept = mask.nonzero().flatten().tolist()
    updates: dict[str, Any] = {"num_hidden_layers": len(kept)}
    for key in family.per_layer:
        values = getattr(config, key, None)
        if isinstance(values, (list, tuple)) and len(values) == len(layouts):
            updates[key] = [values[i] for i in kept]
    if family.dense_layers_key:  # list the dense layers explicitly: the step pattern does not survive renumbering
        updates[family.sparse_step_key] = 1
        updates[family.dense_layers_key] = [j for j, i in enumerate(kept) if not layouts[i].n_experts]
    return updates


def _hidden(model: nn.Module, family: Family, mask: Tensor) -> dict[str, Any]:
    layouts = check_hidden_mask(model, mask)
    if bool(mask.all()):
        return {}
    if not family.head_dim_key:
        raise _derived_head_dim(
            model.config.model_type, "hidden features", "Remove neurons or layers instead, or mask_hidden_ to zero."
        )
    return {"hidden_size": int(mask.sum()), family.head_dim_key: layouts[0].head_dim}


def _shapes_after(model: nn.Module, cuts: list[Cut], layer_mask: Tensor | None) -> dict[str, tuple[str, tuple]]:
    """``{fqn after: (fqn before, shape after)}`` of every parameter once ``cuts`` are applied and the blocks of
    ``layer_mask`` removed (the others renumbered)."""
    shapes = {n: list(p.shape) for n, p in model.named_parameters()}
    for cut in cuts:
        shapes[cut.fqn][cut.dim] = int(cut.keep.reshape(-1, cut.keep.shape[-1])[0].sum())
    prefixes = [f"{lay.prefix}." for lay in block_layouts(model)]
    kept = range(len(prefixes)) if layer_mask is None else layer_mask.nonzero().flatten().tolist()
    renamed = {prefixes[i]: prefixes[j] for j, i in enumerate(kept)}
    out = {}
    for name, shape in shapes.items():
        block = next((p for p in prefixes if name.startswith(p)), None)
        if block is None or block in renamed:
            out[name if block is None else renamed[block] + name[len(block) :]] = (name, tuple(shape))
    return out


def _built_shapes(model: nn.Module, config: Any) -> dict[str, tuple[int, ...]] | None:
    """Parameter shapes of ``type(model)`` built from ``config`` on the meta device (None if it does not build)."""
    try:
        with torch.device("meta"):
            skeleton = type(model)(config)
    except Exception:  # noqa: BLE001 - e.g. a wrapper class with another constructor
        return None
    return {n: tuple(p.shape) for n, p in skeleton.named_parameters()}


def _check_expressible(model: nn.Module, trial: Any, after: dict[str, tuple[str, tuple]]) -> None:
    """Compare the shrunk shapes with those of the class built from the new config, for every parameter that the
    class built from the current config reproduces (a class that does not build from its config is not checked).

    Raises:
        ValueError: naming the first parameters whose shapes differ.
    """
    now, built = _built_shapes(model, model.config), _built_shapes(model, trial)
    if now is None or built is None:
        return
    current = {n: tuple(p.shape) for n, p in model.named_parameters()}
    wrong = [
        f"{new}: shrunk {shape}, built {built.get(new)}"
        for new, (old, shape) in after.items()
        if now.get(old) == current[old] and built.get(new) != shape
    ]
    if wrong:
        listed = "; ".join(wrong[:3]) + (" ..." if len(wrong) > 3 else "")
        raise ValueError(
            f"{type(model).__name__} built from the shrunk config would not fit the shrunk weights ({listed}): its "
            f"modeling code sizes these from other fields, so from_pretrained could not load the result. Remove "
            f"other dimensions, or mask these units instead."
        )


def _validate(model: nn.Module, updates: dict[str, Any]) -> Any:
    """Try ``updates`` on a copy of the config with ``transformers``' own checks; returns that copy.

    Raises:
        ValueError: naming the updates and the config's complaint.
    """
    trial = copy.deepcopy(model.config)
    for name, value in updates.items():
        setattr(trial, name, value)
    validate = getattr(trial, "validate", None)
    if not updates or not callable(validate):
        return trial
    try:
        validate()
    except Exception as err:  # transformers' own config checks, e.g. on a newer version
        hidden, heads = int(trial.hidden_size), int(trial.num_attention_heads)
        if "num_attention_heads" in updates and hidden % heads:
            n_heads = int(model.config.num_attention_heads)
            group = n_heads // int(getattr(model.config, "num_key_value_heads", None) or n_heads)
            allowed = [k for k in range(group, n_heads + 1, group) if hidden % k == 0]
            raise ValueError(
                f"the head masks keep {heads} of {n_heads} attention heads per layer, but hidden_size {hidden} is "
                f"not a multiple of {heads}: {type(trial).__name__} requires hidden_size % num_attention_heads == 0, "
                f"so save_pretrained would refuse the shrunk model. Keep one of {allowed} heads per layer (whole "
                f"key/value groups of {group}), or zero the heads with mask_heads_ instead."
            ) from err
        raise ValueError(
            f"the shrunk model's config {updates} would be refused by {type(trial).__name__}: {err} "
            f"Choose masks that keep sizes the config accepts."
        ) from err
    return trial


def config_updates(
    model: nn.Module,
    neuron_masks: Sequence[Tensor] | None = None,
    head_masks: Sequence[Tensor] | None = None,
    layer_mask: Tensor | None = None,
    hidden_mask: Tensor | None = None,
    expert_masks: Sequence[Tensor] | None = None,
) -> dict[str, Any]:
    """Validate a physical shrink before anything changes; return the config fields it will set.

    Args:
        model: a supported ``transformers`` model.
        neuron_masks: feed-forward neurons to keep per block (see `lightning_prune.structured.masks`); None
            leaves the dimension alone, as for each of the following.
        head_masks: query heads to keep per block.
        layer_mask: blocks to keep.
        hidden_mask: hidden features to keep.
        expert_masks: experts to keep per experts block.

    Raises:
        ValueError: for invalid masks, heads or hidden features removed where the head size is derived, layers
            removed where blocks depend on their index, counts the config cannot hold, or a config that
            ``transformers`` would refuse to save.
    """
    family = family_of(model)
    updates: dict[str, Any] = {}
    if head_masks is not None:
        updates.update(_heads(model, family, head_masks))
    if neuron_masks is not None:
        updates.update(_neurons(model, family, neuron_masks))
    if expert_masks is not None:
        updates.update(_experts(model, family, expert_masks))
    if hidden_mask is not None:
        updates.update(_hidden(model, family, hidden_mask))
    if layer_mask is not None:
        updates.update(_layers(model, family, layer_mask))
    trial = _validate(model, updates)
    if updates:
        cuts = head_cuts(model, head_masks) if head_masks is not None else []
        cuts += neuron_cuts(model, neuron_masks) if neuron_masks is not None else []
        cuts += expert_cuts(model, expert_masks) if expert_masks is not None else []
        cuts += hidden_cuts(model, hidden_mask) if hidden_mask is not None else []
        _check_expressible(model, trial, _shapes_after(model, cuts, layer_mask))
    return updates


def counts_updates(model: nn.Module, counts: Any) -> dict[str, Any]:
    """The config fields a model of ``model``'s family with the sizes of a
    [`Counts`][lightning_prune.structured.Counts] has, where they differ from ``model``'s (not validated)."""
    family, layouts = family_of(model), block_layouts(model)
    lay = layouts[0]
    group = lay.n_heads // lay.n_kv_heads
    top_k = getattr(model.config, family.top_k_key, None)
    width = hidden_size(model)
    out: dict[str, Any] = {"num_hidden_layers": sum(counts.layers)}
    if not all(counts.layers):  # per-layer lists (layer_types, …) shortened as the real shrink does
        out.update(_layers(model, family, torch.tensor(counts.layers, dtype=torch.bool)))
    if counts.neurons != lay.n_neurons and not lay.n_experts:
        out[family.ffn_key] = counts.neurons
    if counts.groups != lay.n_kv_heads:
        out["num_attention_heads"] = counts.groups * group
        out.update({family.kv_key: counts.groups} if family.kv_key else {})
    if counts.hidden != width:
        out["hidden_size"] = counts.hidden
    if family.head_dim_key and ("num_attention_heads" in out or "hidden_size" in out):
        out[family.head_dim_key] = lay.head_dim
    experts = max((x.n_experts for x in layouts), default=0)
    if experts and counts.experts != experts and family.experts_key:
        out[family.experts_key] = counts.experts
        if isinstance(top_k, int) and top_k > counts.experts:
            out[family.top_k_key] = counts.experts
    return out


def config_for(model: nn.Module, counts: Any) -> Any:
    """A copy of ``model``'s config with the sizes of ``counts``, checked by ``transformers``' own validation.

    Raises:
        ValueError: if the config refuses those sizes.
    """
    return _validate(model, counts_updates(model, counts))


ROUNDED = ("neurons", "hidden", "experts")  # the dimensions a multiple_of can round (heads go by whole groups)


def config_accepts(model: nn.Module, multiple_of: Mapping[str, int] | None = None) -> Callable[[Any], bool]:
    """A test of whether ``model``'s config (``transformers``' own checks) accepts the sizes of a
    [`Counts`][lightning_prune.structured.Counts]: neurons, key/value groups, hidden size, blocks and experts
    kept — and, with ``multiple_of`` (``{"neurons": 128, "hidden": 64, "experts": 8}``), whether every reduced
    count of those dimensions is a multiple of its value (shapes GPU kernels run well; the dense count always
    passes). Answers are cached by the sizes.

    Raises:
        ValueError: for a ``multiple_of`` of another dimension or not a positive int.
    """
    multiple_of = dict(multiple_of or {})
    bad = {d: m for d, m in multiple_of.items() if d not in ROUNDED or isinstance(m, bool) or not isinstance(m, int)}
    if bad or any(m < 1 for m in multiple_of.values()):
        raise ValueError(f"multiple_of maps {ROUNDED} to positive ints, got {multiple_of!r}.")
    layouts = block_layouts(model)
    width = hidden_size(model)
    cache: dict[tuple[int, ...], bool] = {}
    moe = any(x.n_experts for x in layouts)
    full = {"neurons": layouts[0].n_neurons, "hidden": width, "experts": max((x.n_experts for x in layouts), default=0)}

    def accepts(counts: Any) -> bool:
        for dim, m in multiple_of.items():
            kept = getattr(counts, dim)
            if kept != full[dim] and kept % m:
                return False
        key = (counts.neurons, counts.groups, sum(counts.layers), counts.hidden, counts.experts)
        if moe and counts.hidden != width and counts.hidden % 8:
            # transformers' grouped experts kernel needs rows of a multiple of 16 bytes (8 entries in 16 bits)
            return False
        if key not in cache:
            try:
                config_for(model, counts)
                cache[key] = True
            except ValueError:
                cache[key] = False
        return cache[key]

    return accepts

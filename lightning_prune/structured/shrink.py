"""Physical shrink: slice the parameters that `cuts` names, remove blocks, and update the config so that
``save_pretrained`` + plain ``from_pretrained`` give the smaller model.

Parameters are replaced by new, smaller ones (tied ones stay tied): build the optimizer after shrinking.
Everything is validated ([`config_updates`][lightning_prune.structured.config_updates]) before the model changes.

Examples:
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> model = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=4, vocab_size=64))
    >>> shrink_(model, layer_mask=torch.tensor([True, False, True])).config.n_layer
    2
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_prune._selection import is_conv1d
from lightning_prune.structured.config import config_updates
from lightning_prune.structured.cuts import Cut, expert_cuts, head_cuts, hidden_cuts, neuron_cuts
from lightning_prune.structured.families import family_of
from lightning_prune.structured.layout import block_layouts, blocks_of, stream_layout
from lightning_prune.structured.masks import hidden_size

__all__ = ["shrink_", "shrink_experts_", "shrink_heads_", "shrink_hidden_", "shrink_layers_", "shrink_neurons_"]

# module attributes that copy a config size, by the size they copy
_CACHED = {
    "ffn": ("intermediate_size", "intermediate_dim", "ffn_dim"),
    "heads": ("num_heads", "num_attention_heads"),
    "kv_heads": ("num_key_value_heads", "num_kv_heads"),
    "hidden": ("hidden_size", "hidden_dim", "embed_dim"),
    "experts": ("num_experts", "num_local_experts"),
    "top_k": ("top_k", "num_experts_per_tok"),
}


def _recache_(modules: list[nn.Module], size: str, old: int, new: int) -> None:
    """Set each cached copy of a size (an int attribute equal to ``old``) to ``new``."""
    for module in modules:
        for name in _CACHED[size]:
            value = getattr(module, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value == old:
                setattr(module, name, new)


def _select(param: Tensor, cut: Cut) -> Tensor:
    """The kept features of ``param`` along ``cut.dim`` (per expert along axis 0 for a 2-D ``keep``)."""
    keep = cut.keep.to(param.device)
    if keep.dim() == 1:
        return param.index_select(cut.dim, keep.nonzero().flatten())
    idx = keep.nonzero()[:, 1].view(keep.shape[0], -1)  # (E, k): every expert keeps k
    shape = [1] * param.dim()
    shape[0], shape[cut.dim] = idx.shape
    target = list(param.shape)
    target[cut.dim] = idx.shape[1]
    return param.gather(cut.dim, idx.view(shape).expand(target))


def _resize_(module: nn.Module) -> None:
    """Make a layer's size attributes match its (new) weight."""
    w = getattr(module, "weight", None)
    if not isinstance(w, Tensor):
        return
    if is_conv1d(module):
        module.nx, module.nf = w.shape
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = w.shape
    elif isinstance(module, nn.Embedding):
        module.num_embeddings, module.embedding_dim = w.shape
    elif isinstance(getattr(module, "normalized_shape", None), tuple):
        module.normalized_shape = tuple(w.shape)


@torch.no_grad()
def _apply_cuts_(model: nn.Module, cuts: list[Cut]) -> None:
    """Replace every cut parameter (on all modules that share it) by its kept slice."""
    owners: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            owners.setdefault(id(param), []).append((module, name))
    for cut in cuts:
        old = model.get_parameter(cut.fqn)
        new = nn.Parameter(_select(old, cut).contiguous(), requires_grad=old.requires_grad)
        owners[id(new)] = owners.pop(id(old))
        for module, name in owners[id(new)]:
            setattr(module, name, new)
            _resize_(module)


def _parent(model: nn.Module, fqn: str) -> nn.Module:
    return model.get_submodule(fqn.rpartition(".")[0])


def _shrink_heads(model: nn.Module, masks: Sequence[Tensor]) -> None:
    layouts = block_layouts(model)
    _apply_cuts_(model, head_cuts(model, masks))
    for lay, keep in zip(layouts, masks, strict=True):
        attention = list(_parent(model, lay.attn_out).modules())
        group = lay.n_heads // lay.n_kv_heads
        _recache_(attention, "heads", lay.n_heads, int(keep.sum()))
        _recache_(attention, "kv_heads", lay.n_kv_heads, int(keep.sum()) // group)


def _shrink_neurons(model: nn.Module, masks: Sequence[Tensor]) -> None:
    layouts = block_layouts(model)
    _apply_cuts_(model, neuron_cuts(model, masks))
    for lay, keep in zip(layouts, masks, strict=True):
        ffn = model.get_submodule(lay.experts) if lay.n_experts else _parent(model, lay.ffn_out)
        _recache_(list(ffn.modules()), "ffn", lay.n_neurons, int(keep.view(-1, keep.shape[-1])[0].sum()))


def _shrink_experts(model: nn.Module, masks: Sequence[Tensor], updates: dict[str, Any]) -> None:
    old = next(lay.n_experts for lay in block_layouts(model) if lay.n_experts)
    _apply_cuts_(model, expert_cuts(model, masks))
    modules = list(model.modules())
    _recache_(modules, "experts", old, int(masks[0].sum()))
    top_k = family_of(model).top_k_key
    if top_k in updates:  # fewer experts than a token used: the config (read before it changes) caps it
        _recache_(modules, "top_k", int(getattr(model.config, top_k)), updates[top_k])


@torch.no_grad()
def norm_form(norm: nn.Module, width: int) -> str | None:
    """How an RMS norm applies its weight: ``"w"``, Gemma's ``"1+w"``, or None (not recognised, e.g. no weight)."""
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, Tensor):
        return None
    probe = norm(torch.ones(1, width, dtype=weight.dtype, device=weight.device))[0]  # an all-ones row has RMS 1
    if torch.allclose(probe, weight, atol=1e-3):
        return "w"
    return "1+w" if torch.allclose(probe, 1 + weight, atol=1e-3) else None


@torch.no_grad()
def scale_norm_(norm: nn.Module, factor: float, form: str) -> None:
    """Multiply what an RMS norm of `norm_form` ``form`` outputs by ``factor``, through its weight."""
    if form == "w":
        norm.weight.mul_(factor)
    else:
        norm.weight.copy_((1 + norm.weight) * factor - 1)


def _shrink_hidden(model: nn.Module, mask: Tensor) -> None:
    old = hidden_size(model)
    _apply_cuts_(model, hidden_cuts(model, mask))
    new = int(mask.sum())
    _recache_(list(model.modules()), "hidden", old, new)
    if family_of(model).scaled_embedding:
        _keep_embedding_scale_(model, old, new)


@torch.no_grad()
def _keep_embedding_scale_(model: nn.Module, old: int, new: int) -> None:
    """Gemma scales its input embedding by ``sqrt(hidden_size)``, which a reload recomputes from the config: the
    kept columns are scaled by ``sqrt(old / new)`` so each token still enters the stream as before, and a tied output
    head (the same weight) is compensated in the final norm, so the logits do not grow with it.

    Raises:
        ValueError: for a tied head whose final norm has no weight to compensate in (nothing changes).
    """
    embedding, factor = model.get_input_embeddings(), (old / new) ** 0.5
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = head is not None and head.weight is embedding.weight
    final = [m for m in (model.get_submodule(n) for n in stream_layout(model)[0]) if not isinstance(m, nn.Embedding)]
    form = norm_form(final[-1], new) if tied and final else None
    if tied and form is None:
        raise ValueError(f"{type(model).__name__}: a tied output head without a final RMS norm to compensate in.")
    if isinstance(getattr(embedding, "embed_scale", None), Tensor):
        embedding.embed_scale.fill_(new**0.5)
    if hasattr(embedding, "scalar_embed_scale"):
        embedding.scalar_embed_scale = new**0.5
    embedding.weight.mul_(factor)
    if tied:
        scale_norm_(final[-1], 1 / factor, form)


def _shrink_layers(model: nn.Module, mask: Tensor) -> None:
    blocks = blocks_of(model)
    for i in reversed(range(len(blocks))):
        if not bool(mask[i]):
            del blocks[i]  # ModuleList renumbers the rest
    for j, block in enumerate(blocks):
        for module in block.modules():  # the key/value cache is indexed by layer_idx
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = j


@torch.no_grad()
def shrink_(
    model: nn.Module,
    neuron_masks: Sequence[Tensor] | None = None,
    head_masks: Sequence[Tensor] | None = None,
    *,
    layer_mask: Tensor | None = None,
    hidden_mask: Tensor | None = None,
    expert_masks: Sequence[Tensor] | None = None,
) -> nn.Module:
    """Physically remove neurons, heads, experts, hidden features and/or whole layers; returns ``model``.

    All masks refer to the model as given (one per original layer). Heads, neurons, experts and hidden features
    are removed first, layers last. Everything (masks, family, the new config) is validated before the model is
    changed.

    Args:
        model: a supported ``transformers`` model (see [`family_of`][lightning_prune.structured.family_of]).
        neuron_masks: per block, bool ``(n,)`` (``(E, n)`` in an experts block), the same count in every layer.
        head_masks: per block, bool ``(n_heads,)`` keeping whole key/value groups, the same count in every layer.
        layer_mask: bool ``(n_layers,)`` over the blocks.
        hidden_mask: bool ``(hidden_size,)`` over the residual stream's features.
        expert_masks: per experts block, bool ``(E,)``, the same count in every block.

    Raises:
        ValueError: if the masks are invalid or not expressible in the model's config; the model is unchanged.
    """
    updates = config_updates(model, neuron_masks, head_masks, layer_mask, hidden_mask, expert_masks)
    if head_masks is not None and any(not bool(m.all()) for m in head_masks):
        _shrink_heads(model, head_masks)
    if neuron_masks is not None:
        _shrink_neurons(model, neuron_masks)
    if expert_masks is not None and any(not bool(m.all()) for m in expert_masks):
        _shrink_experts(model, expert_masks, updates)
    if hidden_mask is not None and not bool(hidden_mask.all()):
        _shrink_hidden(model, hidden_mask)
    if layer_mask is not None and not bool(layer_mask.all()):
        _shrink_layers(model, layer_mask)
    for name, value in updates.items():
        setattr(model.config, name, value)
    return model


def shrink_neurons_(model: nn.Module, masks: Sequence[Tensor]) -> nn.Module:
    """Physically remove feed-forward neurons and set the config's width (``n_inner``, ``intermediate_size``,
    ``moe_intermediate_size`` ...); see [`shrink_`][lightning_prune.shrink_].

    Raises:
        ValueError: see [`check_neuron_masks`][lightning_prune.structured.check_neuron_masks] (with ``uniform=True``).
    """
    return shrink_(model, neuron_masks=masks)


def shrink_heads_(model: nn.Module, masks: Sequence[Tensor]) -> nn.Module:
    """Physically remove attention heads and set the head counts (and an explicit ``head_dim``) in the config.

    Raises:
        ValueError: where the family's attention derives its head size (GPT-2, BERT, GPT-NeoX ...: use
            [`mask_heads_`][lightning_prune.structured.mask_heads_]), when the config refuses the kept head count, and
            see [`check_head_masks`][lightning_prune.structured.check_head_masks] (with ``uniform=True``). Nothing is
            changed when it raises.
    """
    return shrink_(model, head_masks=masks)


def shrink_layers_(model: nn.Module, mask: Tensor) -> nn.Module:
    """Physically remove whole blocks; updates the layer count, per-layer config lists and each ``layer_idx``.

    Raises:
        ValueError: see [`check_layer_mask`][lightning_prune.structured.check_layer_mask], or when a block depends on
            its index.
    """
    return shrink_(model, layer_mask=mask)


def shrink_hidden_(model: nn.Module, mask: Tensor) -> nn.Module:
    """Physically remove features of the residual stream and set ``hidden_size`` (and an explicit ``head_dim``).

    Raises:
        ValueError: where the family's attention derives its head size, and see
            `hidden_cuts`.
    """
    return shrink_(model, hidden_mask=mask)


def shrink_experts_(model: nn.Module, masks: Sequence[Tensor]) -> nn.Module:
    """Physically remove whole experts and their router rows; sets the expert count (and caps the experts per token).

    Raises:
        ValueError: see [`check_expert_masks`][lightning_prune.structured.check_expert_masks] (with ``uniform=True``).
    """
    return shrink_(model, expert_masks=masks)

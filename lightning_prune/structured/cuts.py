"""Which parameter entries each structured unit owns, as [`Cut`][lightning_prune.structured.Cut] s; the entries as bool
masks; zeroing them.

A [`Cut`][lightning_prune.structured.Cut] says which features of one parameter survive along one axis. From a list of
cuts come the ``{fqn: bool pruned}`` entry masks (``*_weight_masks``, to hold with a mask registry while training), the
masked model (``mask_*_``: zero those entries, shapes unchanged) and the physical shrink (`shrink`).

Zeroing the entries removes a neuron, a head or a pre-norm block exactly (the masked model computes what the
shrunk one does). Not so for experts (the router's softmax still counts a zeroed expert), for hidden features
(norms average over every feature) and for q/k norms over all heads (OLMo 2): there the masked model only
approximates the shrunk one.

Examples:
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, n_inner=4, vocab_size=16))
    >>> neuron_weight_masks(model, [torch.tensor([True, False, True, True])])["transformer.h.0.mlp.c_fc.bias"]
    tensor([False,  True, False, False])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from lightning_prune._selection import is_conv1d
from lightning_prune.structured.families import family_of
from lightning_prune.structured.layout import BlockLayout, block_layouts, stream_layout
from lightning_prune.structured.masks import (
    check_expert_masks,
    check_head_masks,
    check_hidden_mask,
    check_layer_mask,
    check_neuron_masks,
)

__all__ = [
    "Cut",
    "expert_cuts",
    "expert_weight_masks",
    "head_cuts",
    "head_weight_masks",
    "hidden_cuts",
    "hidden_weight_masks",
    "layer_weight_masks",
    "mask_experts_",
    "mask_heads_",
    "mask_hidden_",
    "mask_layers_",
    "mask_neurons_",
    "neuron_cuts",
    "neuron_weight_masks",
]


class Cut(NamedTuple):
    """The features of parameter ``fqn`` kept along axis ``dim``: ``keep`` is bool ``(size,)``, or ``(E, size)``
    with a separate choice per expert along axis 0."""

    fqn: str
    dim: int
    keep: Tensor


def _adapter_cuts(module: nn.Module, fqn: str, keep: Tensor, side: str) -> list[Cut]:
    """Cuts of a PEFT LoRA layer's adapters: ``lora_A`` (r, in) loses input columns, ``lora_B`` (out, r) output rows
    (and its bias), DoRA's magnitude (out,) its outputs."""
    cuts = []
    if side == "in":
        for name in getattr(module, "lora_A", {}):
            cuts.append(Cut(f"{fqn}.lora_A.{name}.weight", 1, keep))
        return cuts
    for name, sub in getattr(module, "lora_B", {}).items():
        cuts.append(Cut(f"{fqn}.lora_B.{name}.weight", 0, keep))
        if getattr(sub, "bias", None) is not None:
            cuts.append(Cut(f"{fqn}.lora_B.{name}.bias", 0, keep))
    for name, sub in getattr(module, "lora_magnitude_vector", {}).items():
        cuts += [Cut(f"{fqn}.lora_magnitude_vector.{name}.{p}", 0, keep) for p, _ in sub.named_parameters()]
    return cuts


def _linear(model: nn.Module, fqn: str, keep: Tensor, side: str) -> list[Cut]:
    """Cuts of a Linear or Conv1D layer's outputs (``side="out"``, with the bias) or inputs (``"in"``); of a PEFT
    LoRA layer, its base layer's and its adapters'."""
    module = model.get_submodule(fqn)
    base = getattr(module, "base_layer", None)
    if isinstance(base, nn.Module) and base is not module:
        return _linear(model, f"{fqn}.base_layer", keep, side) + _adapter_cuts(module, fqn, keep, side)
    conv = is_conv1d(module)
    if side == "in":
        return [Cut(f"{fqn}.weight", 0 if conv else 1, keep)]
    cuts = [Cut(f"{fqn}.weight", 1 if conv else 0, keep)]
    if getattr(module, "bias", None) is not None:
        cuts.append(Cut(f"{fqn}.bias", 0, keep))
    return cuts


def _vector(model: nn.Module, fqn: str, keep: Tensor) -> list[Cut]:
    """Cuts of every parameter of a norm (weight, bias) along its first axis."""
    return [Cut(f"{fqn}.{name}", 0, keep) for name, _ in model.get_submodule(fqn).named_parameters(recurse=False)]


def neuron_cuts(model: nn.Module, masks: Sequence[Tensor]) -> list[Cut]:
    """Cuts removing feed-forward neurons: producers' outputs (each part of a fused [gate | up]), consumer inputs.

    Raises:
        ValueError: see [`check_neuron_masks`][lightning_prune.structured.check_neuron_masks].
    """
    cuts = []
    for lay, keep in zip(check_neuron_masks(model, masks), masks, strict=True):
        if lay.n_experts:  # (E, n): gate_up_proj (E, parts·n, H), down_proj (E, H, n)
            cuts += [Cut(lay.expert_in, 1, keep.repeat(1, lay.ffn_parts)), Cut(lay.expert_out, 2, keep)]
            continue
        for name in lay.ffn_in:
            cuts += _linear(model, name, keep.repeat(lay.ffn_parts), "out")
        cuts += _linear(model, lay.ffn_out, keep, "in")
    return cuts


def _qkv_features(lay: BlockLayout, role: str, keep: Tensor) -> Tensor:
    """Output features kept by an attention input projection of ``role`` under head mask ``keep (n_heads,)``."""
    d = lay.head_dim
    kv = keep.view(lay.n_kv_heads, -1).any(1)  # (n_kv,): a key/value head goes with its whole query group
    if role == "q":
        return keep.repeat_interleave(d)
    if role in ("k", "v"):
        return kv.repeat_interleave(d)
    if lay.qkv_layout == "grouped":  # per key/value head: its queries, its key, its value
        grouped = torch.cat([keep.view(lay.n_kv_heads, -1), kv[:, None], kv[:, None]], dim=1)  # (n_kv, r + 2)
        return grouped.flatten().repeat_interleave(d)
    return torch.cat([keep.repeat_interleave(d), kv.repeat_interleave(d), kv.repeat_interleave(d)])  # q | k | v


def head_cuts(model: nn.Module, masks: Sequence[Tensor]) -> list[Cut]:
    """Cuts removing attention heads: q/k/v outputs (whole key/value groups), output-projection inputs, and q/k
    norms that span all heads.

    Raises:
        ValueError: see [`check_head_masks`][lightning_prune.structured.check_head_masks].
    """
    cuts = []
    for lay, keep in zip(check_head_masks(model, masks), masks, strict=True):
        for name, role in lay.attn_in:
            cuts += _linear(model, name, _qkv_features(lay, role, keep), "out")
        cuts += _linear(model, lay.attn_out, _qkv_features(lay, "q", keep), "in")
        for name, role in lay.qk_norms:
            cuts += _vector(model, name, _qkv_features(lay, role, keep))
    return cuts


def expert_cuts(model: nn.Module, masks: Sequence[Tensor]) -> list[Cut]:
    """Cuts removing whole experts: their slices of the fused expert parameters and the router's rows.

    Raises:
        ValueError: see [`check_expert_masks`][lightning_prune.structured.check_expert_masks].
    """
    cuts = []
    for lay, keep in zip(check_expert_masks(model, masks), masks, strict=True):
        cuts += [Cut(lay.expert_in, 0, keep), Cut(lay.expert_out, 0, keep)]
        router = model.get_submodule(lay.router)
        cuts += [Cut(f"{lay.router}.{n}", 0, keep) for n, p in router.named_parameters(recurse=False) if p.dim()]
    return cuts


def hidden_cuts(model: nn.Module, mask: Tensor) -> list[Cut]:
    """Cuts removing features of the residual stream: embedding columns, norms, every projection's input or output
    on the stream, expert and router columns, and the inputs of the output head (a tied head once, by its first
    name) and of other readers such as BERT's pooler.

    Raises:
        ValueError: see [`check_hidden_mask`][lightning_prune.structured.check_hidden_mask], or if a parameter of the
            hidden size sits where the family description does not say.
    """
    layouts = check_hidden_mask(model, mask)
    stream, readers = stream_layout(model)
    cuts = []
    for name in stream:
        module = model.get_submodule(name)
        cuts += [Cut(f"{name}.weight", 1, mask)] if isinstance(module, nn.Embedding) else _vector(model, name, mask)
    for name in readers:
        cuts += _linear(model, name, mask, "in")
    for lay in layouts:
        for name in lay.norms:
            cuts += _vector(model, name, mask)
        for name in [n for n, _ in lay.attn_in] + list(lay.ffn_in):
            cuts += _linear(model, name, mask, "in")
        for name in (lay.attn_out, lay.ffn_out):
            cuts += _linear(model, name, mask, "out") if name else []
        if lay.n_experts:  # gate_up_proj (E, ·, H), down_proj (E, H, ·), router (E, H)
            cuts += [Cut(lay.expert_in, 2, mask), Cut(lay.expert_out, 1, mask)]
            cuts += _linear(model, lay.router, mask, "in")
    return _one_per_parameter(model, cuts, mask.numel())


def _one_per_parameter(model: nn.Module, cuts: list[Cut], width: int) -> list[Cut]:
    """Keep one cut per parameter (tied ones by their first name), and check that no parameter of a module the
    family description does not name has ``width``."""
    first = {id(p): name for name, p in model.named_parameters()}
    unique = {}
    for cut in cuts:
        name = first[id(model.get_parameter(cut.fqn))]
        unique.setdefault(name, cut._replace(fqn=name))
    known = {cut.fqn.rpartition(".")[0] for cut in cuts}
    known |= {f"{lay.prefix}.{path}" for lay in block_layouts(model) for path, _ in family_of(model).qk_norms}
    stray = [n for n, p in model.named_parameters() if width in p.shape and n.rpartition(".")[0] not in known]
    if stray:
        raise ValueError(
            f"parameters {stray} have the hidden size {width} but the description of model_type "
            f"{model.config.model_type!r} does not place their modules, so removing hidden features would leave "
            f"them at full width. Add the modules to the family's norms or stream (FAMILY_DESCRIPTIONS)."
        )
    return list(unique.values())


def _pruned(cut: Cut, param: Tensor) -> Tensor:
    """``~keep`` broadcast to the parameter's full shape (also of a sharded tensor), on its device."""
    shape = [1] * param.dim()
    shape[cut.dim] = cut.keep.shape[-1]
    if cut.keep.dim() == 2:
        shape[0] = cut.keep.shape[0]
    return (~cut.keep.bool()).reshape(shape).expand(tuple(param.shape)).to(param.device)


def _entries(model: nn.Module, cuts: list[Cut]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for cut in cuts:
        pruned = _pruned(cut, model.get_parameter(cut.fqn))
        out[cut.fqn] = out[cut.fqn] | pruned if cut.fqn in out else pruned
    return {f: m.contiguous() for f, m in out.items()}


def neuron_weight_masks(model: nn.Module, masks: Sequence[Tensor]) -> dict[str, Tensor]:
    """``{fqn: bool pruned}`` of every weight and bias entry that a removed neuron owns, in ``model``'s names.

    Producers (``c_fc``; ``gate_proj``/``up_proj``; a fused ``gate_up_proj``; ``intermediate.dense``; experts'
    ``gate_up_proj``) lose the neuron's output rows and bias, the consumer (``c_proj``; ``down_proj``;
    ``output.dense``) the neuron's input column. Holding these entries at zero is exactly removing the neuron.

    Raises:
        ValueError: see [`check_neuron_masks`][lightning_prune.structured.check_neuron_masks].
    """
    return _entries(model, neuron_cuts(model, masks))


def head_weight_masks(model: nn.Module, masks: Sequence[Tensor]) -> dict[str, Tensor]:
    """``{fqn: bool pruned}`` of the q/k/v rows (and biases) and output-projection columns of removed heads.

    Raises:
        ValueError: see [`check_head_masks`][lightning_prune.structured.check_head_masks].
    """
    return _entries(model, head_cuts(model, masks))


def expert_weight_masks(model: nn.Module, masks: Sequence[Tensor]) -> dict[str, Tensor]:
    """``{fqn: bool pruned}`` of removed experts' slices of the fused expert parameters and router rows.

    Raises:
        ValueError: see [`check_expert_masks`][lightning_prune.structured.check_expert_masks].
    """
    return _entries(model, expert_cuts(model, masks))


def hidden_weight_masks(model: nn.Module, mask: Tensor) -> dict[str, Tensor]:
    """``{fqn: bool pruned}`` of every entry that a removed residual feature owns (see `hidden_cuts`).

    Raises:
        ValueError: see `hidden_cuts`.
    """
    return _entries(model, hidden_cuts(model, mask))


def layer_weight_masks(model: nn.Module, mask: Tensor) -> dict[str, Tensor]:
    """``{fqn: bool pruned}``: every entry of every parameter of the removed blocks (all True).

    Raises:
        ValueError: see [`check_layer_mask`][lightning_prune.structured.check_layer_mask].
    """
    prefixes = tuple(
        f"{lay.prefix}." for lay, keep in zip(check_layer_mask(model, mask), mask, strict=True) if not keep
    )
    return {
        n: torch.ones(tuple(p.shape), dtype=torch.bool, device=p.device)
        for n, p in model.named_parameters()
        if n.startswith(prefixes)
    }


@torch.no_grad()
def _zero_(model: nn.Module, entries: dict[str, Tensor]) -> None:
    for fqn, pruned in entries.items():
        param = model.get_parameter(fqn)
        param.masked_fill_(pruned.to(param.device), 0.0)


def mask_neurons_(model: nn.Module, masks: Sequence[Tensor]) -> None:
    """Zero the weights (and biases) of removed feed-forward neurons in place; shapes stay the same.

    Raises:
        ValueError: see [`check_neuron_masks`][lightning_prune.structured.check_neuron_masks].
    """
    _zero_(model, neuron_weight_masks(model, masks))


def mask_heads_(model: nn.Module, masks: Sequence[Tensor]) -> None:
    """Zero the query/key/value weights and output-projection inputs of removed heads in place.

    Key/value heads are zeroed only when their whole query group is removed.

    Raises:
        ValueError: see [`check_head_masks`][lightning_prune.structured.check_head_masks].
    """
    _zero_(model, head_weight_masks(model, masks))


def mask_experts_(model: nn.Module, masks: Sequence[Tensor]) -> None:
    """Zero removed experts and their router rows in place (the router still routes to them: not exact).

    Raises:
        ValueError: see [`check_expert_masks`][lightning_prune.structured.check_expert_masks].
    """
    _zero_(model, expert_weight_masks(model, masks))


def mask_hidden_(model: nn.Module, mask: Tensor) -> None:
    """Zero every entry of removed residual features in place; those features stay zero through the model.

    Raises:
        ValueError: see `hidden_cuts`.
    """
    _zero_(model, hidden_weight_masks(model, mask))


def mask_layers_(model: nn.Module, mask: Tensor) -> None:
    """Zero every parameter of removed blocks in place; a pre-norm block then passes its input through.

    Raises:
        ValueError: see [`check_layer_mask`][lightning_prune.structured.check_layer_mask].
    """
    _zero_(model, layer_weight_masks(model, mask))

"""Structured pruning of `transformers` GPT-2, Llama and BERT models: neuron and head masks, zeroing, and a
physical shrink that plain ``from_pretrained`` reloads.

Masks are given per block as a list (one entry per layer, in order): a bool ``(n_neurons,)`` tensor over the
block's feed-forward neurons, and a bool ``(n_heads,)`` tensor over its query heads. True = keep.

==========  =============================  ==========================  =====================================
family      neurons produced by            neurons consumed by         attention (heads)
==========  =============================  ==========================  =====================================
``gpt2``    ``mlp.c_fc`` (Conv1D, in×out)  ``mlp.c_proj`` (Conv1D)     ``attn.c_attn`` fused q|k|v, ``c_proj``
``llama``   ``mlp.gate_proj``, ``up_proj``  ``mlp.down_proj``           ``q/k/v_proj`` (GQA), ``o_proj``
``bert``    ``intermediate.dense``         ``output.dense``            ``query/key/value``, ``output.dense``
==========  =============================  ==========================  =====================================

Two ways to apply masks:

* :func:`mask_neurons_` / :func:`mask_heads_` zero the weights of removed units in place (the "masked model";
  shapes unchanged). Zeroing the output projection's inputs alone removes a unit exactly; its incoming weights
  and biases are zeroed too.
* :func:`shrink_` slices the layers (Linear: weight ``(out, in)``; GPT-2's Conv1D: weight ``(in, out)``) and
  updates the config, so ``save_pretrained`` + ``from_pretrained`` gives a smaller model with the same outputs.

Configs hold one ``intermediate_size``/``n_inner`` and one head count for all layers, so the shrink requires the
same number of kept neurons (and heads) in every layer; :func:`neuron_masks_from_scores` and
:func:`head_masks_from_scores` produce such masks. Heads are shrunk for Llama only: ``LlamaConfig`` stores
``head_dim``, whereas GPT-2 and BERT derive ``head_dim = hidden_size // num_heads``, so fewer heads would change
the head size on reload. For those two, heads can be masked (zeroed) but not physically removed.

Llama grouped-query attention: query heads ``g·r .. g·r + r - 1`` share key/value head g (r =
``num_attention_heads // num_key_value_heads``); a head mask must keep or remove each such group whole.

Example:
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64))
    >>> masks = neuron_masks_from_scores([torch.rand(128) for _ in range(2)], sparsity=0.5)
    >>> shrink_(model, neuron_masks=masks).config.n_inner
    64
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_prune.selection import in_features, is_conv1d

__all__ = [
    "FAMILIES",
    "BlockLayout",
    "block_layouts",
    "check_head_masks",
    "check_neuron_masks",
    "ffn_neuron_weights",
    "ffn_output_modules",
    "head_masks_from_scores",
    "mask_heads_",
    "mask_neurons_",
    "model_family",
    "neuron_masks_from_scores",
    "shrink_",
    "shrink_heads_",
    "shrink_neurons_",
]

FAMILIES = ("gpt2", "llama", "bert")
_SPEC = {  # family → (block list, neuron producers, neuron consumer, attention inputs (name, role), attention out)
    "gpt2": ("h", ("mlp.c_fc",), "mlp.c_proj", (("attn.c_attn", "qkv"),), "attn.c_proj"),
    "llama": (
        "layers",
        ("mlp.gate_proj", "mlp.up_proj"),
        "mlp.down_proj",
        (("self_attn.q_proj", "q"), ("self_attn.k_proj", "k"), ("self_attn.v_proj", "v")),
        "self_attn.o_proj",
    ),
    "bert": (
        "encoder.layer",
        ("intermediate.dense",),
        "output.dense",
        (("attention.self.query", "q"), ("attention.self.key", "k"), ("attention.self.value", "v")),
        "attention.output.dense",
    ),
}


@dataclass(frozen=True)
class BlockLayout:
    """Where one transformer block keeps its feed-forward neurons and attention heads."""

    index: int  # layer number
    prefix: str  # fqn of the block module, e.g. "transformer.h.0"
    ffn_in: tuple[str, ...]  # fqns of modules whose outputs are the neurons
    ffn_out: str  # fqn of the module whose inputs are the neurons
    attn_in: tuple[tuple[str, str], ...]  # (fqn, role) with role q, k, v or qkv (GPT-2's fused c_attn)
    attn_out: str  # fqn of the attention output projection
    n_neurons: int  # current intermediate size
    n_heads: int  # current query heads
    n_kv_heads: int  # current key/value heads (== n_heads without GQA)
    head_dim: int  # features per head


def _out_features(module: nn.Module) -> int:
    return module.weight.shape[1] if is_conv1d(module) else module.weight.shape[0]


def model_family(model: nn.Module) -> str:
    """``"gpt2"``, ``"llama"`` or ``"bert"`` from ``model.config.model_type``.

    Raises:
        ValueError: for any other model.
    """
    kind = getattr(getattr(model, "config", None), "model_type", None)
    if kind not in FAMILIES:
        raise ValueError(f"structured pruning supports model_type in {FAMILIES}, got {kind!r}.")
    return kind


def _head_dim(family: str, block: nn.Module) -> int:
    if family == "gpt2":
        return block.attn.head_dim
    if family == "llama":
        return block.self_attn.head_dim
    return block.attention.self.attention_head_size


def block_layouts(model: nn.Module) -> list[BlockLayout]:
    """One :class:`BlockLayout` per transformer block, read from the current module shapes.

    Raises:
        ValueError: if the model family is not supported.
    """
    family = model_family(model)
    blocks_name, ffn_in, ffn_out, attn_in, attn_out = _SPEC[family]
    names = {id(m): n for n, m in model.named_modules()}
    layouts = []
    for i, block in enumerate(model.base_model.get_submodule(blocks_name)):
        p = names[id(block)]
        hd = _head_dim(family, block)
        n_heads = in_features(block.get_submodule(attn_out)) // hd
        n_kv = block.self_attn.k_proj.out_features // hd if family == "llama" else n_heads
        layouts.append(
            BlockLayout(
                index=i,
                prefix=p,
                ffn_in=tuple(f"{p}.{n}" for n in ffn_in),
                ffn_out=f"{p}.{ffn_out}",
                attn_in=tuple((f"{p}.{n}", role) for n, role in attn_in),
                attn_out=f"{p}.{attn_out}",
                n_neurons=_out_features(block.get_submodule(ffn_in[0])),
                n_heads=n_heads,
                n_kv_heads=n_kv,
                head_dim=hd,
            )
        )
    return layouts


def ffn_output_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{fqn: module}`` of each block's feed-forward output projection; its input is the neuron activation."""
    return {lay.ffn_out: model.get_submodule(lay.ffn_out) for lay in block_layouts(model)}


def _in_rows(module: nn.Module, weight: Tensor | None = None) -> Tensor:
    """Weight (or a tensor shaped like it) as ``(out, in)``."""
    weight = module.weight if weight is None else weight
    return weight.t() if is_conv1d(module) else weight


def ffn_neuron_weights(model: nn.Module, values: Mapping[str, Tensor] | None = None) -> list[tuple[Tensor, Tensor]]:
    """Per block, ``(w_in (n, d·k), w_out (n, d))``: each neuron's incoming weights (all producers concatenated)
    and outgoing weights, detached, ready for :func:`lightning_prune.mutual_information.weight_norm_scores`.

    Args:
        values: ``{fqn of a weight: tensor shaped like it}`` to read instead of the weight (e.g. a running |w|).
    """
    values = values or {}

    def rows(name: str) -> Tensor:
        return _in_rows(model.get_submodule(name), values.get(f"{name}.weight"))

    out = []
    for lay in block_layouts(model):
        w_in = torch.cat([rows(n) for n in lay.ffn_in], dim=1)  # (n, d·k)
        w_out = rows(lay.ffn_out).t()  # (n, d)
        out.append((w_in.detach(), w_out.detach()))
    return out


def neuron_masks_from_scores(scores: Sequence[Tensor], sparsity: float) -> list[Tensor]:
    """Per layer, remove the ``round(sparsity · n)`` lowest-scored neurons (the same number in every layer).

    Ties: the lower index is removed first.

    Raises:
        ValueError: if ``sparsity`` is not in [0, 1) or would remove every neuron of a layer.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be a fraction of neurons removed in [0, 1), got {sparsity!r}.")
    masks = []
    for i, s in enumerate(scores):
        n_remove = round(sparsity * s.numel())
        if n_remove >= s.numel():
            raise ValueError(f"sparsity {sparsity} removes all {s.numel()} neurons of layer {i}; keep at least one.")
        mask = torch.ones(s.numel(), dtype=torch.bool, device=s.device)
        mask[torch.argsort(s.flatten().float(), stable=True)[:n_remove]] = False
        masks.append(mask)
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
        keep_groups = torch.ones(lay.n_kv_heads, dtype=torch.bool, device=s.device)
        keep_groups[torch.argsort(group_scores, stable=True)[: n_remove // group]] = False
        masks.append(keep_groups.repeat_interleave(group))
    return masks


def _check_masks(masks: Sequence[Tensor], sizes: list[int], what: str, uniform: bool) -> None:
    if len(masks) != len(sizes):
        raise ValueError(f"need one {what} mask per layer ({len(sizes)}), got {len(masks)}.")
    for i, (m, n) in enumerate(zip(masks, sizes, strict=True)):
        if m.dtype != torch.bool or m.shape != (n,):
            raise ValueError(f"layer {i}: {what} mask must be bool of shape ({n},), got {m.dtype} {tuple(m.shape)}.")
        if not m.any():
            raise ValueError(f"layer {i}: the {what} mask removes all {n} {what}s; keep at least one per layer.")
    kept = [int(m.sum()) for m in masks]
    if uniform and len(set(kept)) > 1:
        raise ValueError(
            f"layers keep different numbers of {what}s {kept}: the config has one size for all layers, so a "
            f"physical shrink needs the same count in every layer (neuron_masks_from_scores / "
            f"head_masks_from_scores remove the same number per layer)."
        )


def check_neuron_masks(model: nn.Module, masks: Sequence[Tensor], uniform: bool = False) -> list[BlockLayout]:
    """Validate neuron masks (one bool ``(n_neurons,)`` per layer, none all False) and return the layouts.

    Raises:
        ValueError: on a wrong count/shape/dtype, a layer losing every neuron, or (``uniform``) unequal counts.
    """
    layouts = block_layouts(model)
    _check_masks(masks, [lay.n_neurons for lay in layouts], "neuron", uniform)
    return layouts


def check_head_masks(model: nn.Module, masks: Sequence[Tensor], uniform: bool = False) -> list[BlockLayout]:
    """Validate head masks like :func:`check_neuron_masks`, and that each GQA query group is kept or removed whole.

    Raises:
        ValueError: as :func:`check_neuron_masks`, or if a key/value group is split.
    """
    layouts = block_layouts(model)
    _check_masks(masks, [lay.n_heads for lay in layouts], "head", uniform)
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


def _feature_index(mask: Tensor, width: int) -> Tensor:
    """Unit mask ``(u,)`` → indices of the features of kept units, each unit ``width`` consecutive features."""
    units = mask.nonzero().flatten()
    return (units[:, None] * width + torch.arange(width, device=mask.device)).flatten()


def _attn_out_index(lay: BlockLayout, role: str, mask: Tensor) -> Tensor:
    """Output-feature indices kept by an attention input projection of ``role`` under head mask ``mask``."""
    kv_mask = mask.view(lay.n_kv_heads, -1).any(1)  # (n_kv,)
    if role == "q":
        return _feature_index(mask, lay.head_dim)
    if role in ("k", "v"):
        return _feature_index(kv_mask, lay.head_dim)
    width = lay.n_heads * lay.head_dim  # GPT-2 fused q|k|v, each part n_heads·head_dim wide
    q = _feature_index(mask, lay.head_dim)
    return torch.cat([q, q + width, q + 2 * width])


def _replace_(module: nn.Module, name: str, value: Tensor) -> None:
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(value.contiguous(), requires_grad=old.requires_grad))


@torch.no_grad()
def _slice_(module: nn.Module, idx: Tensor, side: str, zero: bool) -> None:
    """Keep (or, with ``zero``, zero the complement of) output (``side="out"``) or input features ``idx``."""
    conv = is_conv1d(module)
    dim = (1 if conv else 0) if side == "out" else (0 if conv else 1)
    idx = idx.to(module.weight.device)
    if zero:
        drop = torch.ones(module.weight.shape[dim], dtype=torch.bool, device=idx.device)
        drop[idx] = False
        module.weight.index_fill_(dim, drop.nonzero().flatten(), 0.0)
        if side == "out" and module.bias is not None:
            module.bias[drop] = 0.0
        return
    _replace_(module, "weight", module.weight.index_select(dim, idx))
    if side == "out" and module.bias is not None:
        _replace_(module, "bias", module.bias[idx])
    n = len(idx)
    if conv:
        module.nf, module.nx = (n, module.nx) if side == "out" else (module.nf, n)
    else:
        module.out_features, module.in_features = (n, module.in_features) if side == "out" else (module.out_features, n)


def _apply_neurons(model: nn.Module, masks: Sequence[Tensor], zero: bool) -> None:
    for lay, mask in zip(check_neuron_masks(model, masks, uniform=not zero), masks, strict=True):
        idx = mask.nonzero().flatten()
        for name in lay.ffn_in:
            _slice_(model.get_submodule(name), idx, "out", zero)
        _slice_(model.get_submodule(lay.ffn_out), idx, "in", zero)


def _apply_heads(model: nn.Module, masks: Sequence[Tensor], zero: bool) -> None:
    for lay, mask in zip(check_head_masks(model, masks, uniform=not zero), masks, strict=True):
        for name, role in lay.attn_in:
            _slice_(model.get_submodule(name), _attn_out_index(lay, role, mask), "out", zero)
        _slice_(model.get_submodule(lay.attn_out), _feature_index(mask, lay.head_dim), "in", zero)


def mask_neurons_(model: nn.Module, masks: Sequence[Tensor]) -> None:
    """Zero the weights (and biases) of removed feed-forward neurons in place; shapes stay the same.

    Raises:
        ValueError: see :func:`check_neuron_masks`.
    """
    _apply_neurons(model, masks, zero=True)


def mask_heads_(model: nn.Module, masks: Sequence[Tensor]) -> None:
    """Zero the query/key/value weights and output-projection inputs of removed heads in place.

    Key/value heads are zeroed only when their whole query group is removed.

    Raises:
        ValueError: see :func:`check_head_masks`.
    """
    _apply_heads(model, masks, zero=True)


def _config_updates(
    model: nn.Module, neuron_masks: Sequence[Tensor] | None, head_masks: Sequence[Tensor] | None
) -> dict[str, int]:
    """Validate a physical shrink before anything changes; return the config fields it will set.

    Raises:
        ValueError: for invalid masks, heads removed from GPT-2/BERT, a head count the config cannot hold, or a
            config that ``transformers`` would refuse to save.
    """
    family = model_family(model)
    updates: dict[str, int] = {}
    if head_masks is not None:
        layouts = check_head_masks(model, head_masks, uniform=True)
        if not all(bool(m.all()) for m in head_masks):
            if family != "llama":
                raise ValueError(
                    f"physically removing attention heads is not supported for {family}: transformers derives its "
                    f"head size as hidden_size // num_attention_heads, so a model with fewer heads would not reload "
                    f"with from_pretrained. Use mask_heads_ to zero {family} heads, or shrink only neurons."
                )
            lay = layouts[0]
            group = lay.n_heads // lay.n_kv_heads
            kept = int(head_masks[0].sum())
            hidden = int(model.config.hidden_size)
            if hidden % kept:
                allowed = [k for k in range(group, lay.n_heads + 1, group) if hidden % k == 0]
                raise ValueError(
                    f"the head masks keep {kept} of {lay.n_heads} attention heads per layer, but hidden_size "
                    f"{hidden} is not a multiple of {kept}: LlamaConfig requires hidden_size % num_attention_heads "
                    f"== 0, so save_pretrained would refuse the shrunk model. Keep one of {allowed} heads per layer "
                    f"(whole key/value groups of {group}), or zero the heads with mask_heads_ instead."
                )
            updates.update(head_dim=lay.head_dim, num_attention_heads=kept, num_key_value_heads=kept // group)
    if neuron_masks is not None:
        check_neuron_masks(model, neuron_masks, uniform=True)
        updates["n_inner" if family == "gpt2" else "intermediate_size"] = int(neuron_masks[0].sum())
    trial = copy.deepcopy(model.config)
    for name, value in updates.items():
        setattr(trial, name, value)
    validate = getattr(trial, "validate", None)
    if updates and callable(validate):
        try:
            validate()
        except Exception as err:  # transformers' own config checks, e.g. on a newer version
            raise ValueError(
                f"the shrunk model's config {updates} would be refused by {type(trial).__name__}: {err} "
                f"Choose masks that keep sizes the config accepts."
            ) from err
    return updates


def shrink_neurons_(model: nn.Module, masks: Sequence[Tensor]) -> None:
    """Physically remove feed-forward neurons and set ``n_inner`` / ``intermediate_size`` in the config.

    Parameters are replaced by new, smaller ones: build the optimizer after shrinking.

    Raises:
        ValueError: see :func:`check_neuron_masks` (with ``uniform=True``).
    """
    family = model_family(model)
    updates = _config_updates(model, masks, None)
    _apply_neurons(model, masks, zero=False)
    for name, value in updates.items():
        setattr(model.config, name, value)
    kept = int(masks[0].sum())
    if family == "llama":  # LlamaMLP keeps a copy of the size
        for lay in block_layouts(model):
            model.get_submodule(f"{lay.prefix}.mlp").intermediate_size = kept


def shrink_heads_(model: nn.Module, masks: Sequence[Tensor]) -> None:
    """Physically remove attention heads (Llama only) and set the head counts in the config.

    Raises:
        ValueError: for GPT-2 and BERT when a head would be removed (their configs cannot express fewer heads of
            the same size; use :func:`mask_heads_`), when the kept head count does not divide ``hidden_size``
            (``LlamaConfig`` refuses it), and see :func:`check_head_masks` (with ``uniform=True``). Nothing is
            changed when it raises.
    """
    updates = _config_updates(model, None, masks)  # head_dim set explicitly, so the head size survives the counts
    if not updates:
        return
    _apply_heads(model, masks, zero=False)
    for name, value in updates.items():
        setattr(model.config, name, value)


def shrink_(
    model: nn.Module, neuron_masks: Sequence[Tensor] | None = None, head_masks: Sequence[Tensor] | None = None
) -> nn.Module:
    """Physically remove neurons and/or heads (see :func:`shrink_neurons_`, :func:`shrink_heads_`); returns model.

    Everything (masks, family, the new config) is validated before the model is changed.

    Raises:
        ValueError: if the masks are invalid or not expressible in the model's config; the model is unchanged.
    """
    _config_updates(model, neuron_masks, head_masks)
    if head_masks is not None:
        shrink_heads_(model, head_masks)
    if neuron_masks is not None:
        shrink_neurons_(model, neuron_masks)
    return model

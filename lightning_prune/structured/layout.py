"""Where each transformer block of a model keeps its units: [`BlockLayout`][lightning_prune.structured.BlockLayout],
read from the module shapes.

Examples:
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64))
    >>> block_layouts(model)[1].ffn_out
    'transformer.h.1.mlp.c_proj'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_prune._selection import in_features, is_conv1d
from lightning_prune.structured.families import Family, family_of

__all__ = [
    "BlockLayout",
    "block_layouts",
    "blocks_of",
    "ffn_neuron_weights",
    "ffn_output_modules",
    "out_features",
    "stream_layout",
]


@dataclass(frozen=True)
class BlockLayout:
    """Where one transformer block keeps its feed-forward neurons, attention heads and experts (fqns in the model)."""

    index: int  # layer number
    prefix: str  # fqn of the block module, e.g. "transformer.h.0"
    ffn_in: tuple[str, ...]  # modules whose outputs are the neurons (empty in an experts block)
    ffn_out: str  # module whose inputs are the neurons ("" in an experts block)
    attn_in: tuple[tuple[str, str], ...]  # (fqn, role) with role q, k, v or qkv (fused)
    attn_out: str  # attention output projection
    n_neurons: int  # current intermediate size (per expert in an experts block)
    n_heads: int  # current query heads
    n_kv_heads: int  # current key/value heads (== n_heads without GQA)
    head_dim: int  # features per head
    ffn_parts: int = 1  # outputs per neuron of each producer: 2 for a fused [gate | up]
    qkv_layout: str = "blocked"  # fused qkv order: "blocked" (q | k | v) or "grouped" (per key/value head)
    qk_norms: tuple[tuple[str, str], ...] = ()  # (fqn, role q/k) of q/k norms spanning all heads' features
    norms: tuple[str, ...] = ()  # norms on the residual stream
    experts: str = ""  # fused experts module ("" in a dense block)
    expert_in: str = ""  # fqn of the experts' producer parameter (E, parts·I, H)
    expert_out: str = ""  # fqn of the experts' consumer parameter (E, H, I)
    router: str = ""  # router module, weight (E, H)
    n_experts: int = 0  # experts (0 in a dense block)


def out_features(module: nn.Module) -> int:
    """The output size of a Linear or Conv1D layer, read from its weight."""
    return module.weight.shape[1] if is_conv1d(module) else module.weight.shape[0]


def _fqn(prefix: str, path: str) -> str:
    return f"{prefix}.{path}" if prefix else path


def _find(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


def blocks_of(model: nn.Module, family: Family | None = None) -> nn.ModuleList:
    """The ModuleList of ``model``'s transformer blocks.

    Raises:
        ValueError: if the model is not supported or has no such list.
    """
    family = family or family_of(model)
    blocks = _find(model.base_model, family.blocks)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise ValueError(
            f"found no block list {family.blocks!r} (a non-empty nn.ModuleList) under "
            f"{type(model.base_model).__name__} of model_type {model.config.model_type!r}; correct the path in its "
            f"entry of lightning_prune.structured.FAMILY_DESCRIPTIONS."
        )
    return blocks


def _missing(block: nn.Module, paths: list[str]) -> list[str]:
    return [path for path in paths if _find(block, path) is None]


def _head_dim(block: nn.Module, prefix: str, family: Family) -> int:
    owner, _, attr = family.head_dim_attr.rpartition(".")
    value = getattr(_find(block, owner) if owner else block, attr, None)
    if not isinstance(value, int):
        raise ValueError(f"found no head size {family.head_dim_attr!r} (an int) in block {prefix}.")
    return value


def _qkv_layout(config: object, family: Family) -> str:
    return next(layout for flag, layout in family.qkv_layout if not flag or getattr(config, flag, False))


def _attention(block: nn.Module, prefix: str, family: Family) -> dict[str, Any]:
    paths = [path for path, _ in family.attn_in] + [family.attn_out]
    missing = _missing(block, paths)
    if missing:
        raise ValueError(
            f"found no attention projections named {missing} in block {prefix} ({type(block).__name__}, children "
            f"{[n for n, _ in block.named_children()]})."
        )
    hd = _head_dim(block, prefix, family)
    n_heads = in_features(block.get_submodule(family.attn_out)) // hd
    roles = {role: path for path, role in family.attn_in}
    if "qkv" in roles:  # (n_heads + 2·n_kv)·head_dim outputs
        n_kv = (out_features(block.get_submodule(roles["qkv"])) // hd - n_heads) // 2
    else:
        n_kv = out_features(block.get_submodule(roles["k"])) // hd
    qk_norms = []
    for path, role in family.qk_norms:
        norm = _find(block, path)
        if norm is not None and getattr(norm, "weight", None) is not None and norm.weight.numel() != hd:
            qk_norms.append((_fqn(prefix, path), role))  # a per-head norm ((head_dim,)) is unaffected by both axes
    return dict(
        attn_in=tuple((_fqn(prefix, path), role) for path, role in family.attn_in),
        attn_out=_fqn(prefix, family.attn_out),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=hd,
        qk_norms=tuple(qk_norms),
    )


def _ffn(block: nn.Module, prefix: str, family: Family) -> dict[str, Any]:
    dense = [*family.ffn_in, family.ffn_out] if family.ffn_out else []
    if dense and not _missing(block, dense):
        n = out_features(block.get_submodule(family.ffn_in[0])) // family.ffn_parts
        ffn_in = tuple(_fqn(prefix, path) for path in family.ffn_in)
        return dict(ffn_in=ffn_in, ffn_out=_fqn(prefix, family.ffn_out), n_neurons=n, ffn_parts=family.ffn_parts)
    experts = _find(block, family.experts) if family.experts else None
    w_in = getattr(experts, family.expert_in, None)
    w_out = getattr(experts, family.expert_out, None)
    router = _find(block, family.router) if family.router else None
    if isinstance(w_in, Tensor) and isinstance(w_out, Tensor) and router is not None:
        e = _fqn(prefix, family.experts)
        return dict(
            ffn_in=(),
            ffn_out="",
            n_neurons=w_out.shape[2],
            ffn_parts=w_in.shape[1] // w_out.shape[2],
            experts=e,
            expert_in=f"{e}.{family.expert_in}",
            expert_out=f"{e}.{family.expert_out}",
            router=_fqn(prefix, family.router),
            n_experts=w_in.shape[0],
        )
    wanted = f"{dense}" + (f" nor experts {family.experts!r} with router {family.router!r}" if family.experts else "")
    raise ValueError(f"found no feed-forward projections named {wanted} in block {prefix} ({type(block).__name__}).")


def block_layouts(model: nn.Module) -> list[BlockLayout]:
    """One [`BlockLayout`][lightning_prune.structured.BlockLayout] per transformer block, read from the current module
    shapes.

    Raises:
        ValueError: if the model is not supported or a block lacks a module its family description names.
    """
    family = family_of(model)
    names = {id(m): n for n, m in model.named_modules()}
    layouts = []
    for i, block in enumerate(blocks_of(model, family)):
        p = names[id(block)]
        norms = tuple(_fqn(p, path) for path in family.norms if _find(block, path) is not None)
        layouts.append(
            BlockLayout(
                index=i,
                prefix=p,
                norms=norms,
                qkv_layout=_qkv_layout(model.config, family),
                **_attention(block, p, family),
                **_ffn(block, p, family),
            )
        )
    return layouts


def stream_layout(model: nn.Module) -> tuple[list[str], list[str]]:
    """Outside the blocks: ``(fqns of the embeddings and norms on the residual stream, fqns of the projections that
    read it, the output head included)``.

    Raises:
        ValueError: if the model is not supported.
    """
    family = family_of(model)
    names = {id(m): n for n, m in model.named_modules()}
    base = names[id(model.base_model)]
    stream = [_fqn(base, path) for path in family.stream if _find(model.base_model, path) is not None]
    readers = [_fqn(base, path) for path in family.readers if _find(model.base_model, path) is not None]
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return stream, readers + ([names[id(head)]] if isinstance(head, nn.Module) else [])


def ffn_output_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{fqn: module}`` of each block's feed-forward output projection; its input is the neuron activation.

    Raises:
        ValueError: for a mixture-of-experts block, whose fused experts have no per-neuron module.
    """
    layouts = block_layouts(model)
    _dense_only(layouts, "feed-forward output modules")
    return {lay.ffn_out: model.get_submodule(lay.ffn_out) for lay in layouts}


def _dense_only(layouts: list[BlockLayout], what: str) -> None:
    experts = [lay.index for lay in layouts if lay.n_experts]
    if experts:
        raise ValueError(
            f"layers {experts} keep their feed-forward neurons in fused experts (E, ·, ·) parameters, which have no "
            f"{what}; score expert neurons yourself and pass (n_experts, n_neurons) masks to shrink_."
        )


def _in_rows(module: nn.Module, weight: Tensor | None = None) -> Tensor:
    """Weight (or a tensor shaped like it) as ``(out, in)``."""
    weight = module.weight if weight is None else weight
    return weight.t() if is_conv1d(module) else weight


def ffn_neuron_weights(model: nn.Module, values: Mapping[str, Tensor] | None = None) -> list[tuple[Tensor, Tensor]]:
    """Per block, ``(w_in (n, d·k), w_out (n, d))``: each neuron's incoming weights (all producers concatenated,
    a fused [gate | up] counted as two) and outgoing weights, detached, ready for
    `lightning_prune.mutual_information.weight_norm_scores`.

    Args:
        model: a supported ``transformers`` model with dense feed-forward blocks.
        values: ``{fqn of a weight: tensor shaped like it}`` to read instead of the weight (e.g. a running |w|).

    Raises:
        ValueError: for a mixture-of-experts block.
    """
    values = values or {}
    layouts = block_layouts(model)
    _dense_only(layouts, "per-neuron weight matrices")

    def rows(name: str, parts: int = 1) -> list[Tensor]:
        w = _in_rows(model.get_submodule(name), values.get(f"{name}.weight"))  # (parts·n, d)
        return list(w.chunk(parts, dim=0))

    out = []
    for lay in layouts:
        w_in = torch.cat([r for n in lay.ffn_in for r in rows(n, lay.ffn_parts)], dim=1)  # (n, d·k)
        w_out = rows(lay.ffn_out)[0].t()  # (n, d)
        out.append((w_in.detach(), w_out.detach()))
    return out

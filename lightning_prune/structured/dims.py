"""Which dimensions a model's config can shrink, and why not where it cannot.

Examples:
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> sorted(shrinkable(GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=32))))
    ['layers', 'neurons']
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from lightning_prune.structured.config import config_accepts
from lightning_prune.structured.families import family_of
from lightning_prune.structured.layout import block_layouts
from lightning_prune.structured.size import SizeModel
from lightning_prune.structured.units import DIMENSIONS

__all__ = ["check_dims", "shrinkable", "ungraded_blocks", "why_not"]


def ungraded_blocks(model: nn.Module) -> list[int]:
    """The blocks whose units get no gradient in training: frozen blocks with nothing trainable before them (input
    embeddings and every earlier block frozen), so no activation in them requires a gradient. A criterion that reads
    gradients (Taylor) has no statistics there; frozen blocks *after* a trainable parameter are fine (gradients flow
    through frozen weights)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and any(p.requires_grad for p in embeddings.parameters()):
        return []
    out = []
    for lay in block_layouts(model):
        if any(p.requires_grad for p in model.get_submodule(lay.prefix).parameters()):
            break
        out.append(lay.index)
    return out


def why_not(model: nn.Module, size: SizeModel | None = None) -> dict[str, str]:
    """``{dimension: why its units cannot be removed physically}`` for the dimensions ``model`` cannot shrink."""
    family, layouts = family_of(model), block_layouts(model)
    size = size or SizeModel.from_model(model)
    accepts, full = config_accepts(model), size.full
    kind = model.config.model_type
    out = {}
    if any(lay.n_experts for lay in layouts):
        out["neurons"] = (
            "its feed-forward neurons sit in fused experts (E, ·, ·) parameters without a module to observe them; "
            "remove whole 'experts' instead"
        )
    derived = (
        f"{kind}'s attention derives head_dim = hidden_size // num_attention_heads, so a smaller model would not reload"
    )
    if not family.head_dim_key:
        out["heads"] = derived
        out["hidden"] = derived
    else:
        if full.groups < 2:
            out["heads"] = f"it has {full.groups} key/value head group per block; removing it would leave no attention"
        elif not any(accepts(replace(full, groups=g)) for g in range(1, full.groups)):
            out["heads"] = f"its config accepts no smaller head count with hidden_size {full.hidden}"
        if not any(accepts(replace(full, hidden=h)) for h in range(1, full.hidden)):
            out["hidden"] = f"its config accepts no smaller hidden_size with {full.groups * size.group} heads"
        elif not any(a.dim == "hidden" for t in size.params_terms for a in t.axes):
            out["hidden"] = f"the description of {kind} does not place every parameter of the hidden size"
    flags = [f for f in family.depth_flags if getattr(model.config, f, False)]
    if flags:
        out["layers"] = f"with {flags} set a block's output depends on its index"
    elif len(layouts) < 2:
        out["layers"] = "it has a single block"
    if not any(lay.n_experts for lay in layouts):
        out["experts"] = "it has no mixture-of-experts blocks"
    elif full.experts < 2 or not family.experts_key:
        out["experts"] = "its experts blocks have a single expert or its config no expert count"
    return out


def shrinkable(model: nn.Module, size: SizeModel | None = None) -> list[str]:
    """The dimensions whose units ``model``'s config can lose, in [`DIMENSIONS`][lightning_prune.structured.DIMENSIONS]
    order."""
    blocked = why_not(model, size)
    return [d for d in DIMENSIONS if d not in blocked]


def check_dims(model: nn.Module, dims: list[str] | tuple[str, ...], size: SizeModel | None = None) -> None:
    """Refuse dimensions ``model`` cannot shrink, naming why and which it can.

    Raises:
        ValueError: naming each refused dimension, the reason, and the dimensions to choose from.
    """
    blocked = why_not(model, size)
    bad = [d for d in dims if d in blocked]
    if bad:
        reasons = "; ".join(f"{d}: {blocked[d]}" for d in bad)
        allowed = [d for d in DIMENSIONS if d not in blocked]
        raise ValueError(
            f"cannot remove {bad} of this {model.config.model_type} model physically ({reasons}). Choose dims from "
            f"{allowed}, or leave dims=None for all of them."
        )

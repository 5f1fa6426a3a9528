"""Model families for structured pruning, described as data: where each family keeps its blocks and units.

A [`Family`][lightning_prune.structured.Family] names, relative to a block, the attention projections (separate
``q``/``k``/``v`` or one fused ``qkv`` with its feature order), the attention output projection, the feed-forward
producers and consumer (or the fused experts and router of a mixture-of-experts block), the norms on the residual
stream, and the config fields that hold each size.
[`FAMILY_DESCRIPTIONS`][lightning_prune.structured.FAMILY_DESCRIPTIONS] holds one per ``model_type``; describing another
family is adding an entry. A model of another type whose blocks have Llama's module names
(``model.layers[i].self_attn.{q,k,v,o}_proj`` and ``mlp.{gate,up,down}_proj`` or ``mlp.experts`` + ``mlp.gate``) is
recognised by its structure and needs no entry.

Examples:
    >>> FAMILY_DESCRIPTIONS["phi3"].ffn_in
    ('mlp.gate_up_proj',)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from torch import nn

__all__ = [
    "FAMILIES",
    "FAMILY_DESCRIPTIONS",
    "LLAMA_LIKE",
    "Family",
    "family_of",
    "is_supported",
    "model_family",
]


@dataclass(frozen=True)
class Family:
    """Where one ``transformers`` model family keeps its blocks, units and their sizes.

    Paths inside a block are relative to the block; ``blocks`` and ``stream`` are relative to ``model.base_model``.
    Optional modules (norms, q/k norms, stream entries) are used where present.
    """

    blocks: str  # ModuleList of the transformer blocks, e.g. "layers", "h", "encoder.layer"
    attn_in: tuple[tuple[str, str], ...]  # (path, role) of projections reading the block input: q, k, v or qkv
    attn_out: str  # attention output projection: its inputs are the heads
    head_dim_attr: str  # attribute holding the head size, e.g. "self_attn.head_dim"
    ffn_in: tuple[str, ...] = ()  # dense feed-forward producers: their outputs are the neurons
    ffn_out: str = ""  # dense feed-forward consumer: its inputs are the neurons
    ffn_parts: int = 1  # outputs per neuron of each producer: 2 when gate and up are fused as [gate | up]
    # order of a fused qkv projection's outputs: the first rule whose config flag is true ("" always applies);
    # "blocked": all queries | all keys | all values; "grouped": per key/value head its queries, key, value
    qkv_layout: tuple[tuple[str, str], ...] = (("", "blocked"),)
    qk_norms: tuple[tuple[str, str], ...] = ()  # (path, role q/k) of q/k norms: per head, or over all heads
    norms: tuple[str, ...] = ()  # norms on the residual stream inside a block
    stream: tuple[str, ...] = ()  # embeddings and norms on the residual stream outside the blocks
    readers: tuple[str, ...] = ()  # projections outside the blocks that read the stream (e.g. BERT's pooler)
    experts: str = ""  # fused experts module of a mixture-of-experts block ("" for a dense family)
    expert_in: str = "gate_up_proj"  # experts' producer parameter (E, parts·I, H)
    expert_out: str = "down_proj"  # experts' consumer parameter (E, H, I)
    router: str = ""  # router module, weight (E, H)
    ffn_key: str = "intermediate_size"  # config field of the dense feed-forward width
    expert_ffn_key: str = "intermediate_size"  # config field of each expert's width
    kv_key: str = ""  # config field of the key/value head count ("" when it equals the head count)
    head_dim_key: str = ""  # config field the attention reads its head size from ("": hidden_size // heads)
    experts_key: str = "num_local_experts"  # config field of the expert count
    top_k_key: str = "num_experts_per_tok"  # config field of the experts used per token
    per_layer: tuple[str, ...] = ()  # config lists with one entry per layer
    sparse_step_key: str = ""  # config field: every step-th layer has experts
    dense_layers_key: str = ""  # config list of the layers without experts
    depth_flags: tuple[str, ...] = ()  # config flags that make a block's output depend on its index
    scaled_embedding: bool = False  # the input embedding is scaled by sqrt(hidden_size)


LLAMA_LIKE = Family(
    blocks="layers",
    attn_in=(("self_attn.q_proj", "q"), ("self_attn.k_proj", "k"), ("self_attn.v_proj", "v")),
    attn_out="self_attn.o_proj",
    head_dim_attr="self_attn.head_dim",
    ffn_in=("mlp.gate_proj", "mlp.up_proj"),
    ffn_out="mlp.down_proj",
    qk_norms=(("self_attn.q_norm", "q"), ("self_attn.k_norm", "k")),
    norms=("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"),
    stream=("embed_tokens", "norm"),
    kv_key="num_key_value_heads",
    head_dim_key="head_dim",
    per_layer=("layer_types", "no_rope_layers"),
)
_MOE = replace(LLAMA_LIKE, experts="mlp.experts", router="mlp.gate")
_BERT = Family(
    blocks="encoder.layer",
    attn_in=(("attention.self.query", "q"), ("attention.self.key", "k"), ("attention.self.value", "v")),
    attn_out="attention.output.dense",
    head_dim_attr="attention.self.attention_head_size",
    ffn_in=("intermediate.dense",),
    ffn_out="output.dense",
    norms=("attention.output.LayerNorm", "output.LayerNorm"),
    stream=(
        "embeddings.word_embeddings",
        "embeddings.position_embeddings",
        "embeddings.token_type_embeddings",
        "embeddings.LayerNorm",
    ),
    readers=("pooler.dense",),
)
_GEMMA = replace(LLAMA_LIKE, scaled_embedding=True)

FAMILY_DESCRIPTIONS: dict[str, Family] = {
    "gpt2": Family(
        blocks="h",
        attn_in=(("attn.c_attn", "qkv"),),
        attn_out="attn.c_proj",
        head_dim_attr="attn.head_dim",
        ffn_in=("mlp.c_fc",),
        ffn_out="mlp.c_proj",
        norms=("ln_1", "ln_2"),
        stream=("wte", "wpe", "ln_f"),
        ffn_key="n_inner",
        depth_flags=("scale_attn_by_inverse_layer_idx",),
    ),
    "llama": LLAMA_LIKE,
    "mistral": LLAMA_LIKE,
    "qwen2": LLAMA_LIKE,
    "qwen3": LLAMA_LIKE,
    "gemma": _GEMMA,
    "gemma2": _GEMMA,
    "gemma3_text": _GEMMA,
    "olmo2": LLAMA_LIKE,
    "smollm3": LLAMA_LIKE,
    "granite": LLAMA_LIKE,
    "phi3": replace(LLAMA_LIKE, attn_in=(("self_attn.qkv_proj", "qkv"),), ffn_in=("mlp.gate_up_proj",), ffn_parts=2),
    "starcoder2": replace(LLAMA_LIKE, ffn_in=("mlp.c_fc",), ffn_out="mlp.c_proj"),
    "stablelm": replace(LLAMA_LIKE, head_dim_key=""),  # its attention derives head_dim = hidden_size // heads
    "gpt_neox": Family(
        blocks="layers",
        attn_in=(("attention.query_key_value", "qkv"),),
        qkv_layout=(("", "grouped"),),
        attn_out="attention.dense",
        head_dim_attr="attention.head_size",
        ffn_in=("mlp.dense_h_to_4h",),
        ffn_out="mlp.dense_4h_to_h",
        norms=("input_layernorm", "post_attention_layernorm"),
        stream=("embed_in", "final_layer_norm"),
    ),
    "opt": Family(
        blocks="decoder.layers",
        attn_in=(("self_attn.q_proj", "q"), ("self_attn.k_proj", "k"), ("self_attn.v_proj", "v")),
        attn_out="self_attn.out_proj",
        head_dim_attr="self_attn.head_dim",
        ffn_in=("fc1",),
        ffn_out="fc2",
        norms=("self_attn_layer_norm", "final_layer_norm"),
        stream=("decoder.embed_tokens", "decoder.embed_positions", "decoder.final_layer_norm"),
        ffn_key="ffn_dim",
    ),
    "falcon": Family(
        blocks="h",
        attn_in=(("self_attention.query_key_value", "qkv"),),
        qkv_layout=(("new_decoder_architecture", "grouped"), ("multi_query", "blocked"), ("", "grouped")),
        attn_out="self_attention.dense",
        head_dim_attr="self_attention.head_dim",
        ffn_in=("mlp.dense_h_to_4h",),
        ffn_out="mlp.dense_4h_to_h",
        norms=("input_layernorm", "post_attention_layernorm", "ln_attn", "ln_mlp"),
        stream=("word_embeddings", "ln_f"),
        ffn_key="ffn_hidden_size",
        kv_key="num_kv_heads",
    ),
    "gptj": Family(
        blocks="h",
        attn_in=(("attn.q_proj", "q"), ("attn.k_proj", "k"), ("attn.v_proj", "v")),
        attn_out="attn.out_proj",
        head_dim_attr="attn.head_dim",
        ffn_in=("mlp.fc_in",),
        ffn_out="mlp.fc_out",
        norms=("ln_1",),
        stream=("wte", "ln_f"),
        ffn_key="n_inner",
    ),
    "bert": _BERT,
    "roberta": _BERT,
    "mixtral": _MOE,
    "qwen3_moe": replace(
        _MOE,
        expert_ffn_key="moe_intermediate_size",
        experts_key="num_experts",
        sparse_step_key="decoder_sparse_step",
        dense_layers_key="mlp_only_layers",
    ),
}
FAMILIES = tuple(FAMILY_DESCRIPTIONS)


def _model_type(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def _llama_like(model: nn.Module) -> Family:
    """[`LLAMA_LIKE`][lightning_prune.structured.LLAMA_LIKE] adapted to ``model``'s config, or a ``ValueError`` naming
    what is missing.

    The head size counts as expressible when the config states ``head_dim``, as Llama's does (the shrink then
    checks the class built from the new config against the shrunk shapes).
    """
    kind = _model_type(model)
    base = getattr(model, "base_model", None)
    layers = getattr(base, "layers", None)
    if kind is None or not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ValueError(
            f"structured pruning supports model_type in {FAMILIES} and Llama-like models, got "
            f"{type(model).__name__} with model_type {kind!r}: found no block list `layers` (a non-empty "
            f"nn.ModuleList) under a base model with a config. Describe the family in "
            f"lightning_prune.structured.FAMILY_DESCRIPTIONS to add it."
        )
    block = base.layers[0]
    attn = [path for path, _ in LLAMA_LIKE.attn_in] + [LLAMA_LIKE.attn_out]
    missing = [path for path in attn if not _has(block, path)]
    if missing:
        raise ValueError(
            f"model_type {kind!r} is not described and not Llama-like: found no attention projections named "
            f"{missing} in block 0 ({type(block).__name__}, children {[n for n, _ in block.named_children()]}). "
            f"Describe the family in lightning_prune.structured.FAMILY_DESCRIPTIONS (supported: {FAMILIES})."
        )
    ffn = [*LLAMA_LIKE.ffn_in, LLAMA_LIKE.ffn_out]
    if not all(_has(block, path) for path in ffn) and not _has(block, _MOE.experts):
        raise ValueError(
            f"model_type {kind!r} is not described and not Llama-like: found no feed-forward projections named "
            f"{ffn} nor experts {_MOE.experts!r} in block 0 ({type(block).__name__}). Describe the family in "
            f"lightning_prune.structured.FAMILY_DESCRIPTIONS (supported: {FAMILIES})."
        )
    config = model.config
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    scale = getattr(embedding, "scalar_embed_scale", None)  # Gemma-like: sqrt(hidden_size)
    width = getattr(config, "hidden_size", None)
    return replace(
        _MOE,
        scaled_embedding=isinstance(scale, float) and isinstance(width, int) and math.isclose(scale, width**0.5),
        head_dim_key="head_dim" if getattr(config, "head_dim", None) else "",
        kv_key="num_key_value_heads" if getattr(config, "num_key_value_heads", None) else "",
        experts_key=next((k for k in ("num_local_experts", "num_experts") if hasattr(config, k)), ""),
        expert_ffn_key="moe_intermediate_size" if hasattr(config, "moe_intermediate_size") else "intermediate_size",
    )


def family_of(model: nn.Module) -> Family:
    """The [`Family`][lightning_prune.structured.Family] of ``model``: its entry in
    [`FAMILY_DESCRIPTIONS`][lightning_prune.structured.FAMILY_DESCRIPTIONS], else recognised as Llama-like.

    Raises:
        ValueError: for a model that is neither described nor Llama-like, naming what is missing.
    """
    kind = _model_type(model)
    if kind in FAMILY_DESCRIPTIONS and hasattr(model, "base_model"):
        return FAMILY_DESCRIPTIONS[kind]
    return _llama_like(model)


def model_family(model: nn.Module) -> str:
    """``model.config.model_type`` of a model that structured pruning supports (see
    [`family_of`][lightning_prune.structured.family_of]).

    Raises:
        ValueError: for a model that is neither described nor Llama-like.
    """
    family_of(model)
    return _model_type(model)


def is_supported(model: nn.Module) -> bool:
    """Whether [`family_of`][lightning_prune.structured.family_of] knows where ``model`` keeps its blocks (a described
    or Llama-like model)."""
    try:
        family_of(model)
    except ValueError:
        return False
    return True

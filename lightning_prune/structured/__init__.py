"""Structured pruning of ``transformers`` models across families: unit masks, zeroing, and a physical shrink that
plain ``from_pretrained`` reloads.

Families are data ([`Family`][lightning_prune.structured.Family]): where the blocks, feed-forward producers/consumer (or
fused experts and router), attention projections (separate or fused q/k/v), GQA groups, head size and norms are. A model
whose blocks have Llama's module names is recognised by its structure. Five dimensions, each with a mask (True = keep,
[`neuron_masks_from_scores`][lightning_prune.structured.neuron_masks_from_scores] and the like), the entries its removed
units own (``*_weight_masks``), zeroing (``mask_*_``) and a shrink:

| dimension | masks | shrink needs |
| --- | --- | --- |
| neurons | per block ``(n,)``, ``(E, n)`` experts | the same count in every layer (one width in the config) |
| heads | per block ``(n_heads,)`` | whole key/value groups, a config that states ``head_dim`` |
| layers | one ``(n_layers,)`` | blocks that do not depend on their index |
| hidden | one ``(hidden_size,)`` | a config that states ``head_dim`` |
| experts | per experts block ``(E,)`` | the same count in every experts block |

Heads and hidden features are shrunk only where the attention reads ``head_dim`` from the config (Llama, Mistral,
Qwen2/3, Gemma 1-3, OLMo 2, SmolLM3, Granite, Phi-3, StarCoder2, Mixtral, Qwen3-MoE); GPT-2, GPT-J, GPT-NeoX,
OPT, Falcon, StableLM, BERT and RoBERTa derive ``head_dim = hidden_size // num_attention_heads``, so there they can
be masked but not removed.

Examples:
    >>> import torch
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64))
    >>> masks = neuron_masks_from_scores([torch.rand(128) for _ in range(2)], sparsity=0.5)
    >>> shrink_(model, neuron_masks=masks).config.n_inner
    64
"""

from lightning_prune.structured.allocate import allocate
from lightning_prune.structured.config import config_updates
from lightning_prune.structured.cuts import (
    Cut,
    expert_weight_masks,
    head_weight_masks,
    hidden_weight_masks,
    layer_weight_masks,
    mask_experts_,
    mask_heads_,
    mask_hidden_,
    mask_layers_,
    mask_neurons_,
    neuron_weight_masks,
)
from lightning_prune.structured.dims import shrinkable
from lightning_prune.structured.exact import inexact_dims
from lightning_prune.structured.families import (
    FAMILIES,
    FAMILY_DESCRIPTIONS,
    LLAMA_LIKE,
    Family,
    family_of,
    is_supported,
    model_family,
)
from lightning_prune.structured.layout import BlockLayout, block_layouts, ffn_neuron_weights, ffn_output_modules
from lightning_prune.structured.masks import (
    check_expert_masks,
    check_head_masks,
    check_hidden_mask,
    check_layer_mask,
    check_neuron_masks,
    expert_masks_from_scores,
    head_masks_from_scores,
    hidden_mask_from_scores,
    hidden_size,
    layer_mask_from_scores,
    neuron_masks_from_scores,
)
from lightning_prune.structured.shrink import (
    shrink_,
    shrink_experts_,
    shrink_heads_,
    shrink_hidden_,
    shrink_layers_,
    shrink_neurons_,
)
from lightning_prune.structured.size import Counts, SizeModel
from lightning_prune.structured.target import SizeTarget
from lightning_prune.structured.units import DIMENSIONS, Units, combine_units, match_masked_norms_, shrink_units_

__all__ = [
    "DIMENSIONS",
    "FAMILIES",
    "FAMILY_DESCRIPTIONS",
    "LLAMA_LIKE",
    "BlockLayout",
    "Counts",
    "Cut",
    "Family",
    "SizeModel",
    "SizeTarget",
    "Units",
    "allocate",
    "combine_units",
    "inexact_dims",
    "shrinkable",
    "block_layouts",
    "check_expert_masks",
    "check_head_masks",
    "check_hidden_mask",
    "check_layer_mask",
    "check_neuron_masks",
    "config_updates",
    "expert_masks_from_scores",
    "expert_weight_masks",
    "family_of",
    "ffn_neuron_weights",
    "ffn_output_modules",
    "head_masks_from_scores",
    "head_weight_masks",
    "hidden_mask_from_scores",
    "hidden_size",
    "hidden_weight_masks",
    "is_supported",
    "layer_mask_from_scores",
    "layer_weight_masks",
    "mask_experts_",
    "mask_heads_",
    "mask_hidden_",
    "mask_layers_",
    "mask_neurons_",
    "match_masked_norms_",
    "model_family",
    "neuron_masks_from_scores",
    "neuron_weight_masks",
    "shrink_",
    "shrink_experts_",
    "shrink_heads_",
    "shrink_hidden_",
    "shrink_layers_",
    "shrink_neurons_",
    "shrink_units_",
]

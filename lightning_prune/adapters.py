"""Adapters (PEFT: LoRA and its kin) on a pruned model.

Pruning leaves adapters alone: the default selection (`_selection`) takes the frozen base weights
of a model with adapters and never an adapter's own parameters, so a ``lora_B`` that starts at zero is not pruned
away. A criterion that judges weights by their gradients refuses the frozen base weights at setup, since they have
none (``magnitude``, ``running_magnitude`` or ``wanda`` judge them).

Merging (``merge_and_unload``) adds each adapter's low-rank update to its base weight, which would fill the pruned
entries again. [`merge_adapters`][lightning_prune.merge_adapters] merges and then writes the masks back, so the merged
model is exactly as sparse as the pruned base weights were; the adapters' update at pruned entries is dropped (the
unmerged model computes that part, the merged one does not).

Examples:
    >>> merged, masks = merge_adapters(peft_model, masks)  # doctest: +SKIP
    >>> merged.save_pretrained("pruned")  # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from lightning_prune.export import make_permanent_

__all__ = ["is_peft_model", "merge_adapters", "merged_name"]


def is_peft_model(model: nn.Module) -> bool:
    """Whether ``model`` is a PEFT model whose adapters can be merged (``merge_and_unload``)."""
    return callable(getattr(model, "merge_and_unload", None)) and hasattr(model, "peft_config")


def merged_name(fqn: str) -> str:
    """The name a base weight of a PEFT model has once its adapters are merged:
    ``base_model.model.model.layers.0.q_proj.base_layer.weight`` → ``model.layers.0.q_proj.weight``, and a trained
    copy of ``modules_to_save`` (``….down_proj.modules_to_save.default.weight``) → ``….down_proj.weight``."""
    name = fqn.removeprefix("base_model.model.").replace(".base_layer.", ".")
    return re.sub(r"\.modules_to_save\.[^.]+\.", ".", name)


@torch.no_grad()
def merge_adapters(model: nn.Module, masks: Mapping[str, Tensor] | None = None) -> tuple[nn.Module, dict[str, Tensor]]:
    """Merge the adapters into the base weights (``merge_and_unload``, in place) and make the masks permanent again.

    Args:
        model: a PEFT model.
        masks: ``{fqn in model: bool keep}`` of pruned base weights (adapter entries are ignored).

    Returns:
        The merged model (a plain ``transformers`` model) and the masks by its names.

    Raises:
        TypeError: if ``model`` is not a PEFT model.
    """
    if not is_peft_model(model):
        raise TypeError(f"{type(model).__name__} has no adapters to merge (expected a PEFT model).")
    merged = model.merge_and_unload()
    names = dict(merged.named_parameters())
    renamed = {merged_name(f): m for f, m in (masks or {}).items() if merged_name(f) in names}
    make_permanent_(merged, renamed)
    return merged, renamed

"""Ship a pruned model: masks made permanent, saved with ``save_pretrained`` (safetensors).

Plain ``transformers`` reloads the result with the same outputs (``AutoModelForCausalLM`` for a causal LM, the
class named in the saved config or ``AutoModel`` for an encoder such as ``BertModel``); zeros are stored as zeros
(safetensors is dense), so the saving on disk comes from compression or from structured removal
([`lightning_prune.structured`][lightning_prune.structured]), and
[`export_pretrained`][lightning_prune.export_pretrained] reports both the non-zero count and the bytes on disk. Given
the tokenizer the model was trained with, it is saved beside the model as a ``transformers`` tokenizer that encodes
exactly as training did (`pretrained_tokenizer`), so ``transformers.pipeline("text-generation", model=directory)`` runs
on the result.

Examples:
    >>> report = export_pretrained(model, "out/pruned", masks, tokenizer=datamodule.tokenizer)  # doctest: +SKIP
    >>> report["nonzero"], report["bytes_on_disk"]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_prune.masks import apply_masks_
from lightning_prune.tokenizers import build_tokenizer, pretrained_tokenizer

__all__ = ["bare_fqn", "export_pretrained", "make_permanent_", "nonzero_report"]


def bare_fqn(fqn: str) -> str:
    """``model.transformer.h.0...`` (fqn inside a CausalLM) → ``transformer.h.0...`` (inside the bare model)."""
    return fqn[len("model.") :] if fqn.startswith("model.") else fqn


@torch.no_grad()
def make_permanent_(model: nn.Module, masks: Mapping[str, Tensor]) -> None:
    """Write the masks into the weights (pruned entries exactly zero); accepts fqns with a ``model.`` prefix.

    Raises:
        ValueError: if a mask names a parameter the model lacks or has another shape.
    """
    params = dict(model.named_parameters())
    pruned = {}
    for fqn, mask in masks.items():
        name = bare_fqn(fqn) if bare_fqn(fqn) in params else fqn
        if name not in params or params[name].shape != mask.shape:
            raise ValueError(f"mask {fqn!r} {tuple(mask.shape)} does not fit the model's parameters.")
        pruned[name] = ~mask.bool().to(params[name].device)
    apply_masks_(params, pruned)


def nonzero_report(model: nn.Module) -> dict[str, int]:
    """Parameter count and non-zero count over all (deduplicated) parameters."""
    params = list(model.parameters())
    return {"parameters": sum(p.numel() for p in params), "nonzero": sum(int((p != 0).sum()) for p in params)}


def export_pretrained(
    model: nn.Module, directory: str | Path, masks: Mapping[str, Tensor] | None = None, tokenizer: Any = None
) -> dict[str, Any]:
    """Make masks permanent, ``save_pretrained`` with safetensors (and the tokenizer), and report sizes.

    Args:
        model: a ``transformers`` model.
        directory: the target directory (created).
        masks: ``{fqn: bool}`` keep-masks to write into the weights first.
        tokenizer: the tokenizer the model was trained with (a `TextTokenizer`),
            saved as a ``transformers`` tokenizer with the model's context as ``model_max_length``.

    Returns:
        ``{"directory", "parameters", "nonzero", "bytes_on_disk", "tokenizer"}``; ``tokenizer`` is the saved
        tokenizer's class name, or None without one.

    Raises:
        TypeError: if the model has no ``save_pretrained`` (not a ``transformers`` model), or the tokenizer cannot
            be saved as a ``transformers`` tokenizer.
    """
    if not hasattr(model, "save_pretrained"):
        raise TypeError(f"{type(model).__name__} has no save_pretrained: export needs a transformers model.")
    saved = None
    if tokenizer is not None:
        config = getattr(model, "config", None)
        context = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
        saved = pretrained_tokenizer(build_tokenizer(tokenizer, ""), context)
    if masks:
        make_permanent_(model, masks)
    directory = Path(directory)
    model.save_pretrained(directory, safe_serialization=True)
    if saved is not None:
        saved.save_pretrained(directory)
    size = sum(f.stat().st_size for f in directory.glob("*.safetensors"))
    name = type(saved).__name__ if saved is not None else None
    return {"directory": str(directory), **nonzero_report(model), "bytes_on_disk": size, "tokenizer": name}

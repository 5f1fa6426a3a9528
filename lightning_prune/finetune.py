"""``FineTune``: recover a pruned model with its masks frozen, optionally distilling from the dense model.

The masks come from a pruning run's checkpoint (every writer's state in its ``callbacks``: entry masks and units)
or are given directly (``{fqn: bool}``, True keeps). A [`HoldMasks`][lightning_prune.HoldMasks] it adds to the Trainer
(``configure_callbacks``) holds them, exactly as the pruning callbacks hold theirs, and keeps them in its checkpoint
state; they are saved in this module's own checkpoints too.

Distillation (Hinton et al. 2015): loss = (1 − α)·LM + α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) with the
teacher's logits z_t, the student's z_s, weight α = ``distill_weight`` and temperature T.

Lottery-ticket rewinding (Frankle et al. 2019): ``rewind_to`` holds early weights (a state dict or a
checkpoint path); at the start of fine-tuning the surviving weights of the selected parameters are reset to
them, the pruned ones stay zero.

Examples:
    >>> ft = FineTune(model=pruned_model, masks=masks, teacher=dense_model, distill_weight=0.5)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from typing_extensions import override

from lightning_prune.callbacks._record import read_checkpoint
from lightning_prune.callbacks.hold import HoldMasks
from lightning_prune.distill import distillation_loss
from lightning_prune.export import bare_fqn
from lightning_prune.lm import CausalLM
from lightning_prune.masks import apply_masks_

__all__ = ["FineTune", "distillation_loss", "masks_from_checkpoint"]


def masks_from_checkpoint(path: str | Path, state_key: str | None = None) -> dict[str, Tensor]:
    """The masks a pruning run stored in a Lightning checkpoint.

    Args:
        path: the checkpoint file.
        state_key: one callback's ``state_key``; default: the union of every writer's masks in the checkpoint
            (``ScheduledPruning``, ``NeuronPruning``, ``StructuredPruning``, ``HoldMasks``: one format for all), so a
            run with several pruning callbacks gives all its masks.

    Raises:
        KeyError: if the checkpoint holds no such callback state (the message lists what it holds).
    """
    return read_checkpoint(path, state_key).masks


class FineTune(CausalLM):
    """A [`CausalLM`][lightning_prune.lm.CausalLM] whose masks are frozen while it fine-tunes.

    Args:
        masks: ``{fqn: bool mask}`` (fqns of the bare model or of a ``CausalLM`` wrapping it).
        checkpoint: a pruning run's checkpoint: its ``state_dict`` is loaded, every writer's masks are held and their
            removed units published for an export to cut out ([`ExportPretrained`][lightning_prune.ExportPretrained]).
        teacher: the dense model to distil from (kept frozen, in eval mode); ``"copy"`` copies the model as it
            is before the masks are applied (useful when ``model`` is still dense).
        distill_weight: α in [0, 1]: the weight of the distillation term.
        temperature: T > 0 of the softened distributions.
        rewind_to: early weights (a state dict or a Lightning checkpoint path) to reset the survivors to.
        **kwargs: everything [`CausalLM`][lightning_prune.lm.CausalLM] takes (model, config, lr, ...).

    Raises:
        ValueError: if no masks are given, a mask names a parameter the model lacks or has another shape, or
            α or T is out of range.
    """

    def __init__(
        self,
        masks: Mapping[str, Tensor] | None = None,
        checkpoint: str | None = None,
        teacher: nn.Module | str | None = None,
        distill_weight: float = 0.0,
        temperature: float = 2.0,
        rewind_to: Mapping[str, Tensor] | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= distill_weight <= 1.0:
            raise ValueError(f"distill_weight must be in [0, 1], got {distill_weight!r}.")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}.")
        self.units: list[dict[str, Any]] = []  # whole units the checkpoint's writers removed (for an export)
        if checkpoint is not None:
            self._load_pruned(checkpoint)
            record = read_checkpoint(checkpoint)
            masks = record.masks if masks is None else masks
            self.units = record.units
        if masks is None:
            raise ValueError("FineTune needs masks: pass masks={fqn: bool tensor} or checkpoint='pruned.ckpt'.")
        teacher = copy.deepcopy(self.model) if isinstance(teacher, str) and teacher == "copy" else teacher
        if isinstance(teacher, nn.Module):
            teacher.requires_grad_(False).eval()
        object.__setattr__(self, "teacher", teacher)  # not a submodule: not optimized, saved or pruned
        self.distill_weight, self.temperature = distill_weight, temperature
        self.set_masks(masks)
        if rewind_to is not None:
            self.rewind_(rewind_to)

    def set_masks(self, masks: Mapping[str, Tensor]) -> None:
        """Check the masks against the model, store them and zero the pruned weights."""
        params = dict(self.model.named_parameters())
        bad = []
        self.masks: dict[str, Tensor] = {}
        for fqn, mask in masks.items():
            name = bare_fqn(fqn)
            if name not in params or params[name].shape != mask.shape:
                got = tuple(params[name].shape) if name in params else "missing"
                bad.append(f"{fqn}: mask {tuple(mask.shape)} vs model {got}")
            else:
                self.masks[name] = mask.bool().to(params[name].device)
        if bad:
            raise ValueError(f"the masks do not fit the model: {bad[:5]}.")
        apply_masks_(params, {f: ~m for f, m in self.masks.items()})

    def masked_parameters(self) -> dict[str, nn.Parameter]:
        """``{fqn: parameter}`` of the masked weights, by their names in the bare model."""
        params = dict(self.model.named_parameters())
        return {f: params[f] for f in self.masks}

    def _load_pruned(self, checkpoint: str) -> None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
        state = {bare_fqn(k): v for k, v in state.items() if k.startswith("model.")}
        self.model.load_state_dict(state)

    @torch.no_grad()
    def rewind_(self, early: Mapping[str, Tensor] | str) -> None:
        """Reset the surviving entries of the masked weights to ``early`` weights; pruned entries stay zero."""
        if isinstance(early, (str, Path)):
            early = torch.load(early, map_location="cpu", weights_only=False)["state_dict"]
        early = {bare_fqn(k): v for k, v in early.items()}
        params = dict(self.model.named_parameters())
        for f in self.masks:
            p = params[f]
            if f not in early or early[f].shape != p.shape:
                raise ValueError(f"rewind weights lack {f!r} or have another shape.")
            p.copy_(early[f].to(p))
        apply_masks_(params, {f: ~m for f, m in self.masks.items()})

    @override
    def configure_callbacks(self) -> list[Callback]:
        """Its masks are held by a [`HoldMasks`][lightning_prune.HoldMasks] (as any LightningModule's can be)."""
        return [HoldMasks({f"model.{f}": m for f, m in self.masks.items()}, units=self.units, name="FineTune")]

    @override
    def on_fit_start(self) -> None:
        if isinstance(self.teacher, nn.Module):
            self.teacher.to(self.device)

    @override
    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        loss, logits = super().loss(batch)
        if self.teacher is None or self.distill_weight == 0.0:
            return loss, logits
        with torch.no_grad():
            teacher_logits = self.teacher(input_ids=batch["input_ids"]).logits
        kd = distillation_loss(logits, teacher_logits, self.temperature)
        self.log("train/distill", kd)
        return (1 - self.distill_weight) * loss + self.distill_weight * kd, logits

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["masks"] = {f: m.cpu() for f, m in self.masks.items()}

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "masks" in checkpoint:
            self.set_masks(checkpoint["masks"])

"""How the benchmarks train: quiet logging, one set of Trainer defaults, Lightning's ``ModelPruning`` set up to
reach given sparsities at given epochs, and a ``CausalLM`` distilled from a frozen teacher."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelPruning
from torch import Tensor, nn
from typing_extensions import override

from benchmarks.methods import MP_BEST, MP_LTH
from lightning_prune._selection import select_parameters
from lightning_prune.distill import distillation_loss
from lightning_prune.lm import CausalLM

__all__ = [
    "DISTILL_TEMPERATURE",
    "DISTILL_WEIGHT",
    "MP_BEST",
    "MP_LTH",
    "Distilled",
    "model_pruning",
    "epoch_trainer",
    "model_pruning_amount",
    "quiet",
    "seed_all",
    "trainer",
]

DISTILL_WEIGHT, DISTILL_TEMPERATURE = 0.5, 2.0  # loss = (1 - w)·LM + w·T²·KL at temperature T

QUIET_DEFAULTS: dict[str, Any] = dict(
    accelerator="cpu",
    devices=1,
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    num_sanity_val_steps=0,
    limit_val_batches=0,
)


def quiet(all_warnings: bool = False) -> None:
    """Lightning's and transformers' logs at ERROR only; the data-loader and unused-GPU warnings (or, with
    ``all_warnings``, every warning) silenced."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if all_warnings:
        warnings.filterwarnings("ignore")
        return
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*GPU available but not used.*")


def seed_all(value: int) -> None:
    """Seed Python's, NumPy's and torch's generators (Lightning's ``seed_everything``, without its log line); every
    run seeds this way just before it trains, so its data order and random draws depend on ``value`` only."""
    pl.seed_everything(value, verbose=False)


def trainer(**kwargs: Any) -> pl.Trainer:
    """A Trainer on one CPU device without logger, checkpoints, progress bar, summary or validation loop;
    ``kwargs`` override any of these."""
    return pl.Trainer(**{**QUIET_DEFAULTS, **kwargs})


def epoch_trainer(epochs: int, epoch_batches: int, callbacks: list[Callback]) -> pl.Trainer:
    """The Trainer of the quality benchmarks: float32 on the CPU, ``epochs`` epochs of ``epoch_batches`` optimizer
    steps (short epochs: ``ModelPruning`` acts only at epoch ends), clipping at 1.0, no validation loop."""
    return trainer(
        precision="32-true",
        max_epochs=epochs,
        limit_train_batches=epoch_batches,
        gradient_clip_val=1.0,
        callbacks=callbacks,
    )


def model_pruning_amount(points: dict[int, float]) -> Callable[[int], float]:
    """ModelPruning's ``amount(epoch)``: at the end of epoch p−1, the fraction of what remains that takes the
    sparsity from the previous point a to b = points[p], (b − a)/(1 − a); 0 at every other epoch."""
    amounts, before = {}, 0.0
    for p, s in sorted(points.items()):
        amounts[p - 1] = (s - before) / (1.0 - before)
        before = s
    return lambda epoch: amounts.get(epoch, 0.0)


def model_pruning(module: nn.Module, points: dict[int, float], lottery_ticket: bool) -> ModelPruning:
    """``ModelPruning("l1_unstructured", use_global_unstructured=True)`` on the weights ``select_parameters``
    picks, reaching the cumulative sparsity ``points[p]`` at the end of epoch p−1, with or without rewinding."""
    modules = [(m, "weight") for m, _ in select_parameters(module).values()]
    return ModelPruning(
        "l1_unstructured",
        parameters_to_prune=modules,
        amount=model_pruning_amount(points),
        use_global_unstructured=True,
        use_lottery_ticket_hypothesis=lottery_ticket,
        verbose=0,
    )


class Distilled(CausalLM):
    """``CausalLM`` whose loss is mixed with distillation from a frozen teacher (kept outside the module tree)."""

    def __init__(self, teacher: nn.Module, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._teacher = [teacher.eval().requires_grad_(False)]  # a list: not a submodule, not optimized or pruned

    @override
    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        loss, logits = super().loss(batch)
        with torch.no_grad():
            teacher_logits = self._teacher[0](input_ids=batch["input_ids"]).logits
        kd = distillation_loss(logits, teacher_logits, DISTILL_TEMPERATURE)
        return (1 - DISTILL_WEIGHT) * loss + DISTILL_WEIGHT * kd, logits

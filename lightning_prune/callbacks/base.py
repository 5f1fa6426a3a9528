"""What the callbacks share: hook handles that are always removed, and masks held through every step."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from typing_extensions import override

from lightning_prune.masks import apply_masks_, hold_
from lightning_prune.schedules import Schedule

__all__ = ["HoldsMasks", "OwnsHooks", "check_schedule_fits"]


def check_schedule_fits(schedule: Schedule, trainer: pl.Trainer) -> None:
    """A step schedule of a run bounded by epochs must end within the run's steps (known once it has data).

    Raises:
        ValueError: if the schedule's last change lies past the run's last step.
    """
    if schedule.unit == "step" and (trainer.max_steps is None or trainer.max_steps < 0):
        total = trainer.estimated_stepping_batches
        if math.isfinite(total):
            schedule.check_fits(None, int(total))


class OwnsHooks(Callback):
    """Keeps the handles of the hooks it registers in ``self._handles`` and removes them at teardown and on an
    exception, so a failed or finished fit leaves no hook on the model or the optimizer."""

    _handles: list[Any]

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_hooks()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._remove_hooks()


class HoldsMasks(OwnsHooks):
    """Holds the ``self._pruned`` entries of ``self._params`` at exact zero (``self._factors``: the masks as 0/1 in
    each weight's dtype): gradients before every optimizer step, weights after it (a step post-hook), and the
    optimizer's state whenever :meth:`_hold_` is called."""

    _params: dict[str, torch.nn.Parameter]
    _pruned: dict[str, Tensor]
    _factors: dict[str, Tensor]

    def _hold_(self, trainer: pl.Trainer) -> None:
        """Zero the pruned weights and their optimizer state now."""
        hold_(self._params, self._pruned, trainer.optimizers)

    def _hold_every_step(self, trainer: pl.Trainer) -> None:
        """Zero now, and register the post-hook that re-zeroes the weights after each ``optimizer.step``."""
        self._hold_(trainer)
        for optimizer in trainer.optimizers:
            self._handles.append(optimizer.register_step_post_hook(self._rezero))

    def _rezero(self, *_: Any) -> None:
        self.rezero()

    @torch.no_grad()
    def rezero(self) -> None:
        """Set every pruned entry to exact zero (done after each optimizer step)."""
        apply_masks_(self._params, self._pruned, self._factors)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        apply_masks_({f: p.grad for f, p in self._params.items()}, self._pruned, self._factors)

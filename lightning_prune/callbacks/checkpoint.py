"""``TargetCheckpoint``: Lightning's ``ModelCheckpoint`` that saves only once the model is pruned to its targets."""

from __future__ import annotations

from typing import Any

from lightning_prune._compat import ConditionalCheckpoint
from lightning_prune._registry import registry_of

__all__ = ["TargetCheckpoint"]


class TargetCheckpoint(ConditionalCheckpoint):
    """A ``ModelCheckpoint`` (same arguments) that writes nothing until every pruning callback of the model has reached
    its final target (each publishes its progress in the model's `MaskRegistry`):
    with ``monitor="val/loss"`` it keeps the best checkpoints *of the pruned model*, never a dense one from before.
    With ``save_last=True`` Lightning still writes ``last.ckpt`` at the end of training and on an exception, for
    resuming.

    Examples:
        >>> best = TargetCheckpoint(monitor="val/loss", mode="min", save_top_k=1)
        >>> trainer = pl.Trainer(callbacks=[ImportanceTracking(), ScheduledPruning({2: 0.5}, "taylor"), best])
    """

    def hold(self, trainer: Any) -> bool:
        """Skip saving while any writer is short of its final target (or none has started)."""
        registry = registry_of(trainer.lightning_module)
        return not registry.progress or not registry.at_target()

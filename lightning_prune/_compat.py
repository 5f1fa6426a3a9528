"""Every use of a private torch or Lightning API, in one place, each pinned by ``tests/test_compat.py``.

The library reaches past public APIs only where no public one does the job: fused multi-tensor kernels
(``torch._foreach_*``: one launch per list on an accelerator), the local shard of a ``DTensor`` that in-place
changes reach, a tensor's version counter, the loss scale of a GradScaler, the optimizer inside Lightning's
wrapper, the averaged copy a weight-averaging callback keeps, whether a strategy writes a distributed checkpoint,
and when a ``ModelCheckpoint`` skips saving. It imports torch only (Lightning's class is made on first use), so the
pure core can use it. When a torch or Lightning release moves one of them, the pinning test
names it and this file is the one to change.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "average_model",
    "foreach_abs",
    "foreach_abs_",
    "foreach_add_",
    "foreach_copy_",
    "foreach_lerp_",
    "foreach_mul",
    "foreach_mul_",
    "foreach_norm",
    "foreach_sub",
    "inner_optimizer",
    "load_training_data",
    "local_shape_and_offset",
    "local_tensor",
    "loss_scale",
    "saves_distributed_checkpoint",
    "steps_with_amp_scaling",
    "version",
]

# ---- fused multi-tensor kernels (torch._foreach_*) -------------------------------------------------------------


def foreach_mul_(tensors: Sequence[Tensor], others: Sequence[Tensor] | Tensor | float) -> None:
    """``t *= o`` for every pair, in place, as one fused kernel where torch has it."""
    torch._foreach_mul_(list(tensors), others if not isinstance(others, Sequence) else list(others))


def foreach_mul(tensors: Sequence[Tensor], others: Sequence[Tensor] | Tensor | float) -> list[Tensor]:
    """``[t * o]`` for every pair (new tensors)."""
    return list(torch._foreach_mul(list(tensors), others if not isinstance(others, Sequence) else list(others)))


def foreach_abs(tensors: Sequence[Tensor]) -> list[Tensor]:
    """``[|t|]`` (new tensors)."""
    return list(torch._foreach_abs(list(tensors)))


def foreach_abs_(tensors: Sequence[Tensor]) -> None:
    """``t = |t|`` in place."""
    torch._foreach_abs_(list(tensors))


def foreach_sub(tensors: Sequence[Tensor], others: Sequence[Tensor]) -> list[Tensor]:
    """``[t - o]`` (new tensors)."""
    return list(torch._foreach_sub(list(tensors), list(others)))


def foreach_add_(tensors: Sequence[Tensor], others: Sequence[Tensor], alpha: float = 1.0) -> None:
    """``t += alpha · o`` in place."""
    torch._foreach_add_(list(tensors), list(others), alpha=alpha)


def foreach_lerp_(tensors: Sequence[Tensor], ends: Sequence[Tensor], weight: float) -> None:
    """``t += weight · (e - t)`` in place."""
    torch._foreach_lerp_(list(tensors), list(ends), weight)


def foreach_copy_(tensors: Sequence[Tensor], sources: Sequence[Tensor]) -> None:
    """``t[:] = s`` in place."""
    torch._foreach_copy_(list(tensors), list(sources))


def foreach_norm(tensors: Sequence[Tensor], order: float = 2) -> list[Tensor]:
    """The ``order``-norm of every tensor (0-d tensors, no host sync)."""
    return list(torch._foreach_norm(list(tensors), order))


# ---- tensors --------------------------------------------------------------------------------------------------


def local_tensor(t: Tensor) -> Tensor:
    """The local shard of a ``DTensor`` as its storage (``_local_tensor``): in-place changes reach the parameter, where
    ``to_local()`` would detach from autograd's view of it."""
    return t._local_tensor


def local_shape_and_offset(shape: Sequence[int], mesh: Any, placements: Sequence[Any]) -> tuple[Any, Any]:
    """``(local shape, global offset)`` of this process's shard of a tensor of ``shape`` placed on ``mesh``."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    return compute_local_shape_and_global_offset(shape, mesh, placements)


def version(t: Tensor) -> int:
    """The tensor's version counter (bumped by every in-place change): whether a gradient changed since."""
    return t._version


# ---- optimizers and mixed precision ---------------------------------------------------------------------------


def inner_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside Lightning's ``LightningOptimizer`` wrapper (the optimizer itself otherwise)."""
    return getattr(optimizer, "_optimizer", optimizer)


def steps_with_amp_scaling(optimizer: Any) -> bool:
    """Whether the optimizer unscales gradients inside its own step (``fused=True``): Lightning then does not unscale
    them before ``on_before_optimizer_step``."""
    return bool(getattr(inner_optimizer(optimizer), "_step_supports_amp_scaling", False))


def loss_scale(scaler: Any) -> Tensor | None:
    """A GradScaler's current scale as a tensor (no host sync), or None before its first step."""
    return getattr(scaler, "_scale", None)


# ---- Lightning callbacks and strategies -----------------------------------------------------------------------


def average_model(callback: Any) -> nn.Module | None:
    """The averaged copy of the model that Lightning's ``WeightAveraging`` (EMA) and ``StochasticWeightAveraging``
    keep, or None."""
    average = getattr(callback, "_average_model", None)
    return average if isinstance(average, nn.Module) else None


def load_training_data(trainer: Any) -> None:
    """Load the Trainer's training data now (its fit loop's ``setup_data``, as ``estimated_stepping_batches`` does
    when ``max_epochs`` is set), so that ``num_training_batches`` is known before the fit starts."""
    trainer.fit_loop.setup_data()


def saves_distributed_checkpoint(strategy: Any) -> bool:
    """Whether the strategy writes a distributed (per-shard) checkpoint (``ModelParallelStrategy``)."""
    return bool(getattr(strategy, "_save_distributed_checkpoint", False))


@functools.cache
def _conditional_checkpoint() -> type:
    from lightning.pytorch.callbacks import ModelCheckpoint

    class ConditionalCheckpoint(ModelCheckpoint):
        """Lightning's ``ModelCheckpoint`` that also skips saving while `hold` says so (through its private
        ``_should_skip_saving_checkpoint``, the one place every save path asks)."""

        def hold(self, trainer: Any) -> bool:
            """Whether to skip saving now, beyond Lightning's own reasons."""
            return False

        def _should_skip_saving_checkpoint(self, trainer: Any) -> bool:
            return super()._should_skip_saving_checkpoint(trainer) or self.hold(trainer)

    return ConditionalCheckpoint


def __getattr__(name: str) -> Any:
    if name == "ConditionalCheckpoint":  # made on first use, so that the pure core imports torch only
        return _conditional_checkpoint()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""``ImportanceTracking``: keeps running statistics of the selected weights on every optimizer step."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from lightning_prune.callbacks.base import OwnsHooks
from lightning_prune.selection import in_dim, select_parameters
from lightning_prune.trackers import STATS, RunningStats, snapshot_weights

__all__ = ["ImportanceTracking"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ImportanceTracking(OwnsHooks):
    """Track running statistics of weights and gradients during training (see :mod:`lightning_prune.trackers`).

    Statistics are read in ``on_before_optimizer_step``: after the backward pass, after DDP has all-reduced the
    gradients and AMP has unscaled them, once per gradient-accumulation cycle. A time-weighted snapshot of |w| is
    taken at the end of every training epoch. ``ScheduledPruning`` callbacks in the same Trainer read the
    statistics their criterion needs; those statistics are added to ``stats`` automatically. For ``input_norm``
    (the running Wanda score) forward pre-hooks on the modules owning the tracked 2-D weights read their inputs
    on training passes; the hooks are removed at teardown and on an exception.

    Args:
        stats: statistics to keep, from :data:`~lightning_prune.trackers.STATS` (default: those the Trainer's
            pruning callbacks need, or ``("abs_weight", "abs_grad")`` if none does).
        decay: β of the exponential moving averages, in [0, 1).
        every: fold in one optimizer step out of ``every``.
        dtype: ``"float32"`` or ``"bfloat16"`` (half the memory) for the state tensors.
        window: the time-weighted average uses the last ``window`` epoch snapshots (None: all).
        weighting: snapshot weights c(i): ``"sqrt"`` (√i, the default), ``"linear"``, ``"uniform"`` or a callable.
        parameters: fqn glob patterns of the weights to track (default: the transformer default of
            :func:`~lightning_prune.selection.select_parameters`).
        exclude: fqn glob patterns to leave out.

    Raises:
        ValueError: for an unknown statistic or dtype, or a decay, every or window out of range.

    Example:
        >>> trainer = pl.Trainer(callbacks=[ImportanceTracking(), ScheduledPruning({1: 0.5}, "taylor")])
    """

    def __init__(
        self,
        stats: Sequence[str] | None = None,
        decay: float = 0.99,
        every: int = 1,
        dtype: str = "float32",
        window: int | None = None,
        weighting: str | Callable[[int], float] = "sqrt",
        parameters: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
    ) -> None:
        unknown = [s for s in stats or () if s not in STATS]
        if unknown:
            raise ValueError(f"unknown statistics {unknown}; allowed: {list(STATS)}.")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}.")
        RunningStats({}, (), decay=decay, every=every, window=window)  # validates the numbers
        snapshot_weights(weighting)
        self.requested = tuple(stats) if stats is not None else None
        self.decay, self.every, self.dtype, self.window, self.weighting = decay, every, dtype, window, weighting
        self.patterns, self.exclude = (list(parameters) if parameters is not None else None), list(exclude)
        self.fqns: list[str] = []
        self.stats: RunningStats | None = None
        self._params: dict[str, torch.nn.Parameter] = {}
        self._owners: dict[str, torch.nn.Module] = {}
        self._handles: list[Any] = []
        self._pending: dict[str, Any] | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        selected = select_parameters(pl_module, self.patterns, self.exclude)
        self._params = {f: p for f, (_, p) in selected.items()}
        self._owners = {f: m for f, (m, p) in selected.items() if p.dim() == 2}
        self.fqns = list(self._params)

    def needed_stats(self, trainer: pl.Trainer) -> tuple[str, ...]:
        """The requested statistics plus those the Trainer's pruning callbacks read."""
        needed = [s for cb in trainer.callbacks for s in getattr(getattr(cb, "criterion", None), "stats", ())]
        if self.requested is None and not needed:
            return ("abs_weight", "abs_grad")
        return tuple(dict.fromkeys([*(self.requested or ()), *needed]))

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.stats = RunningStats(
            self._params,
            self.needed_stats(trainer),
            decay=self.decay,
            every=self.every,
            dtype=_DTYPES[self.dtype],
            window=self.window,
            weighting=self.weighting,
            in_dims={f: in_dim(m) for f, m in self._owners.items()},
        )
        if self._pending is not None:
            self.stats.load_state_dict(self._pending)
            self._pending = None
        if "input_norm" in self.stats.stats:
            for f, module in self._owners.items():
                self._handles.append(module.register_forward_pre_hook(self._input_hook(f)))

    def _input_hook(self, fqn: str) -> Callable[..., None]:
        def observe(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            if module.training and args and isinstance(args[0], torch.Tensor):
                self.stats.add_inputs(fqn, args[0])

        return observe

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self.stats is not None:
            self.stats.update(self._params)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.stats is not None:
            self.stats.snapshot(self._params)
            if self.stats.skipped:
                pl_module.log("tracking/skipped_steps", float(self.stats.skipped), rank_zero_only=True)

    @property
    @override
    def state_key(self) -> str:
        return "ImportanceTracking"

    @override
    def state_dict(self) -> dict[str, Any]:
        if self.stats is not None:
            return self.stats.state_dict()
        return dict(self._pending or {})

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.stats is not None:
            self.stats.load_state_dict(state_dict)
        else:
            self._pending = state_dict

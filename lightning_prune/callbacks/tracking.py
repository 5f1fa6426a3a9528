"""``ImportanceTracking``: keeps running statistics of the selected weights on every optimizer step."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lightning_prune._compat import loss_scale, steps_with_amp_scaling
from lightning_prune._registry import Shrink, registry_of
from lightning_prune._selection import in_dim, owners, reads_inputs, select_parameters
from lightning_prune._shards import local
from lightning_prune.callbacks._lifecycle import Lifecycle
from lightning_prune.trackers import STATS, RunningStats, snapshot_weights

__all__ = ["ImportanceTracking"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ImportanceTracking(Lifecycle):
    """Track running statistics of weights and gradients during training (see `lightning_prune.trackers`).

    Statistics are read in ``on_before_optimizer_step``: after the backward pass, after DDP has all-reduced the
    gradients (FSDP2 reduce-scattered them: each process reads its shard) and AMP has unscaled them (a fused
    optimizer under ``16-mixed`` unscales inside its step: the tracker divides by the loss scale itself), once per
    gradient-accumulation cycle. They are accumulated in float32 whatever ``dtype`` stores them (16-bit state is
    rounded stochastically, without bias). A time-weighted snapshot of |w| is
    taken at the end of every training epoch. ``ScheduledPruning`` callbacks in the same Trainer read the
    statistics their criterion needs; those statistics are added to ``stats`` automatically. For ``input_norm``
    (the running Wanda score) forward pre-hooks on the ``nn.Linear``, ``Conv1D`` and ``nn.MultiheadAttention``
    modules owning the tracked 2-D weights read their inputs on training passes (for attention, the query, key and
    value inputs for their own rows of ``in_proj_weight``); the hooks are removed at teardown and on an exception.
    Weight and gradient statistics agree on every process (they read all-reduced gradients); ``input_norm`` is
    per process until a pruning event averages it over the processes.

    Args:
        stats: statistics to keep, from `STATS` (default: those the Trainer's
            pruning callbacks need, or ``("abs_weight", "abs_grad")`` if none does).
        decay: β of the exponential moving averages, in [0, 1).
        every: fold in one optimizer step out of ``every``.
        dtype: ``"float32"`` or ``"bfloat16"`` (half the memory) for the state tensors.
        window: the time-weighted average uses the last ``window`` epoch snapshots (None: all).
        weighting: snapshot weights c(i): ``"sqrt"`` (√i, the default), ``"linear"``, ``"uniform"`` or a callable.
        parameters: fqn glob patterns of the weights to track (default: the transformer default of
            `select_parameters`).
        exclude: fqn glob patterns to leave out.

    Raises:
        ValueError: for an unknown statistic or dtype, or a decay, every or window out of range.

    Examples:
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
        self._module: torch.nn.Module | None = None
        super().__init__()

    # ---- the lifecycle (see callbacks/_lifecycle.py) -------------------------------------------------------------

    @override
    def check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        registry_of(pl_module).trackers[trainer] = self  # the pruning callbacks of this fit read its statistics

    @override
    def resolve(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, tuple[int, ...]]:
        selected = select_parameters(pl_module, self.patterns, self.exclude)
        self._module = pl_module
        self._select(selected)
        return {f: tuple(p.shape) for f, p in self._params.items()}

    def _select(self, selected: Mapping[str, tuple[torch.nn.Module, torch.nn.Parameter]]) -> None:
        self._params = {f: p for f, (_, p) in selected.items()}
        self._owners = {f: m for f, (m, p) in selected.items() if p.dim() == 2 and reads_inputs(m)}
        self.fqns = list(self._params)

    def _settle(self) -> None:
        """Track also what the pruning callbacks of this fit asked for (`MaskRegistry.want`), in model order."""
        extra = [f for f in self.registry.wanted if f not in self._params]
        if extra:
            order = {f: i for i, f in enumerate(self.registry.params)}
            names = sorted([*self._params, *extra], key=order.__getitem__)
            self._select(owners(self._module, names))

    @override
    def reset(self) -> None:
        self.stats = None

    @override
    def follow(self, shrink: Shrink) -> None:
        self._signature = None  # statistics of removed features mean nothing for the smaller model: start afresh

    def needed_stats(self) -> tuple[str, ...]:
        """The requested statistics plus those the pruning callbacks of this fit read."""
        needed = [s for stats in self.registry.wanted.values() for s in sorted(stats)] if self.registry else []
        if self.requested is None and not needed:
            return ("abs_weight", "abs_grad")
        return tuple(dict.fromkeys([*(self.requested or ()), *needed]))

    def _new_stats(self, stats: tuple[str, ...]) -> RunningStats:
        return RunningStats(
            {f: local(p) for f, p in self._params.items()},
            stats,
            decay=self.decay,
            every=self.every,
            dtype=_DTYPES[self.dtype],
            window=self.window,
            weighting=self.weighting,
            in_dims={f: in_dim(m) for f, m in self._owners.items()},
            sections={f: 3 for f, m in self._owners.items() if isinstance(m, torch.nn.MultiheadAttention)},
            layouts={f: self.registry.layout(f) for f in self._params},
        )

    @override
    def start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._settle()
        needed = self.needed_stats()
        if self.stats is not None and self.stats.fqns != self.fqns:
            rank_zero_info("ImportanceTracking: this fit tracks other parameters; its earlier statistics are dropped.")
            self.stats = None
        if self.stats is None:
            self.stats = self._new_stats(needed)
        elif not set(needed) <= set(self.stats.stats):
            raise ValueError(
                f"ImportanceTracking keeps {list(self.stats.stats)} from an earlier fit, but this fit needs "
                f"{list(needed)}; use a new ImportanceTracking for a new set of statistics."
            )
        self.registry.wanted.clear()  # asked again by every fit
        if "input_norm" in self.stats.stats:
            for f, module in self._owners.items():
                self._handles.append(module.register_forward_pre_hook(self._input_hook(f), with_kwargs=True))

    def _input_hook(self, fqn: str) -> Callable[..., None]:
        attention = isinstance(self._owners[fqn], torch.nn.MultiheadAttention)

        def observe(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if not module.training:
                return
            if attention:  # query, key, value feed the three row blocks of in_proj_weight
                names = ("query", "key", "value")
                inputs = [args[i] if i < len(args) else kwargs.get(n) for i, n in enumerate(names)]
                if all(isinstance(x, torch.Tensor) for x in inputs):
                    self.stats.add_inputs(fqn, *inputs)
            elif args and isinstance(args[0], torch.Tensor):
                self.stats.add_inputs(fqn, args[0])

        return observe

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        super().on_before_optimizer_step(trainer, pl_module, optimizer)
        if self.stats is not None:
            params = {f: local(p) for f, p in self._params.items()}
            grads = {f: local(p.grad) if p.grad is not None else None for f, p in self._params.items()}
            self.stats.update(params, grads, scale=_unscale(trainer, optimizer))

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.stats is not None:
            self.stats.snapshot({f: local(p) for f, p in self._params.items()})
            if self.stats.skipped:
                pl_module.log("tracking/skipped_steps", float(self.stats.skipped), rank_zero_only=True)

    def sync(self, trainer: pl.Trainer) -> None:
        """Average the per-process statistics (``input_norm``) over the processes, so every process scores with
        the same values (called by the pruning callbacks before they score)."""
        if self.stats is None or trainer.world_size < 2 or "input_norm" not in self.stats.state:
            return
        for t in self.stats.state["input_norm"].values():
            t.copy_(trainer.strategy.reduce(t.float().clone(), reduce_op="mean"))

    # ---- checkpoint ----------------------------------------------------------------------------------------

    @property
    @override
    def state_key(self) -> str:
        return "ImportanceTracking"

    @override
    def dump(self) -> dict[str, Any]:
        if self.stats is None:
            return {}
        state = self.stats.state_dict()
        tensors, where = {}, {}
        for stat, per in state.pop("state").items():
            for f, t in per.items():
                tensors[f"{stat}/{f}"] = t
                where[f"{stat}/{f}"] = f if stat != "input_norm" else None
        for i, snap in enumerate(state.pop("ring")):
            for f, t in snap.items():
                tensors[f"ring{i}/{f}"], where[f"ring{i}/{f}"] = t, f
        return {**state, "tensors": tensors, "where": where}

    @override
    def restore(self, state: Mapping[str, Any]) -> None:
        self._settle()
        stats = self._new_stats(tuple(state["stats"]))
        stats.load_state_dict(state)
        self.stats = stats


def _unscale(trainer: pl.Trainer, optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
    """``1/loss_scale`` when the gradients are still scaled at ``on_before_optimizer_step``: a ``16-mixed``
    GradScaler and an optimizer that unscales inside its own step (``fused=True``), which Lightning does not
    unscale first."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    scale = loss_scale(scaler) if scaler is not None else None
    if scale is None or not steps_with_amp_scaling(optimizer):
        return None
    return scale.double().reciprocal().float()

"""The one lifecycle every callback of the library follows, and what they share.

hook              what happens, the same for every callback
================  =========================================================================================
``__init__``      arguments validated; nothing about a model is known
``setup("fit")``  arguments checked against the Trainer (a schedule past the run's end is an error, unless
                  this instance already reached its final target on this model: a further fit continues)
``on_fit_start``  parameters resolved as they train now (after ``configure_model``, sharding, precision). If
                  the model is another object, or its selected parameters have other names or shapes, than
                  the ones this instance's state was made for, that state is dropped whole: masks,
                  statistics, sparsity reached, events. Otherwise (a second ``fit`` of the same model) it is
                  kept whole.
                  The schedule is checked against the run's length in its own unit, whichever limit ends it.
``load_state_dict``  a checkpoint's state is kept pending, never applied half-way (only when fitting: a
                  ``validate``/``test``/``predict`` with ``ckpt_path`` loads weights, never callback state)
``on_sanity_check_start`` / ``on_train_start``  the pending state (a resume) replaces this instance's state,
                  checked against the parameters (another model's checkpoint is a ``ValueError``), before any
                  validation enforces a mask; at ``on_train_start`` hooks are registered
``on_train_epoch_start``  masks enforced everywhere (after every callback has restored its state: the order of
                  callbacks does not matter)
``validate`` …    nothing is resolved, reset, restored or enforced: weights and state stay as they are
``teardown``      hooks removed (also on an exception)
================  =========================================================================================
=======
What happens at each hook, the same for every callback:

- ``__init__``: arguments validated; nothing about a model is known.
- ``setup("fit")``: arguments checked against the Trainer (a schedule past the run's end is an error, unless this
  instance already reached its final target on this model: a further fit continues).
- ``on_fit_start``: parameters resolved as they train now (after ``configure_model``, sharding, precision). If the
  model is another object, or its selected parameters have other names or shapes, than the ones this instance's
  state was made for, that state is dropped whole: masks, statistics, sparsity reached, events. Otherwise (a
  second ``fit`` of the same model) it is kept whole. The schedule is checked against the run's length in its own
  unit, whichever limit ends it.
- ``load_state_dict``: a checkpoint's state is kept pending, never applied half-way (only when fitting: a
  ``validate``/``test``/``predict`` with ``ckpt_path`` loads weights, never callback state).
- ``on_sanity_check_start`` / ``on_train_start``: the pending state (a resume) replaces this instance's state,
  checked against the parameters (another model's checkpoint is a ``ValueError``), before any validation enforces
  a mask; at ``on_train_start`` hooks are registered.
- ``on_train_epoch_start``: masks enforced everywhere (after every callback has restored its state: the order of
  callbacks does not matter).
- ``validate`` …: nothing is resolved, reset, restored or enforced: weights and state stay as they are.
- ``teardown``: hooks removed (also on an exception).

The schedule position is ``trainer.global_step``/``current_epoch``; a callback prunes only when the schedule's
target exceeds the sparsity it has reached, so a resumed or repeated fit never prunes twice.

Masks are written into the model's `MaskRegistry`, which holds them through
every step. Every callback enforces them exactly (weights, optimizer state, averaged copies of the model kept
by weight-averaging callbacks) at ``on_train_start``, before and after every validation epoch, at
``on_train_end`` and before a checkpoint is written, so the order of callbacks does not matter.

Checkpoints: tensors of sharded parameters (masks bit-packed along their last dim, statistics) are saved per
shard through the strategy's distributed checkpoint when it writes one
(``ModelParallelStrategy(save_distributed_checkpoint=True)``), else gathered into the single file.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from typing_extensions import override

from lightning_prune._compat import average_model, load_training_data, saves_distributed_checkpoint
from lightning_prune._registry import MaskRegistry, Shrink, registry_of
from lightning_prune._shards import Layout
from lightning_prune.schedules import Schedule

__all__ = ["SHARDED_PREFIX", "Lifecycle", "check_schedule_fits", "check_strategy", "shadows"]

SHARDED_PREFIX = "lightning_prune"  # key prefix of our per-shard tensors inside a distributed checkpoint
_DTYPES = {str(d): d for d in (torch.bool, torch.uint8, torch.float32, torch.bfloat16, torch.float16, torch.int64)}


def steps_per_epoch(trainer: pl.Trainer) -> int | None:
    """Optimizer steps per training epoch once the Trainer knows its data (None for an unsized loader)."""
    try:
        _ = trainer.estimated_stepping_batches  # sets the training data up, as configure_optimizers may
    except Exception:  # no training data attached yet
        return None
    batches = trainer.num_training_batches
    if not math.isfinite(batches) and trainer.state.fn == "fit":
        # with max_steps alone (max_epochs -1) Lightning answers max_steps without loading the data: load it as
        # its own estimate does otherwise, so that epoch schedules and epoch-based checks are known at setup
        try:
            load_training_data(trainer)
        except Exception:
            return None
        batches = trainer.num_training_batches
    if not math.isfinite(batches):
        return None
    return max(1, math.ceil(int(batches) / max(1, trainer.accumulate_grad_batches)))


def check_schedule_fits(schedule: Schedule, trainer: pl.Trainer) -> None:
    """The schedule's last change must lie inside the run, in its own unit, whichever Trainer limit ends it.

    Raises:
        ValueError: naming the position, the limit that ends the run and the Trainer arguments that reach it.
    """
    schedule.check_fits(trainer.max_epochs, trainer.max_steps, steps_per_epoch(trainer))


def check_strategy(strategy: Any) -> None:
    """Refuse strategies whose parameters are flattened views the library cannot mask shard by shard.

    Raises:
        ValueError: for ``FSDPStrategy`` (FSDP1's flat parameters) and ``DeepSpeedStrategy`` (partitioned flat
            buffers), naming ``ModelParallelStrategy`` (FSDP2, per-parameter ``DTensor`` shards) instead.
    """
    name = type(strategy).__name__
    if name in ("FSDPStrategy", "DeepSpeedStrategy"):
        raise ValueError(
            f"{name} keeps parameters in flattened buffers that cannot be masked shard by shard; shard with "
            "ModelParallelStrategy (FSDP2: fully_shard in configure_model) instead, or train with DDP."
        )


def shadows(trainer: pl.Trainer, registry: MaskRegistry) -> list[dict[str, Tensor]]:
    """``{fqn: tensor}`` of every averaged copy of the model a callback keeps (Lightning's ``WeightAveraging``
    and ``StochasticWeightAveraging`` keep it in ``_average_model``; an ``AveragedModel`` prefixes ``module.``)."""
    found = []
    for cb in trainer.callbacks:
        average = average_model(cb)
        if average is not None:
            named = {n.removeprefix("module."): p for n, p in average.named_parameters()}
            found.append({f: named[f] for f in registry.keep if f in named})
    return found


class Lifecycle(Callback):
    """Base of the library's callbacks: implements the lifecycle above once.

    A subclass implements `check`, `resolve`, `reset`, `start`, `dump`, `restore` and, where its state outlives
    a physical shrink, `follow`; it never overrides the hooks that drive them.
    """

    def __init__(self) -> None:
        self._handles: list[Any] = []
        self._pending: dict[str, Any] | None = None
        self._owner: weakref.ref[nn.Module] | None = None  # the model this instance's state belongs to
        self._signature: dict[str, tuple[int, ...]] | None = None  # its selected parameters: fqn -> full shape
        self._ckpt_path: str | None = None
        self._loading_for_fit: bool | None = None  # set by on_load_checkpoint for the load_state_dict that follows
        self._shrinks_seen = 0  # the registry's shrinks this instance's state already follows
        self.spent = False  # a writer of units whose units a shrink cut out: a further fit holds and prunes nothing
        self.registry: MaskRegistry | None = None

    # ---- what a subclass provides --------------------------------------------------------------------------

    def check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check the arguments against the Trainer (``setup("fit")``)."""

    def resolve(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, tuple[int, ...]]:
        """Find the parameters as they train now; return ``{fqn: full shape}`` of those the state is made for."""
        raise NotImplementedError

    def reset(self) -> None:
        """Drop the state that belongs to a model (masks, statistics, sparsity reached, events)."""

    def start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Register hooks for this fit (after state is restored)."""

    def dump(self) -> dict[str, Any]:
        """The state: plain values, plus ``tensors`` ``{name: local tensor}`` and ``where`` ``{name: fqn}`` naming
        the parameter whose layout a tensor shares (absent or None: the same in every process)."""
        return {}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Replace the state with a `dump` whose ``tensors`` are local again."""

    def follow(self, shrink: Shrink) -> None:
        """Map the state through a physical shrink of the model (`Shrink`), so a
        later fit continues it. By default the parameters the state is made for are renamed and reshaped (masks
        live in the registry, which followed already); state that cannot follow sets ``self._signature = None``
        and starts afresh at the next fit. A writer of units (one with a ``_prefix``: the model it removes from)
        whose model the shrink cut is *spent*: its units are gone, it reached what it did, and a further fit holds
        and prunes nothing for it."""
        if shrink.prefix is not None and shrink.prefix == getattr(self, "_prefix", None):
            self.spent = True
            return
        if self._signature is not None:
            self._signature = {
                new: shrink.shape(f, s) for f, s in self._signature.items() if (new := shrink.fqn(f)) is not None
            }

    # ---- the lifecycle -------------------------------------------------------------------------------------

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            check_strategy(trainer.strategy)
            schedule = getattr(self, "schedule", None)
            if isinstance(schedule, Schedule) and not self.finished(pl_module):  # again at on_fit_start
                check_schedule_fits(schedule, trainer)
            if not self._spent_on(pl_module):
                self.check(trainer, pl_module)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.registry = registry_of(pl_module)
        self.registry.resolve(pl_module)
        owner = self._owner() if self._owner is not None else None
        if owner is pl_module:  # shrunk since this state was made: it follows first
            for shrink in self.registry.shrinks[self._shrinks_seen :]:
                self.follow(shrink)
        self._shrinks_seen = len(self.registry.shrinks)
        if self.spent and owner is pl_module:
            rank_zero_info(f"{type(self).__name__}: its units were cut out of the model; this fit prunes none.")
            self.registry.progress[self.state_key] = (1.0, 1.0)
            return
        self.spent = False
        signature = self.resolve(trainer, pl_module)
        if owner is not pl_module or signature != self._signature:
            if self._signature is not None:
                rank_zero_info(f"{type(self).__name__}: a new model or other parameters; its earlier state is dropped.")
            self.reset()
        self._owner, self._signature = weakref.ref(pl_module), signature
        schedule = getattr(self, "schedule", None)
        if isinstance(schedule, Schedule) and not self.finished(pl_module):
            check_schedule_fits(schedule, trainer)

    def _spent_on(self, pl_module: pl.LightningModule) -> bool:
        """Whether a shrink of ``pl_module``'s model since this state was made cut this writer's units out."""
        owner = self._owner() if self._owner is not None else None
        if owner is not pl_module:
            return False
        shrinks = registry_of(pl_module).shrinks[self._shrinks_seen :]
        return self.spent or any(s.prefix is not None and s.prefix == getattr(self, "_prefix", None) for s in shrinks)

    def finished(self, pl_module: pl.LightningModule) -> bool:
        """Whether this instance's state is of ``pl_module`` and has reached its final target: a further fit of any
        length continues it (masks held, nothing pruned again), so its schedule need not fit that run."""
        owner = self._owner() if self._owner is not None else None
        if self._spent_on(pl_module):
            return True
        progress = registry_of(pl_module).progress.get(self.state_key) if owner is pl_module else None
        return progress is not None and progress[0] >= progress[1]

    @override
    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_pending()  # before the sanity check's validation enforces any mask

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_pending()
        if not self.spent:
            self.start(trainer, pl_module)
        self.registry.attach(trainer.optimizers)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.enforce(trainer)  # after every callback's on_train_start: a resume's masks are all restored by now

    def _restore_pending(self) -> None:
        """A resume: the checkpoint's state replaces this instance's, once, before anything enforces masks."""
        if self._pending is not None:
            state, self._pending = self._local_state(self._pending), None
            self.restore(state)

    def enforce(self, trainer: pl.Trainer) -> None:
        """Make every pruned entry of the model exactly zero now, in the weights, the optimizer state and the
        averaged copies of the model. Only while fitting: ``validate``, ``test`` and ``predict`` change nothing."""
        fitting = trainer.state.fn == TrainerFn.FITTING
        if fitting and self.registry is not None and self.registry.params:
            self.registry.enforce_(trainer.optimizers, shadows(trainer, self.registry))

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self.registry is not None and self.registry.keep:
            self.registry.mask_grads_()  # before Lightning clips them: clipping sees masked gradients

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.enforce(trainer)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.enforce(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.enforce(trainer)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_hooks()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self.registry is not None:
            self.registry.detach()

    # ---- checkpoint ----------------------------------------------------------------------------------------

    @override
    def state_dict(self) -> dict[str, Any]:
        if self._pending is not None:
            return dict(self._pending)
        return self.dump()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        fitting, self._loading_for_fit = self._loading_for_fit, None
        if fitting is False:  # validate/test/predict(ckpt_path=...): the checkpoint's weights only, no state change
            return
        self._pending = dict(state_dict) if state_dict else None

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._loading_for_fit = trainer.state.fn == TrainerFn.FITTING  # Lightning calls load_state_dict next
        if self._loading_for_fit:
            self._ckpt_path = str(trainer.ckpt_path) if trainer.ckpt_path else None
        self._adopt(trainer, checkpoint.get("callbacks", {}))

    def _adopt(self, trainer: pl.Trainer, states: dict[Any, Any]) -> None:
        """Take the checkpoint's state of this class under another key (written by an instance configured otherwise,
        or before keys named what a callback prunes) when it is the only one and this is the only instance without
        its own: a resume with, say, another criterion keeps the checkpoint's masks instead of silently dropping
        them."""
        if self.state_key in states:
            return
        kind = type(self).__name__
        claimed = {cb.state_key for cb in trainer.callbacks}
        free = [k for k in states if isinstance(k, str) and k.split("{")[0].split("[")[0] == kind and k not in claimed]
        unmatched = [cb for cb in trainer.callbacks if type(cb) is type(self) and cb.state_key not in states]
        if len(free) == 1 and unmatched == [self]:
            rank_zero_info(f"{kind}: resuming from the checkpoint's state {free[0]!r}.")
            states[self.state_key] = states.pop(free[0])

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.enforce(trainer)
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        if not state or not state.get("tensors"):
            return
        layouts = self._layouts(state)
        sharded = [n for n, lay in layouts.items() if lay.sharded and isinstance(state["tensors"].get(n), Tensor)]
        if not sharded:
            return
        distributed = saves_distributed_checkpoint(trainer.strategy)
        tensors = dict(state["tensors"])
        for name in sharded:
            wrapped = layouts[name].wrap(tensors[name])
            if distributed:  # saved shard by shard with the model; the metadata file keeps a placeholder
                checkpoint["state_dict"][f"{SHARDED_PREFIX}/{self.state_key}/{name}"] = wrapped
                tensors[name] = {"sharded": str(wrapped.dtype)}
            else:
                tensors[name] = wrapped.full_tensor().cpu()
        state["tensors"] = tensors

    def _layouts(self, state: Mapping[str, Any]) -> dict[str, Layout]:
        where, packed = state.get("where", {}), set(state.get("packed", ()))
        layouts = {}
        for name, fqn in where.items():
            if fqn is not None and self.registry is not None and fqn in self.registry.params:
                lay = self.registry.layout(fqn)
                layouts[name] = lay.packed() if name in packed else lay
        return layouts

    def _local_state(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """A checkpoint's state with every tensor as this process's local part (a slice of a full tensor, or the
        shard read from the distributed checkpoint)."""
        state = dict(state)
        tensors = dict(state.get("tensors", {}))
        layouts = self._layouts(state)
        placeholders = {n: t for n, t in tensors.items() if isinstance(t, dict) and "sharded" in t}
        if placeholders:
            tensors.update(self._load_shards(placeholders, layouts))
        for name, t in tensors.items():
            if name in layouts and name not in placeholders and layouts[name].sharded:
                tensors[name] = layouts[name].slice(t).clone()
        state["tensors"] = tensors
        return state

    def _load_shards(self, placeholders: Mapping[str, Any], layouts: Mapping[str, Layout]) -> dict[str, Tensor]:
        import torch.distributed.checkpoint as dcp

        if self._ckpt_path is None:
            raise ValueError(
                f"{type(self).__name__}: the state names per-shard tensors but no checkpoint path is known."
            )
        missing = [n for n in placeholders if n not in layouts or not layouts[n].sharded]
        if missing:
            raise ValueError(
                f"{type(self).__name__}: the checkpoint holds per-shard tensors {missing[:5]} for parameters that are "
                "not sharded here; resume with the same strategy or from a single-file checkpoint."
            )
        templates = {}
        for name, info in placeholders.items():
            lay = layouts[name]
            empty = torch.empty(lay.local_shape, dtype=_DTYPES[info["sharded"]], device=lay.mesh.device_type)
            templates[f"{SHARDED_PREFIX}/{self.state_key}/{name}"] = lay.wrap(empty)
        dcp.load({"state_dict": templates}, checkpoint_id=self._ckpt_path)
        return {n: templates[f"{SHARDED_PREFIX}/{self.state_key}/{n}"].to_local() for n in placeholders}

"""``ScheduledPruning``: prunes to the schedule's target and holds the masks through every later step."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_prune._selection import in_dim, reads_inputs, select_parameters
from lightning_prune._shards import count_zeros, local
from lightning_prune.callbacks._console import say
from lightning_prune.callbacks._lifecycle import Lifecycle, steps_per_epoch
from lightning_prune.callbacks._record import dump_masks, masks_in_state
from lightning_prune.criteria import CRITERIA, get_criterion
from lightning_prune.masks import SCOPES, compute_masks, pack_mask, parse_pattern, unpack_mask
from lightning_prune.schedules import AtEpochs, Schedule, check_sparsity
from lightning_prune.trackers import RunningStats

__all__ = ["GRADIENT_STATS", "ScheduledPruning", "check_selection", "dump_masks", "masks_in_state"]


class ScheduledPruning(Lifecycle):
    """Prune the selected weights to the target sparsity of a schedule, from importance judged over the run.

    At the start of every training batch the schedule is read at ``trainer.global_step`` (``unit="step"``) or
    ``trainer.current_epoch`` (``unit="epoch"``); when its target exceeds the sparsity already reached, scores
    are computed by the criterion (already-pruned entries score −inf, so they stay pruned), new masks are
    computed (under DDP on process 0 and broadcast; under FSDP2 shard by shard, with counts combined across
    processes) and written into the model's `MaskRegistry`, which zeroes the
    weights and the optimizer's state (Adam moments, momentum) of pruned entries and holds them at zero through
    every later step. Entries pruned by any other writer (``NeuronPruning``, ``FineTune``) count towards the
    target, so zeros are counted once. Parameters keep their names: masks live in this callback's
    ``state_dict`` (bit-packed bool tensors keyed by fqn), never in the model. See
    `_lifecycle` for what survives a resume, ``validate`` and a second ``fit``.

    Args:
        schedule: a [`Schedule`][lightning_prune.Schedule], or ``{epoch: sparsity}`` for
            [`AtEpochs`][lightning_prune.AtEpochs].
        criterion: a name from [`CRITERIA`][lightning_prune.criteria.CRITERIA] or a callable
            ``(fqn, weight, stats) -> scores``.
        scope: ``"global"`` (one ranking over all selected weights), ``"layer"`` (each weight on its own) or
            ``"output"`` (each output row on its own, as Wanda compares).
        pattern: ``"unstructured"``, ``"N:M"`` such as ``"2:4"``, or ``"row"`` (whole output neurons).
        max_layer_sparsity: with global scope, no single weight is pruned beyond this fraction.
        layer_spread: with global scope and unstructured pattern, every weight ends within ``target ± layer_spread``
            at each event (the floor and the cap, within ``max_layer_sparsity``), the rest of the budget spread by
            the global ranking: a bound on how uneven global pruning may get at high sparsity.
        parameters: fqn glob patterns of the weights to prune (default: the Linear weights inside the blocks).
        exclude: fqn glob patterns to leave out.
        log_histograms: add score histograms at each pruning event when a logger is TensorBoard.
        name: distinguishes several instances in one checkpoint (``state_key``).

    Raises:
        ValueError: for an unknown criterion, scope or pattern, a sparsity outside [0, 1), a schedule past the
            run's end, patterns that match nothing, N:M on a dim not divisible by M, or masks in a checkpoint
            that do not fit the model.

    Examples:
        >>> pruning = ScheduledPruning(AtEpochs({2: 0.3, 4: 0.5, 6: 0.6}), criterion="running_magnitude")
        >>> trainer = pl.Trainer(max_epochs=8, callbacks=[ImportanceTracking(), pruning])
    """

    def __init__(
        self,
        schedule: Schedule | Mapping[int, float],
        criterion: str | Callable[..., Tensor] = "magnitude",
        scope: str = "global",
        pattern: str = "unstructured",
        max_layer_sparsity: float | None = None,
        layer_spread: float | None = None,
        parameters: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        log_histograms: bool = True,
        name: str | None = None,
    ) -> None:
        self.criterion = get_criterion(criterion)
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}.")
        self.kind, self.n, self.m = parse_pattern(pattern)
        self.pattern = pattern
        if max_layer_sparsity is not None:
            check_sparsity(max_layer_sparsity, "max_layer_sparsity")
        self.max_layer_sparsity = max_layer_sparsity
        self.set_schedule(schedule)
        if scope == "output" and self.kind != "unstructured":
            raise ValueError(
                f"scope 'output' ranks entries within each output row; use it with pattern 'unstructured', not "
                f"{pattern!r} (or scope='global' / 'layer' for {pattern!r})."
            )
        global_unstructured = scope == "global" and self.kind == "unstructured"
        if layer_spread is not None and not (0.0 <= layer_spread < 1.0 and global_unstructured):
            raise ValueError(
                f"layer_spread must be in [0, 1) with scope='global' and pattern='unstructured', got {layer_spread!r} "
                f"with scope={scope!r}, pattern={pattern!r}."
            )
        self.scope, self.pattern, self.max_layer_sparsity = scope, pattern, max_layer_sparsity
        self.layer_spread = layer_spread
        self.patterns, self.exclude = (list(parameters) if parameters is not None else None), list(exclude)
        self.log_histograms, self.name = log_histograms, name
        self.sparsity = 0.0  # target reached so far
        self._measured = 0.0  # the sparsity measured at the last event
        self.events: list[dict[str, float]] = []  # one record per pruning event
        self._params: dict[str, torch.nn.Parameter] = {}
        self._in_dims: dict[str, int] = {}
        super().__init__()

    def set_schedule(self, schedule: Schedule | Mapping[int, float]) -> None:
        """Use another schedule (e.g. from the command line), checked as at construction.

        Raises:
            ValueError: if the schedule ends beyond what the pattern allows or above ``max_layer_sparsity``.
        """
        schedule = schedule if isinstance(schedule, Schedule) else AtEpochs(dict(schedule))
        end = schedule.end_sparsity()
        if end >= 1.0:
            raise ValueError(
                f"the schedule ends at sparsity {end}, which would prune every selected weight; sparsity is a fraction "
                "of zeros in [0, 1)."
            )
        if self.kind == "nm" and end > (self.m - self.n) / self.m:
            raise ValueError(
                f"pattern {self.pattern!r} allows at most {(self.m - self.n) / self.m} sparsity, schedule ends at "
                f"{end}."
            )
        if self.max_layer_sparsity is not None and self.max_layer_sparsity < end:
            raise ValueError(
                f"max_layer_sparsity={self.max_layer_sparsity} is below the schedule's final sparsity {end}."
            )
        self.schedule = schedule

    # ---- the lifecycle (see callbacks/_lifecycle.py) -------------------------------------------------------------

    @override
    def check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        unnamed = [cb for cb in trainer.callbacks if isinstance(cb, ScheduledPruning) and not cb.name]
        if len(unnamed) > 1 and unnamed[0] is self:
            rank_zero_warn(
                f"{len(unnamed)} ScheduledPruning callbacks without name= log the same metrics (sparsity/global, "
                "sparsity/target: the largest of theirs is what callback_metrics, the progress bar and a "
                "ModelCheckpoint monitor see); give each a name= to log them as sparsity/<name>/…."
            )
        if self.criterion.stats:
            first, unit = self.schedule.first(), self.schedule.unit
            if first == 0:
                raise ValueError(
                    f"criterion {self.criterion.name!r} judges weights by running statistics {self.criterion.stats}, "
                    f"which have seen no training at {unit} 0, where the schedule first prunes: start pruning at "
                    f"{unit} 1 or later (e.g. OneShot({self.schedule.end_sparsity()}, at=1, unit={unit!r})), or use a "
                    "criterion that needs no statistics ('magnitude')."
                )

    @override
    def resolve(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, tuple[int, ...]]:
        selected = select_parameters(pl_module, self.patterns, self.exclude)
        self._params = {f: p for f, (_, p) in selected.items()}
        self._in_dims = {f: in_dim(module) if p.dim() == 2 else p.dim() - 1 for f, (module, p) in selected.items()}
        unread = {id(m.out_proj) for m in pl_module.modules() if isinstance(m, torch.nn.MultiheadAttention)}
        modules = {f: module for f, (module, _) in selected.items()}
        check_selection(
            self._params, modules, self._in_dims, self.criterion, self.kind, self.scope, self.pattern, self.m, unread
        )
        return {f: tuple(p.shape) for f, p in self._params.items()}

    @override
    def start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._measured = self.events[-1]["sparsity"] if self.events else 0.0
        self._publish()

    def _publish(self) -> None:
        """What a report reads of this writer, through the registry: its events and how far it is."""
        self.registry.progress[self.state_key] = (self.sparsity, self.schedule.end_sparsity())
        self.registry.events[self.state_key] = self.events

    @override
    def reset(self) -> None:
        self.sparsity, self.events = 0.0, []
        if self.registry is not None:
            self.registry.forget(self.state_key)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        if self.criterion.stats:
            if self.registry.tracking(trainer) is None:
                raise ValueError(
                    f"criterion {self.criterion.name!r} reads running statistics {self.criterion.stats}: add "
                    "ImportanceTracking() to the Trainer's callbacks."
                )
            self.registry.want(self._params, self.criterion.stats)  # tracked whatever the tracker's own selection
        if self.kind == "nm":  # a writer that cuts these inputs out would break the groups: it reads this and refuses
            self.registry.group(self.state_key, self._in_dims, self.m)
        if "time_weighted" in self.criterion.stats and self.schedule.unit == "step":
            per_epoch = steps_per_epoch(trainer)
            if per_epoch is not None and self.schedule.first() < per_epoch:
                raise ValueError(
                    f"criterion {self.criterion.name!r} averages snapshots taken at the end of each epoch, but the "
                    f"schedule first prunes at step {self.schedule.first()}, inside the first epoch ({per_epoch} "
                    f"steps): start pruning at step {per_epoch} or later, or use an epoch schedule."
                )

    @property
    def masks(self) -> dict[str, Tensor]:
        """``{fqn: bool}`` (True keeps) that this callback wrote, on each parameter's local tensor."""
        return self.registry.writers.get(self.state_key, {}) if self.registry is not None else {}

    # ---- the training loop ---------------------------------------------------------------------------------

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        t = trainer.global_step if self.schedule.unit == "step" else trainer.current_epoch
        target = self.schedule(t)
        if target > self.sparsity:
            self.prune(trainer, target)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # through the module, so it shows in the progress bar and is in callback_metrics (ModelCheckpoint can
        # monitor it); per step only, so the loggers get one series per metric (no *_step / *_epoch copies)
        prefix = self._prefix()
        metrics = {f"{prefix}/global": self._measured, f"{prefix}/target": self.sparsity}
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, prog_bar=not self.name)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, step=max(0, trainer.global_step - 1))  # the epoch's last step: an event next logs at its own

    # ---- pruning -------------------------------------------------------------------------------------------

    def prune(self, trainer: pl.Trainer, target: float) -> None:
        """Compute new masks at ``target`` sparsity, identical on all processes, and hold them."""
        tracking = self.registry.tracking(trainer) if self.criterion.stats else None
        if tracking is not None:
            tracking.sync(trainer)
        stats = tracking.stats if tracking is not None else None
        scores = self.scores(stats)
        layouts = {f: self.registry.layout(f) for f in self._params}
        cap, floor = self.max_layer_sparsity, None
        if self.layer_spread is not None:
            floor = max(0.0, target - self.layer_spread)
            cap = min(cap if cap is not None else 1.0, target + self.layer_spread)
        masks = compute_masks(
            scores, target, self.scope, self.pattern, cap, self._in_dims, layouts=layouts, min_layer_sparsity=floor
        )
        if trainer.world_size > 1 and not any(lay.sharded for lay in layouts.values()):
            packed = trainer.strategy.broadcast({f: pack_mask(m.cpu()) for f, m in masks.items()}, src=0)
            masks = {f: unpack_mask(packed[f], masks[f].shape).to(masks[f].device) for f in masks}
        old = self.masks  # never un-prune an entry this callback pruned before
        self.registry.write(self.state_key, {f: m & old[f] if f in old else m for f, m in masks.items()})
        self.sparsity = target
        self.enforce(trainer)
        measured = self._log(trainer, scores)
        total = sum(p.numel() for p in self._params.values())
        others = [w for w in self.registry.writers if w != self.state_key]
        if others and round(measured * total) > round(target * total):  # (whole rows alone may pass the target)
            rank_zero_warn(
                f"{self.state_key}: {measured:.4f} of the selected weights are zero, above the target {target}: "
                f"other writers ({', '.join(others)}) pruned more of them than this target asks for."
            )
        self.events.append(
            {"step": trainer.global_step, "epoch": trainer.current_epoch, "target": target, "sparsity": measured}
        )
        self._publish()
        say(
            trainer,
            f"{self.name or 'ScheduledPruning'}: step {trainer.global_step} (epoch {trainer.current_epoch}): "
            f"sparsity {measured:.4f} of {total:,} weights in {len(self._params)} tensors (target {target:.4f}, "
            f"final {self.schedule.end_sparsity()})",
        )

    @torch.no_grad()
    def scores(self, stats: RunningStats | None) -> dict[str, Tensor]:
        """Criterion scores per fqn on the local tensors, with −inf where any writer has pruned an entry."""
        keep = self.registry.keep
        scores = {}
        for f in self._params:
            s = self.criterion(f, self.registry.local(f), stats).float()
            scores[f] = s.masked_fill(~keep[f], float("-inf")) if f in keep else s
        return scores

    # ---- logging -------------------------------------------------------------------------------------------

    def _prefix(self) -> str:
        return f"sparsity/{self.name}" if self.name else "sparsity"

    def _log(self, trainer: pl.Trainer, scores: Mapping[str, Tensor] | None = None, step: int | None = None) -> float:
        """Measure the sparsity (one pass, one all-reduce under FSDP2) and send it with every layer's and the score
        histograms to the loggers at ``step`` (default: this step); returns it."""
        step = trainer.global_step if step is None else step
        zeros = count_zeros(
            {f: local(p) for f, p in self._params.items()}, [self.registry.layout(f) for f in self._params]
        )
        total = sum(p.numel() for p in self._params.values())
        measured = self._measured = sum(zeros.values()) / total
        prefix = self._prefix()
        metrics = {f"{prefix}/global": measured, f"{prefix}/target": self.sparsity}
        metrics.update({f"{prefix}/layer/{f}": zeros[f] / p.numel() for f, p in self._params.items()})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            if scores is not None and self.log_histograms and isinstance(logger, TensorBoardLogger):
                for f, s in scores.items():
                    finite = s[torch.isfinite(s)]
                    if finite.numel():
                        logger.experiment.add_histogram(f"scores/{f}", finite.cpu(), step)
        return measured

    # ---- checkpoint ----------------------------------------------------------------------------------------

    @property
    @override
    def state_key(self) -> str:
        """``ScheduledPruning[name]``, or (without ``name``) the class and what it prunes, as Lightning's own callbacks
        key their state: two instances that prune differently never share a key."""
        if self.name:
            return f"ScheduledPruning[{self.name}]"
        prunes = {
            "criterion": self.criterion.name,
            "scope": self.scope,
            "pattern": self.pattern,
            "parameters": self.patterns,
            "exclude": self.exclude,
        }
        return f"ScheduledPruning{prunes!r}"  # the format of Lightning's own keys (ModelCheckpoint's)

    @override
    def dump(self) -> dict[str, Any]:
        state = dump_masks(self.masks, self.registry, {f: tuple(p.shape) for f, p in self._params.items()})
        return {**state, "sparsity": self.sparsity, "events": [dict(e) for e in self.events]}

    @override
    def restore(self, state: Mapping[str, Any]) -> None:
        shapes = {f: tuple(s) for f, s in state["shapes"].items()}
        mine = {f: tuple(p.shape) for f, p in self._params.items()}
        if shapes != mine:
            missing, extra = sorted(set(mine) - set(shapes)), sorted(set(shapes) - set(mine))
            wrong = [f"{f}: {shapes[f]} vs {mine[f]}" for f in set(mine) & set(shapes) if shapes[f] != mine[f]]
            raise ValueError(
                "the checkpoint's masks do not fit this model (another model or another parameter selection): "
                f"missing {missing[:5]}, unexpected {extra[:5]}, shape mismatches {wrong[:5]}."
            )
        masks = masks_in_state(state, {f: tuple(self.registry.local(f).shape) for f in self._params})
        self.registry.forget(self.state_key)
        self.registry.write(self.state_key, masks)
        self.sparsity = float(state["sparsity"])
        self.events = [dict(e) for e in state["events"]]
        self._publish()


GRADIENT_STATS = ("abs_grad", "movement", "taylor", "platon")  # statistics read from gradients


def check_selection(
    params: Mapping[str, torch.nn.Parameter],
    modules: Mapping[str, torch.nn.Module],
    in_dims: Mapping[str, int],
    criterion: Any,
    kind: str,
    scope: str,
    pattern: str,
    m: int,
    read_directly: set[int] = frozenset(),
) -> None:
    """Refuse, before training, a selection the criterion or pattern cannot prune.

    Args:
        params: ``{fqn: parameter}`` selected.
        modules: ``{fqn: owning module}``.
        read_directly: ids of modules whose weight their parent reads without calling them
            (``nn.MultiheadAttention.out_proj``).

    Raises:
        ValueError: for frozen parameters with a criterion that reads gradients (they have none), weights whose
            inputs are never seen with a criterion that reads inputs, parameters that are not 2-D with a row or N:M
            pattern or the output scope, and N:M on an input dim not divisible by M.
    """
    wanda = criterion is CRITERIA["wanda"]  # (a criterion of the user's may not read every weight's inputs)
    unmeasured = [f for f, p in params.items() if p.dim() != 2 or not reads_inputs(modules[f])]
    if wanda and unmeasured:
        raise ValueError(
            f"criterion 'wanda' weighs the 2-D weights of Linear, Conv1D and MultiheadAttention layers by their "
            f"inputs, but {unmeasured[:5]} {'is' if len(unmeasured) == 1 else 'are'} not such a weight (a bias, a "
            "norm, an embedding): exclude them (e.g. exclude=['*.bias', '*norm*']) or use another criterion."
        )
    unread = [f for f, m in modules.items() if id(m) in read_directly]
    if unread and wanda:
        raise ValueError(
            f"criterion {criterion.name!r} weighs each weight by its inputs, but {unread[:5]} "
            f"{'is' if len(unread) == 1 else 'are'} read by nn.MultiheadAttention without calling the module, so no "
            "input is ever seen: exclude them (exclude=['*.out_proj.weight']) or use another criterion."
        )
    frozen = [f for f, p in params.items() if not p.requires_grad]
    reads = [s for s in criterion.stats if s in GRADIENT_STATS]
    if frozen and reads:
        raise ValueError(
            f"criterion {criterion.name!r} judges weights by their gradients ({reads}), but {frozen[:5]}"
            f"{' …' if len(frozen) > 5 else ''} are frozen (requires_grad=False) and have none (under LoRA/PEFT the "
            "base weights are frozen): exclude them (exclude=[...]), or use a criterion that reads weights or inputs "
            "only ('magnitude', 'running_magnitude', 'time_weighted', 'wanda')."
        )
    if kind != "unstructured" or scope == "output":
        flat = [f for f, p in params.items() if p.dim() != 2]
        if flat:
            raise ValueError(
                f"pattern {pattern!r} with scope {scope!r} prunes rows or groups of 2-D weights, but {flat[:5]} "
                f"{'is' if len(flat) == 1 else 'are'} not 2-D (biases, norms): exclude them (e.g. exclude=['*.bias', "
                "'*norm*']) or leave `parameters` at its default."
            )
    if kind == "nm":
        for f, p in params.items():
            d = in_dims[f]
            if p.shape[d] % m:
                raise ValueError(f"{f}: input dim of size {p.shape[d]} is not divisible by M={m} ({pattern}).")

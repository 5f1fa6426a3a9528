"""``StructuredPruning``: shrink a ``transformers`` model to a chosen size while it trains, across dimensions."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from typing_extensions import override

from lightning_prune.callbacks._console import say
from lightning_prune.callbacks._lifecycle import Lifecycle
from lightning_prune.callbacks._record import dump_writer
from lightning_prune.callbacks._shrink import shrink_trained_
from lightning_prune.callbacks.neurons import find_transformer
from lightning_prune.schedules import AtEpochs, Schedule
from lightning_prune.structured.ablation import HeldInputs, lm_loss, probes, rates, zeroed
from lightning_prune.structured.allocate import allocate, fewest_units
from lightning_prune.structured.config import ROUNDED, config_accepts
from lightning_prune.structured.dims import check_dims, shrinkable, ungraded_blocks
from lightning_prune.structured.exact import inexact_dims
from lightning_prune.structured.observe import observe, stat_sizes
from lightning_prune.structured.size import SizeModel
from lightning_prune.structured.stats import STRUCTURE_CRITERIA, UnitStats
from lightning_prune.structured.target import SizeTarget
from lightning_prune.structured.units import DIMENSIONS, Units, shrink_units_, unit_cuts

__all__ = ["StructuredPruning"]


DEFAULT_MULTIPLE = {"neurons": 128, "hidden": 64, "experts": 8}  # what GPU kernels and serving engines run well


def rounding(full: Any, multiple_of: Mapping[str, int] | None) -> dict[str, int]:
    """The multiples the kept counts keep: ``multiple_of`` as given, else `DEFAULT_MULTIPLE` for each dimension at
    least 16 times as large as its multiple (a smaller one keeps unit steps: rounding would leave too few shapes)."""
    if multiple_of is not None:
        return dict(multiple_of)
    sizes = {"neurons": full.neurons, "hidden": full.hidden, "experts": full.experts}
    return {d: m for d, m in DEFAULT_MULTIPLE.items() if sizes[d] >= 16 * m}


class StructuredPruning(Lifecycle):
    """Remove neurons, attention heads (whole key/value groups), blocks, hidden features and experts while training,
    until the model has the size of ``target``, progressively on a schedule.

    Hooks gather running statistics of every unit while training (`lightning_prune.structured.stats`), which
    order the units within each dimension. At each point of the schedule the way to the target done so far is
    ``schedule(t) / schedule(end)``; when it grows, the dimensions are compared in one unit, the loss a removal
    costs: each dimension's next removal of the same size (its least important units; every block on its own) is
    masked in turn and the language-model loss measured on the last ``loss_batches`` training batches
    (`lightning_prune.structured.ablation`). The removal to the *final* size is then planned — the dimension
    whose removal cost the least loss per parameter (per FLOP for a FLOPs target) first, a block when it costs less
    per parameter than the same size of width, in the units the exported config can express (the same count in
    every block; sizes ``transformers`` accepts) — and the first steps of that plan are taken until the model's
    size is at the goal of that point ([`allocate`][lightning_prune.structured.allocate.allocate] with ``stop_at``): a
    block goes whole, even past the point's goal. With ``loss_batches=0`` the statistics alone compare dimensions
    (Taylor's loss estimates as they are, activations as shares). Statistics and measured losses are averaged over
    the processes, the decision is taken on process 0 and broadcast.

    Cost: per training pass the statistics' hooks (`observe`) and a reference to
    the pass's inputs; per event (1 + blocks kept + other dimensions) × ``loss_batches`` forward passes without
    gradients (for a 4-block Llama with 4 batches, 32 forward passes: about 8 training steps).

    The entries the removed units own are written into the model's `MaskRegistry`
    and held at exactly zero through every step; the units are published in ``registry.units``, from which
    [`ExportPretrained`][lightning_prune.ExportPretrained] cuts them out of a copy
    ([`shrink_`][lightning_prune.StructuredPruning.shrink_] does it here). The masked model computes what the shrunk one
    does for neurons, heads and layers (pre-norm blocks); for hidden features the RMS norms are rescaled on the cut
    (exact up to their epsilon); experts are approximate (the router still routes to a zeroed expert while training).

    Args:
        target: the exported size: a [`SizeTarget`][lightning_prune.SizeTarget], a float (fraction of the
            parameters kept) or an int (parameter count).
        schedule: when to get there: a [`Schedule`][lightning_prune.Schedule] or ``{epoch: value}`` whose values are
            the fraction of the way to the target (0: dense, 1: at the target), ending at 1.0; positions count
            optimizer steps (``trainer.global_step``: under gradient accumulation one step is several batches) or
            epochs. The first point must follow at least one training step (statistics come from training).
        dims: dimensions to remove from ([`DIMENSIONS`][lightning_prune.structured.DIMENSIONS]); default: all that the
            model's config can shrink.
        criterion: what orders the units within a dimension: ``"taylor"`` (the second-order estimate of the loss
            increase from squared gate gradients, `stats`) or ``"activation"``
            (magnitudes, Minitron's).
        decay: EMA decay of the running statistics.
        tolerance: how far below the target (a fraction of it) the exported size may land.
        loss_batches: the last training batches on which each event measures the loss of its candidate removals
            (0: compare dimensions by the statistics alone). On a resume the held batches come from the
            checkpoint: process 0's, with several processes.
        attr: the attribute path of the model to prune in the LightningModule (default: the ``transformers`` model
            found in it; among several, the one that trains).
        multiple_of: per dimension (``neurons``, ``hidden``, ``experts``), the multiple every reduced count keeps,
            so the exported shapes run well on GPU kernels and serving engines (heads always go by whole key/value
            groups); the allocation chooses among the sizes the rounding allows, within ``tolerance`` of the
            target where one exists. Default: 128 neurons, 64 hidden features, 8 experts, each only where the
            dimension is at least 16 times its multiple (``{}``: unit steps everywhere).

    Raises:
        ValueError: for a bad target, schedule, dimension, criterion, decay, tolerance or ``loss_batches``; at setup
            for dimensions the model cannot shrink, a target below the smallest model ``dims`` allow (within
            ``tolerance``), a schedule past the run or at its first step; at the first event when the model's
            training passes give no input_ids or labels to measure a loss on; and for a checkpoint of another model.
            A target between the sizes the config can express may end outside ``tolerance`` (the greedy plan does
            not search every combination); the last event then warns with the size reached.

    Examples:
        >>> pruning = StructuredPruning(SizeTarget(keep=0.5), Cubic(1.0, start=100, end=1000))
        >>> trainer = pl.Trainer(max_steps=1200, callbacks=[pruning, ExportPretrained("out")])
    """

    def __init__(
        self,
        target: SizeTarget | float | int,
        schedule: Schedule | Mapping[int, float],
        dims: Sequence[str] | None = None,
        criterion: str = "taylor",
        decay: float = 0.99,
        tolerance: float = 0.01,
        loss_batches: int = 4,
        attr: str | None = None,
        multiple_of: Mapping[str, int] | None = None,
    ) -> None:
        self.target = SizeTarget.of(target)
        self.schedule = schedule if isinstance(schedule, Schedule) else AtEpochs(dict(schedule))
        if self.schedule.end_sparsity() != 1.0:
            raise ValueError(
                f"StructuredPruning reads its schedule as the fraction of the way to the target (0: dense, 1: at the "
                f"target), and {self.schedule} ends at {self.schedule.end_sparsity()}, which reads like a second "
                "target: the size is the target's alone. End the schedule at 1.0, e.g. Cubic(1.0, start=100, "
                "end=1000) or AtEpochs({2: 0.5, 4: 1.0})."
            )
        if dims is not None and (isinstance(dims, str) or not set(dims) <= set(DIMENSIONS) or not dims):
            raise ValueError(f"dims must be a non-empty list from {DIMENSIONS}, got {dims!r}.")
        if criterion not in STRUCTURE_CRITERIA:
            raise ValueError(f"unknown structured criterion {criterion!r}; choose one of {STRUCTURE_CRITERIA}.")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}.")
        if not 0.0 < tolerance < 0.5:
            raise ValueError(f"tolerance is a fraction of the target in (0, 0.5), got {tolerance!r}.")
        if isinstance(loss_batches, bool) or not isinstance(loss_batches, int) or loss_batches < 0:
            raise ValueError(
                f"loss_batches is a number of training batches >= 0 (0: no measured losses), got {loss_batches!r}."
            )
        if multiple_of is not None and (
            not isinstance(multiple_of, Mapping)
            or set(multiple_of) - set(ROUNDED)
            or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in multiple_of.values())
        ):
            raise ValueError(f"multiple_of maps {ROUNDED} to positive ints, got {multiple_of!r}.")
        self.multiple_of = dict(multiple_of) if multiple_of is not None else None
        self.rounding: dict[str, int] = {}  # the multiples in force for this model (see `rounding`)
        self._accepts: Any = None
        self.requested = tuple(dims) if dims is not None else None
        self.criterion, self.decay, self.tolerance, self.loss_batches = criterion, decay, tolerance, loss_batches
        self.attr = attr
        self.dims: tuple[str, ...] = ()
        self.units = Units()
        self.stats: UnitStats | None = None
        self.held: HeldInputs | None = None  # the last training inputs, on which events measure losses
        self.seconds: list[float] = []  # wall time of each event (measurement included)
        self.reached = 0.0  # fraction of the way to the target done
        self.events: list[dict[str, Any]] = []
        self.model: nn.Module | None = None
        self.size: SizeModel | None = None
        self.goal = 0.0  # the final size, in the target's metric
        self._prefix = ""
        super().__init__()

    # ---- setup ---------------------------------------------------------------------------------------------

    @override
    def check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.schedule.first() == 0:
            raise ValueError(
                f"{self.schedule} prunes at {self.schedule.unit} 0, before any statistics are gathered; start the "
                f"schedule at {self.schedule.unit} 1 or later (calibrate one-shot with lightning_prune.structured)."
            )
        try:
            find_transformer(pl_module, self.attr)
        except ValueError:
            return  # built in configure_model (or not found): checked at on_fit_start
        self._configure(pl_module)

    def _configure(self, pl_module: pl.LightningModule) -> None:
        """Find the model, its size model and dimensions; check the target against them."""
        try:
            self._prefix, self.model = find_transformer(pl_module, self.attr)
        except ValueError as err:
            raise ValueError(str(err).replace("NeuronPruning", "StructuredPruning", 1)) from None
        self.size = SizeModel.from_model(self.model, self.target.seq)
        if self.requested is not None:
            check_dims(self.model, self.requested, self.size)
        self.dims = self._exact(self.requested or tuple(shrinkable(self.model, self.size)))
        if not self.dims:
            raise ValueError(f"this {self.model.config.model_type} model has no dimension its config can shrink.")
        frozen = ungraded_blocks(self.model) if self.criterion == "taylor" else []
        if frozen:
            raise ValueError(
                f"blocks {frozen} and everything before them are frozen, so their units get no gradient, which "
                "criterion='taylor' reads: choose criterion='activation' (magnitudes need no gradient), or train the "
                "input embeddings or an earlier block."
            )
        full, metric = self.size.full, self.target.metric
        self.goal = self.target.goal(self.size.params(full), self.size.flops(full))
        self.rounding = rounding(self.size.full, self.multiple_of)
        self._accepts = config_accepts(self.model, self.rounding)
        floor = fewest_units(self.size, Units.full(self.model, self.dims), self._accepts)
        least = self.size.size(self.size.counts(floor), metric)
        if least > self.goal * (1 + self.tolerance):
            raise ValueError(
                f"{self.target.describe()} is {self.goal:,.0f} {metric}, but removing everything dims {self.dims} "
                f"allow leaves {least:,} (of {self.size.size(full, metric):,}). Choose a larger target or add dims."
            )

    def _exact(self, dims: tuple[str, ...]) -> tuple[str, ...]:
        """The dimensions whose masked model computes what the shrunk model does, decided on a small copy of the
        model (`inexact_dims`): asked-for ones that are not are refused (experts, approximate by design, warn);
        by default they are left out."""
        inexact = inexact_dims(self.model, dims)
        if not inexact:
            return dims
        kind = self.model.config.model_type
        why = "; ".join(f"{d}: {reason}" for d, reason in inexact.items())
        exact = [d for d in dims if d not in inexact]
        if self.requested is None:
            rank_zero_info(f"StructuredPruning: leaves {sorted(inexact)} of this {kind} model alone ({why}).")
            return tuple(exact)
        refused = [d for d in dims if d in inexact and d != "experts"]
        if refused:
            raise ValueError(
                f"removing {refused} from this {kind} model would export another model than the one trained ({why}). "
                f"Choose dims from {exact or 'the others'}, or leave dims=None for the exact ones."
            )
        rank_zero_warn(
            f"removing experts from this {kind} model is approximate: while training, a router still gives a zeroed "
            f"expert a share of each token ({inexact['experts']}); the export warns with the difference."
        )
        return dims

    @override
    def resolve(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, tuple[int, ...]]:
        self._configure(pl_module)
        sizes = stat_sizes(self.model, self.dims)
        return {f"{self._prefix}:{d}:{i}": (n,) for d, rows in sizes.items() for i, n in enumerate(rows)}

    @override
    def reset(self) -> None:
        self.stats = UnitStats(stat_sizes(self.model, self.dims), self.decay, fisher=self.criterion == "taylor")
        self.held = HeldInputs(self.loss_batches) if self.loss_batches else None
        self.units = Units.full(self.model, self.dims)
        self.reached, self.events, self.seconds = 0.0, [], []
        if self.registry is not None:
            self.registry.forget(self.state_key)

    def _check_groups(self) -> None:
        """Refuse to cut features out along an axis another writer keeps N:M groups on (the export would not keep
        the pattern the model trained with)."""
        prefix = f"{self._prefix}." if self._prefix else ""
        grouped = {f: g for axes in self.registry.grouped.values() for f, g in axes.items()}
        broken = sorted(
            {prefix + c.fqn for c in unit_cuts(self.model, self.dims) if grouped.get(prefix + c.fqn, (-1,))[0] == c.dim}
        )
        if broken:
            writers = sorted(w for w, axes in self.registry.grouped.items() if set(axes) & set(broken))
            raise ValueError(
                f"{writers} keep N:M groups along the inputs of {broken[:4]}{' …' if len(broken) > 4 else ''}, which "
                f"removing {[d for d in self.dims if d in ('neurons', 'heads', 'hidden')]} cuts, so the export would "
                "lose the pattern: use StructuredPruning with dims=('layers',) or ('experts',) beside it, or apply the "
                "N:M pattern in a later fit of the shrunk model (StructuredPruning.shrink_())."
            )

    @override
    def start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_groups()
        self.stats.to(pl_module.device)
        self._write()
        self._publish()
        self._handles += observe(self.model, self.stats, self.dims, self.criterion)
        if self.held is not None:
            self._handles.append(self.held.hook(self.model))

    # ---- the training loop ---------------------------------------------------------------------------------

    def progress(self, t: int) -> float:
        """Fraction of the way to the target the schedule asks for at position ``t``."""
        return min(1.0, self.schedule(t))

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.spent:
            return
        wanted = self.progress(trainer.global_step if self.schedule.unit == "step" else trainer.current_epoch)
        if wanted > self.reached:
            self.prune(trainer, pl_module, wanted)

    def goal_at(self, progress: float) -> float:
        """The size (in the target's metric) at ``progress`` of the way from the dense model to the target."""
        dense = self.size.size(self.size.full, self.target.metric)
        return dense - progress * (dense - self.goal)

    def prune(self, trainer: pl.Trainer, pl_module: pl.LightningModule, progress: float) -> None:
        """Remove units down to the goal of ``progress`` (decided on process 0) and hold them at zero."""
        started = time.perf_counter()
        self.stats.commit()
        self._sync(trainer)
        missing = [d for d in self.dims if d not in self.stats.ready()]
        if missing:
            raise ValueError(
                f"no statistics for {missing} yet at step {trainer.global_step}: they come from training passes "
                f"through those units; start the schedule later."
            )
        scores, stop_at, accepts = self._scores(), self.goal_at(progress), self._accepts
        start = self.union()  # what every writer removed: the size counts it, the plan removes on top of it
        dim_rates, measured = None, {}
        if self.held is not None and self.measure()[self.target.metric] > stop_at:  # (else nothing is removed)
            dim_rates, measured = self._measure(trainer, scores, stop_at, accepts, start)
        units = allocate(  # the first steps of the plan to the final size, down to this event's goal
            self.size,
            start,
            scores,
            self.goal,
            self.target.metric,
            comparable=self.criterion == "taylor" or dim_rates is not None,
            tolerance=self.tolerance,
            accepts=accepts,
            stop_at=stop_at,
            dims=self.dims,
            rates=dim_rates,
        )
        units = Units.from_dict(trainer.strategy.broadcast(units.to_dict(), src=0))
        self.units = self.units & Units(**{d: getattr(units, d) for d in self.dims})  # never un-remove
        self._write()
        self.reached = progress
        self.enforce(trainer)
        now = self.measure()
        if progress >= 1.0 and abs(now[self.target.metric] - self.goal) > self.tolerance * self.goal:
            rank_zero_warn(
                f"StructuredPruning reached {now[self.target.metric]:,} {self.target.metric}, "
                f"{now[self.target.metric] / self.goal - 1:+.2%} from the target {self.goal:,.0f}."
            )
        removed = self.removed()
        metrics = {"structure/params": float(now["params"]), "structure/flops": float(now["flops"])}
        metrics |= {f"structure/removed/{d}": v for d, v in removed.items()}
        for name, value in metrics.items():  # callback_metrics (a checkpoint may monitor them), not the loggers
            pl_module.log(name, value, on_step=True, on_epoch=False, rank_zero_only=True, logger=False)
        for logger in trainer.loggers:  # one point at the step of the event, not at the next logging step
            logger.log_metrics(metrics, step=trainer.global_step)
        params_removed = 1.0 - now["params"] / self.size.params(self.size.full)
        self.events.append(
            {"step": trainer.global_step, "epoch": trainer.current_epoch, "progress": progress, **now, **removed}
            | {"params_removed": params_removed}
            | measured
        )
        self.seconds.append(time.perf_counter() - started)
        self._publish()
        metric, dense = self.target.metric, self.size.size(self.size.full, self.target.metric)
        say(
            trainer,
            f"StructuredPruning: step {trainer.global_step} (epoch {trainer.current_epoch}): {metric} {now[metric]:,} "
            f"of {dense:,} (this event's goal {stop_at:,.0f}, final goal {self.goal:,.0f}); removed "
            + ", ".join(f"{d} {v:.1%}" for d, v in removed.items()),
        )

    def _measure(
        self, trainer: pl.Trainer, scores: dict[str, Any], stop_at: float, accepts: Any, start: Units
    ) -> tuple[dict[str, float], dict[str, Any]]:
        """Measure the loss of this event's candidate removals (`ablation`) on
        the held batches, averaged over the processes; set the blocks' scores to their measured losses (in place).

        Returns:
            ``({dimension: loss per unit of size}, {"loss": the loss now, "probes": [...]})`` for the event.
        """
        metric = self.target.metric
        plan = probes(self.size, start, scores, self.goal, stop_at, metric, self.tolerance, accepts, self.dims)
        prefix = f"{self._prefix}." if self._prefix else ""
        losses = [lm_loss(self.model, self.held)]
        for probe in plan:
            owned = {prefix + f: m for f, m in probe.weight_masks(self.model, start).items()}
            local = {f: self.registry.layout(f).slice(m) for f, m in owned.items()}
            with zeroed({f: self.registry.local(f) for f in local}, local):
                losses.append(lm_loss(self.model, self.held))
        values = torch.tensor(losses, dtype=torch.float64)
        if trainer.world_size > 1:  # each process measured on its own batches
            device = self.stats.skipped.device
            values = trainer.strategy.reduce(values.to(device), reduce_op="mean").cpu()
        base, increases = float(values[0]), (values[1:] - values[0]).tolist()
        dim_rates, layer_losses = rates(plan, increases, start)
        if layer_losses is not None:
            scores["layers"] = layer_losses
        dim_rates = {d: dim_rates.get(d, float("inf")) for d in self.dims if d != "layers"}  # no probe: no step
        found = [
            {"dim": p.dim, "size": p.cost, "loss": x} | ({"block": p.block} if p.block is not None else {})
            for p, x in zip(plan, increases, strict=True)
        ]
        return dim_rates, {"loss": base, "probes": found}

    def _publish(self) -> None:
        """What others read of this writer through the registry: how far it is (the way to the target) and its
        events (a checkpoint callback waits for every writer to reach its target)."""
        self.registry.progress[self.state_key] = (self.reached, 1.0)
        self.registry.events[self.state_key] = self.events

    def _scores(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for d in self.dims:
            rows = self.stats.scores(d)
            if d == "layers":
                out[d] = torch.cat(rows)
            elif d == "hidden":
                out[d] = torch.stack(rows).sum(0)
            else:
                out[d] = rows
        return out

    def _sync(self, trainer: pl.Trainer) -> None:
        """Average the running statistics over the processes (each saw its own batches)."""
        if trainer.world_size < 2:
            return
        for t in self.stats.tensors():
            t.copy_(trainer.strategy.reduce(t.clone(), reduce_op="mean"))

    def _write(self) -> None:
        """Write the entries the removed units own into the registry and publish the units."""
        if not self.units.removes_anything():
            return  # nothing to hold before the first removal
        prefix = f"{self._prefix}." if self._prefix else ""
        owned = self.units.weight_masks(self.model)
        layout = self.registry.layout
        self.registry.write(self.state_key, {prefix + f: ~layout(prefix + f).slice(m) for f, m in owned.items()})
        self.registry.publish(self.state_key, {"prefix": self._prefix, **self.units.to_dict()})

    # ---- what was removed ----------------------------------------------------------------------------------

    def union(self) -> Units:
        """The units removed by this writer and every other writer of the model (read from the registry)."""
        others = self.registry.others(self.state_key, self._prefix) if self.registry is not None else None
        return self.units if others is None else self.units & others

    def measure(self) -> dict[str, int]:
        """``{"params", "flops"}`` of the model once every writer's removed units are cut out."""
        counts = self.size.counts(self.union())
        return {"params": self.size.params(counts), "flops": self.size.flops(counts)}

    def removed(self) -> dict[str, float]:
        """Per dimension, the fraction of its units removed."""
        return {d: r["removed"] / r["total"] for d, r in self.units.report().items()}

    def report(self) -> dict[str, Any]:
        """What was removed where: the target, the sizes before and now, per dimension and layer, and the events."""
        full, now = self.size.full, self.measure()
        metric = self.target.metric
        return {
            "target": self.target.describe(),
            "metric": metric,
            "goal": self.goal,
            "dense": {"params": self.size.params(full), "flops": self.size.flops(full)},
            "now": now,
            "relative_to_goal": now[metric] / self.goal - 1,
            "dims": self.units.report(),
            "multiple_of": dict(self.rounding),
            "events": [dict(e) for e in self.events],
            "event_seconds": list(self.seconds),
        }

    @torch.no_grad()
    def shrink_(self, model: nn.Module | None = None) -> nn.Module:
        """Physically remove the units from ``model`` (default: the trained one) and update its config.

        Shrinking the trained model cuts out every writer's units of it (as an export does) and maps every record
        through the shrink (`shrink_trained_`): other writers' entry masks (``ScheduledPruning``, ``HoldMasks``) are
        cut and renamed with the blocks renumbered after removed layers, so each stays on its own weights, and a
        further fit continues them; every writer of units of this model (this one, a ``NeuronPruning``) is spent:
        its units are gone, and a further fit holds and prunes nothing for it."""
        if model is not None and model is not self.model:
            return shrink_units_(model, self.units)
        shrink_trained_(self.model, self._prefix, self.registry, self.units)
        if self.registry is not None:
            self.registry.forget(self.state_key)
        return self.model

    # ---- checkpoint ----------------------------------------------------------------------------------------

    @override
    def dump(self) -> dict[str, Any]:
        return {
            **dump_writer(self.registry, self.state_key),  # what recovery reads, in every writer's format
            "dims": list(self.dims),
            "units": self.units.to_dict(),
            "reached": self.reached,
            "events": [dict(e) for e in self.events],
            "stats": self.stats.state_dict() if self.stats is not None else None,
            "held": self.held.state_dict() if self.held is not None else None,
            "seconds": list(self.seconds),
        }

    @override
    def restore(self, state: Mapping[str, Any]) -> None:
        units = Units.from_dict(state["units"])
        full = Units.full(self.model, self.dims)
        shapes = lambda u: {d: [tuple(m.shape) for m in ([v] if torch.is_tensor(v) else v)] for d, v in u.items()}  # noqa: E731
        if list(state["dims"]) != list(self.dims) or shapes(units.to_dict()) != shapes(full.to_dict()):
            raise ValueError(
                f"the checkpoint's units are for dims {state['dims']} shaped {shapes(units.to_dict())}; this model "
                f"and callback have dims {list(self.dims)} shaped {shapes(full.to_dict())}."
            )
        self.units, self.reached = units, float(state["reached"])
        self.events = [dict(e) for e in state["events"]]
        if state["stats"] is not None:
            self.stats.load_state_dict(state["stats"])
        if self.held is not None and state.get("held") is not None:
            self.held.load_state_dict(state["held"], next(self.model.parameters()).device)
        self.seconds = [float(x) for x in state.get("seconds", [])]
        self.registry.forget(self.state_key)
        self._write()  # the checkpoint's units, held from now on (a resume's sanity check included)

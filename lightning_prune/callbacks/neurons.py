"""``NeuronPruning``: remove whole feed-forward neurons of a ``transformers`` model while it trains."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from typing_extensions import override

from lightning_prune._selection import find_model
from lightning_prune.callbacks._console import say
from lightning_prune.callbacks._lifecycle import Lifecycle
from lightning_prune.callbacks._record import dump_writer
from lightning_prune.callbacks._shrink import shrink_trained_
from lightning_prune.criteria import get_criterion
from lightning_prune.neurons import NeuronStats, neuron_masks, neuron_weight_masks
from lightning_prune.schedules import AtEpochs, Schedule
from lightning_prune.structured import FAMILIES, block_layouts, ffn_output_modules, is_supported, shrink_
from lightning_prune.structured.units import Units

__all__ = ["NeuronPruning", "find_transformer"]


def find_transformer(module: nn.Module, attr: str | None = None) -> tuple[str, nn.Module]:
    """``(fqn, model)`` of the ``transformers`` model whose blocks the library can describe
    ([`is_supported`][lightning_prune.structured.is_supported]): the submodule ``attr`` names, else the one found
    wherever it lives (among several, the one that trains: `find_model`).

    Raises:
        ValueError: if there is none, several train, or the model ``attr`` names cannot be described.
    """
    what = (
        f"transformers model whose blocks can be described ({', '.join(FAMILIES)}, or any model with Llama's "
        "module names)"
    )

    def test(sub: nn.Module) -> bool:  # (an adapter wrapper, PEFT's, is looked through to the model it wraps)
        return hasattr(sub, "config") and hasattr(sub, "base_model") and not _adapter_wrapper(sub) and is_supported(sub)

    name, model = find_model(module, test, attr, what)
    if attr is not None and _adapter_wrapper(model):
        inner = [(n, m) for n, m in model.named_modules() if n and test(m)]
        if len(inner) == 1:
            name, model = f"{attr}.{inner[0][0]}", inner[0][1]
    if attr is not None and not (hasattr(model, "config") and is_supported(model)):
        raise ValueError(f"attr={attr!r} names {type(model).__name__}, not a {what}.")
    return name, model


def _adapter_wrapper(module: nn.Module) -> bool:
    """Whether ``module`` wraps a model with adapters (PEFT's ``PeftModel`` and its tuner models, such as
    ``LoraModel``), rather than being the ``transformers`` model they wrap."""
    return type(module).__module__.split(".")[0] == "peft"


class NeuronPruning(Lifecycle):
    """Remove the same fraction of feed-forward neurons from every block, progressively, on a schedule.

    Forward pre-hooks on each block's feed-forward output projection fold the neuron activations of every
    training pass into [`NeuronStats`][lightning_prune.neurons.NeuronStats] (and, for ``criterion="taylor"``, tensor
    hooks their gradients). When the schedule's target exceeds the fraction removed so far, each layer loses its
    lowest-scored neurons down to ``round(target · n)`` removed (from statistics averaged over the processes,
    decided on process 0 and broadcast); a removed neuron's weight rows and columns and biases are written into the
    model's `MaskRegistry` and held at zero like every other mask, and the neuron
    masks are published in ``registry.units`` for an export to cut them out. The masked
    model computes exactly what the physically smaller model computes:
    [`shrink_`][lightning_prune.NeuronPruning.shrink_] (or [`ExportPretrained`][lightning_prune.ExportPretrained])
    removes the neurons for real after training.

    Args:
        schedule: fraction of neurons removed, a [`Schedule`][lightning_prune.Schedule] or ``{epoch: f}``.
        criterion: a neuron criterion of [`lightning_prune.criteria`][lightning_prune.criteria]; ``weight_norm`` reads
            the running |w| of an [`ImportanceTracking`][lightning_prune.ImportanceTracking] in the Trainer when it
            tracks the feed-forward weights, else the current weights.
        decay: EMA decay of the running activation statistics.
        samples: token activations kept per layer for ``"mutual_information"``.
        threshold: normalised mutual information above which a pair of neurons counts as redundant.
        attr: the attribute path of the model to prune in the LightningModule (default: the ``transformers`` model
            found in it; among several, the one that trains).

    Raises:
        ValueError: for an unknown criterion, a schedule past the run's end or removing every neuron, a model
            whose blocks the library cannot describe (see [`lightning_prune.structured`][lightning_prune.structured]) or
            whose feed-forward neurons sit in fused experts, or a checkpoint of another model.

    Examples:
        >>> trainer = pl.Trainer(max_epochs=6, callbacks=[NeuronPruning({2: 0.25, 4: 0.5}, "taylor")])
    """

    def __init__(
        self,
        schedule: Schedule | Mapping[int, float],
        criterion: str = "activation",
        decay: float = 0.99,
        samples: int = 256,
        threshold: float = 0.0,
        attr: str | None = None,
    ) -> None:
        self._criterion = get_criterion(criterion, unit="neurons")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}.")
        self.schedule = schedule if isinstance(schedule, Schedule) else AtEpochs(dict(schedule))
        self.criterion, self.decay, self.n_samples, self.threshold = criterion, decay, samples, threshold
        self.attr = attr
        self.sparsity = 0.0  # fraction of neurons removed so far (the schedule's last target reached)
        self.masks: list[Tensor] = []  # per layer, bool (n,), True keeps
        self.events: list[dict[str, float]] = []
        self.stats: NeuronStats | None = None
        self.model: nn.Module | None = None
        self._prefix = ""
        self._sizes: list[int] = []
        super().__init__()

    # ---- setup ---------------------------------------------------------------------------------------------

    @override
    def resolve(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, tuple[int, ...]]:
        self._prefix, self.model = find_transformer(pl_module, self.attr)
        ffn_output_modules(self.model)  # refuses blocks whose neurons it cannot hook (fused experts), with the reason
        self._sizes = [lay.n_neurons for lay in block_layouts(self.model)]
        end = self.schedule.end_sparsity()
        if any(round(end * n) >= n for n in self._sizes):
            raise ValueError(
                f"the schedule ends at {end}, which removes every neuron of a layer of {min(self._sizes)}."
            )
        return {f"{self._prefix}:{i}": (n,) for i, n in enumerate(self._sizes)}

    @override
    def reset(self) -> None:
        samples = self.n_samples if "samples" in self._criterion.stats else 0
        self.stats = NeuronStats(self._sizes, self.decay, samples)
        self.masks = [torch.ones(n, dtype=torch.bool) for n in self._sizes]
        self.sparsity, self.events = 0.0, []
        if self.registry is not None:
            self.registry.forget(self.state_key)

    @override
    def start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._publish()
        self.stats.to(pl_module.device)
        self._write()
        if self._criterion.stats:  # (weight norms read no activations)
            for i, lay in enumerate(block_layouts(self.model)):
                module = self.model.get_submodule(lay.ffn_out)
                self._handles.append(module.register_forward_pre_hook(self._hook(i)))

    def _hook(self, layer: int) -> Any:
        def observe(module: nn.Module, args: tuple[Any, ...]) -> None:
            if not module.training:
                return
            acts = args[0]
            if "activation" in self._criterion.stats:
                self.stats.add_activations(layer, acts)
            if "taylor" in self._criterion.stats and acts.requires_grad:
                acts.register_hook(lambda grad: self._taylor(layer, acts, grad))

        return observe

    def _taylor(self, layer: int, acts: Tensor, grad: Tensor) -> None:
        self.stats.add_taylor(layer, acts, grad)  # returns None: the gradient passes on unchanged

    # ---- the training loop ---------------------------------------------------------------------------------

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.spent:
            return
        target = self.schedule(trainer.global_step if self.schedule.unit == "step" else trainer.current_epoch)
        if target > self.sparsity:
            self.prune(trainer, target)

    def prune(self, trainer: pl.Trainer, target: float) -> None:
        """Remove neurons down to ``target`` in every layer (decided on process 0) and hold them at zero."""
        self._sync(trainer)
        others = self.registry.others(self.state_key, self._prefix)  # neurons other writers removed count once
        current = self.masks
        if others is not None and others.neurons is not None:
            current = [m & o for m, o in zip(self.masks, others.neurons, strict=True)]
        masks = neuron_masks(
            self.model, self.stats, self.criterion, target, current, self.threshold, self._running_weights(trainer)
        )
        masks = trainer.strategy.broadcast([m.cpu() for m in masks], src=0)
        self.masks = [m.bool().cpu() & old for m, old in zip(masks, self.masks, strict=True)]  # never un-remove
        self._write()
        self.sparsity = target
        self.enforce(trainer)
        removed = self.removed()
        for logger in trainer.loggers:
            logger.log_metrics({"neurons/removed": removed, "neurons/target": target}, step=trainer.global_step)
        self.events.append(
            {"step": trainer.global_step, "epoch": trainer.current_epoch, "target": target, "removed": removed}
        )
        self._publish()
        say(
            trainer,
            f"NeuronPruning: step {trainer.global_step} (epoch {trainer.current_epoch}): {removed:.1%} of the "
            f"feed-forward neurons removed (target {target}, final {self.schedule.end_sparsity()})",
        )

    def _publish(self) -> None:
        """What a report reads of this writer, through the registry: its events and how far it is."""
        self.registry.progress[self.state_key] = (self.sparsity, self.schedule.end_sparsity())
        self.registry.events[self.state_key] = self.events

    def _running_weights(self, trainer: pl.Trainer) -> dict[str, Tensor] | None:
        """The running |w| of the feed-forward weights from an ImportanceTracking that keeps it, else None."""
        if self._criterion.name != "weight_norm":
            return None
        tracking = self.registry.tracking(trainer)
        for cb in [tracking] if tracking is not None else []:
            stats = cb.stats
            if stats is not None and stats.steps and "abs_weight" in stats.stats:
                prefix = f"{self._prefix}." if self._prefix else ""
                found = {f[len(prefix) :]: stats.value("abs_weight", f) for f in stats.fqns if f.startswith(prefix)}
                needed = {f"{n}.weight" for lay in block_layouts(self.model) for n in (*lay.ffn_in, lay.ffn_out)}
                if needed <= set(found):
                    return {f: found[f] for f in needed}
        return None

    def removed(self) -> float:
        """Fraction of all feed-forward neurons removed."""
        total = sum(m.numel() for m in self.masks)
        return sum(int((~m).sum()) for m in self.masks) / total if total else 0.0

    def _sync(self, trainer: pl.Trainer) -> None:
        """Average the running neuron statistics over the processes (each saw its own batches)."""
        if trainer.world_size < 2:
            return
        for values in (self.stats.activation, self.stats.taylor):
            for i, v in enumerate(values):
                values[i] = trainer.strategy.reduce(v.clone(), reduce_op="mean")

    def _write(self) -> None:
        """Write the weight and bias entries the removed neurons own into the model's registry."""
        if not any((~m).any() for m in self.masks):
            return  # nothing to hold before the first removal
        prefix = f"{self._prefix}." if self._prefix else ""
        owned = neuron_weight_masks(self.model, self.masks)
        self.registry.write(
            self.state_key, {prefix + f: ~self.registry.layout(prefix + f).slice(m) for f, m in owned.items()}
        )
        self.registry.publish(self.state_key, {"prefix": self._prefix, "neurons": self.masks})

    def rezero(self) -> None:
        """Set every pruned entry of the model to exact zero now (weights only)."""
        if self.registry is not None:
            self.registry.enforce_()

    @torch.no_grad()
    def shrink_(self, model: nn.Module | None = None) -> nn.Module:
        """Physically remove the neurons from ``model`` (default: the trained one) and update its config.

        Shrinking the trained model cuts out every writer's units of it and maps every record through the shrink, as
        [`StructuredPruning.shrink_`][lightning_prune.StructuredPruning.shrink_] does, so the entries other
        writers pruned in what remains (by ``ScheduledPruning``, say) stay pruned in a later fit."""
        if model is not None and model is not self.model:
            return shrink_(model, neuron_masks=self.masks)
        shrink_trained_(self.model, self._prefix, self.registry, Units(neurons=self.masks))
        if self.registry is not None:
            self.registry.forget(self.state_key)
        return self.model

    # ---- checkpoint ----------------------------------------------------------------------------------------

    @override
    def dump(self) -> dict[str, Any]:
        return {
            **dump_writer(self.registry, self.state_key),  # what recovery reads, in every writer's format
            "masks": [m.clone() for m in self.masks],
            "sparsity": self.sparsity,
            "events": [dict(e) for e in self.events],
            "stats": self.stats.state_dict() if self.stats is not None else None,
        }

    @override
    def restore(self, state: Mapping[str, Any]) -> None:
        sizes = [m.numel() for m in state["masks"]]
        if sizes != self._sizes:
            raise ValueError(
                f"the checkpoint's neuron masks are for layers of {sizes} neurons, this model has {self._sizes}."
            )
        self.masks = [m.bool().cpu() for m in state["masks"]]
        self.sparsity = float(state["sparsity"])
        self.events = [dict(e) for e in state["events"]]
        if state["stats"] is not None:
            self.stats.load_state_dict(state["stats"])
        self.registry.forget(self.state_key)
        self._write()  # the checkpoint's neurons, held from now on (a resume's sanity check included)

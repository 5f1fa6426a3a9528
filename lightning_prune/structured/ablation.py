"""Measured loss of candidate removals: what makes dimensions comparable at a pruning event.

Running statistics (`stats`) rank the units *within* a dimension well, but no cheap statistic says what a
whole block costs against the same parameters of neurons: first- and second-order estimates assume a small change
of the unit's output, and removing a block is not one. At every event
[`StructuredPruning`][lightning_prune.StructuredPruning] therefore *measures* it (Minitron's ablation, done for every
dimension):

1. `probes`: per dimension, the removal it would make next — its least important units (by the statistics)
   worth ``chunk`` parameters (or FLOPs), as the config accepts them; each kept block on its own. ``chunk`` is the
   largest of the dimensions' smallest steps (a block, where blocks are allocated) and of this event's share,
   capped by what is left to remove: every dimension is probed at the same size, so the comparison is of equal
   removals, and whatever the event then takes lies within a probe it measured.
2. `lm_loss` with each probe masked (`zeroed`: the entries its units own set to zero, restored after):
   the mean language-model loss on the last few training batches (`HeldInputs`), from which the loss of
   the model as it is is subtracted — one forward pass per batch and probe, without gradients.
3. `rates`: each dimension's measured loss per unit of size, and each block's measured loss, for
   [`allocate`][lightning_prune.structured.allocate.allocate] (``rates=``, with the blocks' losses as their scores): the
   dimension whose next removal was measured to cost the least loss per parameter gives first, a block when it costs
   less per parameter than the same size of any width.

Cost per event: (1 + blocks kept + other dimensions) × ``len(held)`` forward passes without gradients; per training
pass the inputs are kept by reference (no copy).

Examples:
    >>> plan = probes(size, units, scores, goal, stop_at, accepts=config_accepts(model))  # doctest: +SKIP
    >>> base = lm_loss(model, held)  # doctest: +SKIP
    >>> losses = []  # doctest: +SKIP
    >>> for p in plan:  # doctest: +SKIP
    ...     with zeroed(params, p.weight_masks(model, units)):
    ...         losses.append(lm_loss(model, held) - base)
    >>> dim_rates, layer_scores = rates(plan, losses, units)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_prune.structured.allocate import allocate, first_step
from lightning_prune.structured.size import Counts, SizeModel
from lightning_prune.structured.units import Units

__all__ = ["HeldInputs", "Probe", "chunk_size", "lm_loss", "probes", "rates", "zeroed"]


# ---- what to measure --------------------------------------------------------------------------------------------


@dataclass
class Probe:
    """One candidate removal: ``units`` is what would be kept; ``cost`` the size it removes (params or FLOPs)."""

    dim: str
    units: Units
    cost: float
    block: int | None = None  # the block, for a probe of the layers dimension

    def removed(self, now: Units) -> Units:
        """Keep masks that remove only what this probe adds to ``now`` (what is removed already stays kept)."""
        out = Units()
        for d in now.dims():
            mine, theirs = getattr(self.units, d), getattr(now, d)
            if isinstance(mine, Tensor):
                setattr(out, d, mine | ~theirs)
            else:
                setattr(out, d, [a | ~b for a, b in zip(mine, theirs, strict=True)])
        return out

    def weight_masks(self, model: nn.Module, now: Units) -> dict[str, Tensor]:
        """``{fqn: bool}`` of the entries the units this probe adds own (True: to be zeroed)."""
        return self.removed(now).weight_masks(model)


def chunk_size(
    size: SizeModel,
    units: Units,
    goal: float,
    stop_at: float,
    metric: str = "params",
    accepts: Callable[[Counts], bool] | None = None,
) -> float:
    """The size every dimension is probed at: the largest of the dimensions' smallest steps and of the event's share
    (``now − stop_at``), at most what is left to remove (``now − goal``)."""
    now = size.size(size.counts(units), metric)
    steps = [first_step(size, units, d, metric, accepts) for d in units.dims()]
    return min(now - goal, max([now - stop_at, *steps]))


def probes(
    size: SizeModel,
    units: Units,
    scores: Mapping[str, Sequence[Tensor] | Tensor],
    goal: float,
    stop_at: float,
    metric: str = "params",
    tolerance: float = 0.01,
    accepts: Callable[[Counts], bool] | None = None,
    dims: Sequence[str] | None = None,
) -> list[Probe]:
    """The candidate removals of an event (see the module docstring): per dimension but ``layers`` its least
    important units worth `chunk_size`, and every kept block alone (while more than one is kept).

    Args:
        size: the model's size model.
        units: what is kept now.
        scores: per dimension in use, the statistics that order its units (higher = more important).
        goal: the final size; ``stop_at``: this event's.
        metric: ``"params"`` or ``"flops"``.
        tolerance: as in [`allocate`][lightning_prune.structured.allocate.allocate], for landing a probe on its size.
        accepts: whether the config can express a [`Counts`][lightning_prune.structured.Counts].
        dims: the dimensions to probe (default: every dimension in use; the others stay as they are).
    """
    now = size.size(size.counts(units), metric)
    chunk = chunk_size(size, units, goal, stop_at, metric, accepts)
    out: list[Probe] = []
    if chunk <= 0:
        return out
    for dim in units.dims() if dims is None else dims:
        if dim == "layers":
            kept = units.layers.nonzero().flatten().tolist()
            for i in kept if len(kept) > 1 else []:
                after = units.clone()
                after.layers[i] = False
                out.append(Probe(dim, after, now - size.size(size.counts(after), metric), i))
            continue
        after = allocate(size, units, scores, now - chunk, metric, tolerance=tolerance, accepts=accepts, dims=(dim,))
        cost = now - size.size(size.counts(after), metric)
        if cost > 0:
            out.append(Probe(dim, after, cost))
    return out


def rates(probes: Sequence[Probe], losses: Sequence[float], units: Units) -> tuple[dict[str, float], Tensor | None]:
    """``({dimension: measured loss per unit of size}, per-block measured losses or None)`` from the probes and
    their measured loss increases (a non-finite loss counts as infinitely costly; blocks not probed score +inf)."""
    out: dict[str, float] = {}
    layers = torch.full((units.layers.numel(),), math.inf, dtype=torch.float64) if units.layers is not None else None
    for probe, loss in zip(probes, losses, strict=True):
        value = float(loss) if math.isfinite(float(loss)) else math.inf
        if probe.dim == "layers":
            layers[probe.block] = value
        else:
            out[probe.dim] = value / probe.cost
    return out, layers


# ---- measuring --------------------------------------------------------------------------------------------------


class HeldInputs:
    """The inputs of the last ``n`` training passes of a model (tensors by reference; a forward pre-hook keeps
    them), on which an event measures the loss of its candidate removals.

    Args:
        n: passes kept (at least 1).

    Raises:
        ValueError: for ``n < 1``.
    """

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"held inputs need n >= 1, got {n!r}.")
        self.inputs: deque[tuple[tuple[Any, ...], dict[str, Any]]] = deque(maxlen=n)

    def hook(self, model: nn.Module) -> RemovableHandle:
        """Keep the inputs of ``model``'s passes with gradients (training; validation passes are left out)."""

        def keep(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if torch.is_grad_enabled():
                self.inputs.append((_plain(args), _plain(kwargs)))

        return model.register_forward_pre_hook(keep, with_kwargs=True)

    def __len__(self) -> int:
        return len(self.inputs)

    def state_dict(self) -> list[dict[str, Any]]:
        return [{"args": _cpu(a), "kwargs": _cpu(k)} for a, k in self.inputs]

    def load_state_dict(self, state: Sequence[Mapping[str, Any]], device: torch.device | str = "cpu") -> None:
        self.inputs.clear()
        for entry in state:
            self.inputs.append((_to(tuple(entry["args"]), device), _to(dict(entry["kwargs"]), device)))


def _plain(value: Any) -> Any:
    """Tensors detached; numbers, strings and None kept; anything else (a cache object) dropped."""
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if _keeps(v)}
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value if _keeps(v))
    return value


def _keeps(value: Any) -> bool:
    return value is None or isinstance(value, (Tensor, bool, int, float, str))


def _cpu(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.cpu().clone()
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_cpu(v) for v in value]
    return value


def _to(value: Any, device: torch.device | str) -> Any:
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return tuple(_to(v, device) for v in value)
    return value


def _labels(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], Tensor) else None)
    if ids is None:
        raise ValueError(
            "the loss of a removal is measured on the model's training inputs, but its passes had neither labels "
            "nor input_ids; pass them to the model, or measure nothing (StructuredPruning(loss_batches=0))."
        )
    labels = ids.clone()
    mask = kwargs.get("attention_mask")
    if isinstance(mask, Tensor) and mask.shape == ids.shape:
        labels[mask == 0] = -100  # padding carries no loss
    return labels


@torch.no_grad()
def lm_loss(model: nn.Module, held: HeldInputs) -> float:
    """The mean language-model loss of ``model`` (in eval mode, without gradients) on the held inputs: with their
    ``labels``, or the next token of their ``input_ids`` (padding left out).

    Raises:
        ValueError: with nothing held, inputs without labels or input_ids, or a model that returns no loss.
    """
    if not len(held):
        raise ValueError("no training inputs are held yet: the loss of a removal is measured on the last passes.")
    was = model.training
    model.eval()
    try:
        total = 0.0
        for args, kwargs in held.inputs:
            kwargs = dict(kwargs)
            if kwargs.get("labels") is None:
                kwargs["labels"] = _labels(args, kwargs)
            loss = getattr(model(*args, **kwargs), "loss", None)
            if loss is None:
                raise ValueError(f"{type(model).__name__} returned no loss for labels; it must be a causal LM.")
            total += float(loss)
        return total / len(held)
    finally:
        model.train(was)


@contextmanager
def zeroed(params: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> Iterator[None]:
    """Within the block, the entries ``masks`` mark (bool, True: zero) of the tensors ``params`` (by the same keys)
    are zero; their values are restored after (only those entries are copied)."""
    saved = {}
    with torch.no_grad():
        for key, mask in masks.items():
            t, m = params[key], mask.to(params[key].device)
            saved[key] = (m, t[m].clone())
            t.masked_fill_(m, 0.0)
    try:
        yield
    finally:
        with torch.no_grad():
            for key, (m, values) in saved.items():
                params[key][m] = values

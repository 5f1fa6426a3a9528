"""Allocation across dimensions: which units to remove so the model reaches a size, by importance per parameter.

Units are what the exported config can express: one neuron *in every block* (one ``intermediate_size``), one
key/value group with its query heads in every block, one block, one residual feature, one expert in every experts
block. A step may take several units at once where the config refuses the count in between (e.g. ``hidden_size``
must stay a multiple of the head count). [`allocate`][lightning_prune.structured.allocate.allocate] removes, greedily,
the step with the least importance per unit of size removed (parameters, or FLOPs per token for a FLOPs target) until
the size is at or below the goal, never stepping further below it than ``tolerance · goal`` while a smaller step exists;
when only steps past that remain, it takes the one that lands closest to the goal, if closer than where it stands.

Importance is compared across dimensions either as it is (``comparable=True``: scores in one unit, such as the
loss estimate of the Taylor criterion or a measured loss), as shares (``comparable=False``): a unit's fraction of
its dimension's total score per fraction of that dimension's size, so that an average unit of every dimension
weighs 1 — or by measured ``rates``: the loss per unit of size that removing a dimension's least important units
was measured to cost (`ablation`), which then ranks every step of that dimension while its scores still
order its units.

Examples:
    >>> full = size.params(size.full)  # doctest: +SKIP
    >>> units = allocate(size, units, scores, goal=0.5 * full, metric="params")  # doctest: +SKIP
    >>> early = allocate(size, units, scores, goal=0.5 * full, stop_at=0.9 * full)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from lightning_prune.structured.size import Counts, SizeModel
from lightning_prune.structured.units import Units

__all__ = ["allocate", "count_field", "fewest_units", "first_step"]

_FIELD = {"neurons": "neurons", "heads": "groups", "hidden": "hidden", "experts": "experts"}


def count_field(dim: str) -> str:
    """The [`Counts`][lightning_prune.structured.Counts] field of a dimension other than ``layers``."""
    return _FIELD[dim]


@dataclass
class _Queue:
    """Removal order of one dimension: ``order[r]`` lists, per row (block), the unit indices lowest score first."""

    dim: str
    order: list[list[int]]  # per row, kept units by ascending score
    scores: list[list[float]]  # per row, scores in that order
    pos: int = 0  # units of every row taken so far

    def left(self) -> int:
        return len(self.order[0]) - self.pos if self.order else 0


def _groups(heads: Tensor, scores: Tensor, group: int) -> tuple[Tensor, Tensor]:
    """Per key/value group: kept (all its heads kept) and summed score."""
    return heads.view(-1, group).all(1), scores.float().view(-1, group).sum(1)


def _queue(dim: str, keep: list[Tensor], scores: list[Tensor]) -> _Queue:
    order, values = [], []
    for k, s in zip(keep, scores, strict=True):
        idx = k.nonzero().flatten()
        ranked = idx[torch.argsort(s.float()[idx], stable=True)]
        order.append(ranked.tolist())
        values.append(s.float()[ranked].tolist())
    return _Queue(dim, order, values)


def _queues(
    units: Units, scores: Mapping[str, Sequence[Tensor] | Tensor], group: int, dims: Sequence[str]
) -> dict[str, _Queue]:
    out = {}
    for dim in dims:
        keep, score = getattr(units, dim), scores[dim]
        if dim == "heads":
            pairs = [_groups(k, s, group) for k, s in zip(keep, score, strict=True)]
            out[dim] = _queue(dim, [p[0] for p in pairs], [p[1] for p in pairs])
        elif dim in ("layers", "hidden"):
            out[dim] = _queue(dim, [keep], [score])
        else:
            out[dim] = _queue(dim, list(keep), list(score))
    return out


def _after(counts: Counts, q: _Queue, k: int) -> Counts:
    if q.dim == "layers":
        layers = list(counts.layers)
        for i in q.order[0][q.pos : q.pos + k]:
            layers[i] = False
        return replace(counts, layers=tuple(layers))
    field = count_field(q.dim)
    return replace(counts, **{field: getattr(counts, field) - k})


def _step(q: _Queue, counts: Counts, accepts: Callable[[Counts], bool]) -> int:
    """The fewest units of ``q`` to take so the config accepts the result (0: none can be taken)."""
    for k in range(1, q.left()):  # keep at least one unit per row
        if accepts(_after(counts, q, k)):
            return k
    return 0


def _score(q: _Queue, k: int, counts: Counts) -> float:
    if q.dim in ("layers", "hidden", "experts"):
        return sum(sum(row[q.pos : q.pos + k]) for row in q.scores)
    kept = [i for i, on in enumerate(counts.layers) if on]  # neurons and heads: only blocks still there count
    return sum(sum(q.scores[i][q.pos : q.pos + k]) for i in kept)


def _take_(units: Units, q: _Queue, k: int, group: int) -> None:
    for row, order in enumerate(q.order):
        for i in order[q.pos : q.pos + k]:
            if q.dim == "heads":
                units.heads[row][i * group : (i + 1) * group] = False
            elif q.dim in ("layers", "hidden"):
                getattr(units, q.dim)[i] = False
            else:
                getattr(units, q.dim)[row][i] = False
    q.pos += k


def _shares(queues: dict[str, _Queue], size: SizeModel, counts: Counts, metric: str) -> dict[str, tuple[float, float]]:
    """Per dimension ``(total score, total size)`` of its units now: the denominators of the share ratio."""
    now = size.size(counts, metric)
    out = {}
    for dim, q in queues.items():
        total = _score(q, q.left(), counts) if q.left() else 0.0
        one = now - size.size(_after(counts, q, 1), metric) if q.left() > 1 else 0
        out[dim] = (total or 1.0, float(max(one, 1) * q.left()))
    return out


def allocate(
    size: SizeModel,
    units: Units,
    scores: Mapping[str, Sequence[Tensor] | Tensor],
    goal: float,
    metric: str = "params",
    comparable: bool = True,
    tolerance: float = 0.01,
    accepts: Callable[[Counts], bool] | None = None,
    stop_at: float | None = None,
    dims: Sequence[str] | None = None,
    rates: Mapping[str, float] | None = None,
) -> Units:
    """Remove units, lowest importance per size first, until the model is at or below ``goal`` (see the module
    docstring); units removed in ``units`` stay removed.

    With ``stop_at`` (above ``goal``), the removal is planned toward ``goal`` but stops once the size is at or below
    ``stop_at``: the first steps of that plan, the least important ones. A progressive schedule takes these at every
    event, so a coarse unit (a block) that the final plan removes first is taken early, even past ``stop_at``,
    instead of never fitting into one event's small share.

    Args:
        size: the model's [`SizeModel`][lightning_prune.structured.SizeModel].
        units: what is kept now; its dimensions in use are the ones allocated.
        scores: per dimension in use, scores in the shape of its masks (higher = more important).
        goal: the size to reach, in ``metric`` units.
        metric: ``"params"`` or ``"flops"``.
        comparable: scores share one unit across dimensions; else they are compared as shares.
        tolerance: how far below ``goal`` (a fraction of it) a step may land while a smaller one exists.
        accepts: whether the config can express a [`Counts`][lightning_prune.structured.Counts] (default: all).
        stop_at: stop the plan toward ``goal`` once the size is at or below this (default: ``goal``).
        dims: the dimensions to remove from (default: every dimension in use); the others stay as they are.
        rates: per dimension, a measured loss per unit of ``metric`` that ranks all its steps instead of
            score / size (its scores still order its units); needs ``comparable`` scores for the rest.

    Returns:
        New units (the input is not changed).

    Raises:
        ValueError: for a metric other than params/flops, dimensions not in use, scores missing for a dimension
            allocated, or rates with ``comparable=False``.
    """
    if metric not in ("params", "flops"):
        raise ValueError(f"metric must be 'params' or 'flops', got {metric!r}.")
    use = list(units.dims() if dims is None else dims)
    if not set(use) <= set(units.dims()):
        raise ValueError(f"dims {use} must be among the dimensions in use {units.dims()}.")
    missing = [d for d in use if d not in scores]
    if missing:
        raise ValueError(f"no scores for the dimensions {missing}; give scores for every dimension allocated.")
    rates = dict(rates or {})
    if rates and not comparable:
        raise ValueError("measured rates are loss per size: give comparable scores (comparable=True) with them.")
    accepts = accepts or (lambda _: True)
    units = units.clone()
    queues = _queues(units, scores, size.group, use)
    counts = size.counts(units)
    shares = _shares(queues, size, counts, metric) if not comparable else {}
    now = size.size(counts, metric)
    stop_at = goal if stop_at is None else max(goal, stop_at)
    while now > stop_at:
        candidates = []  # (ratio, cost, after, dim, k)
        for dim, q in queues.items():
            k = _step(q, counts, accepts)
            after = _after(counts, q, k) if k else None
            cost = now - size.size(after, metric) if k else 0
            if cost <= 0:
                continue
            score = _score(q, k, counts)
            if dim in rates:
                ratio = rates[dim]
            elif comparable:
                ratio = score / cost
            else:
                ratio = (score / shares[dim][0]) / (cost / shares[dim][1])
            candidates.append((ratio, cost, after, dim, k))
        if not candidates:
            break
        fits = [c for c in candidates if now - c[1] >= goal * (1 - tolerance)]
        if fits:
            _, cost, counts, dim, k = min(fits, key=lambda c: (c[0], c[1]))
        else:  # every step lands past the tolerance: take the closest, if it is closer than where we are
            _, cost, after, dim, k = min(candidates, key=lambda c: abs(now - c[1] - goal))
            if abs(now - cost - goal) >= abs(now - goal):
                break
            counts = after
        _take_(units, queues[dim], k, size.group)
        now -= cost
    return units


def fewest_units(size: SizeModel, units: Units, accepts: Callable[[Counts], bool] | None = None) -> Units:
    """Everything removed that may be: at least one unit per block and dimension, counts the config accepts."""
    ones = {d: [torch.ones_like(m, dtype=torch.float) for m in _rows(getattr(units, d))] for d in units.dims()}
    scores = {d: v[0] if d in ("layers", "hidden") else v for d, v in ones.items()}
    return allocate(size, units, scores, goal=0.0, tolerance=1.0, accepts=accepts)


def first_step(
    size: SizeModel, units: Units, dim: str, metric: str = "params", accepts: Callable[[Counts], bool] | None = None
) -> float:
    """The size (in ``metric``) of the smallest removal ``dim`` can make now, in units the config accepts (0: none)."""
    zeros = [torch.zeros(m.shape) for m in _rows(getattr(units, dim))]
    q = _queues(units, {dim: zeros[0] if dim in ("layers", "hidden") else zeros}, size.group, [dim])[dim]
    counts = size.counts(units)
    k = _step(q, counts, accepts or (lambda _: True))
    return size.size(counts, metric) - size.size(_after(counts, q, k), metric) if k else 0.0


def _rows(value: Tensor | list[Tensor]) -> list[Tensor]:
    return [value] if isinstance(value, Tensor) else list(value)

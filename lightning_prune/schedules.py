"""Sparsity schedules: pure functions of the training position.

A schedule answers one question: what fraction of the selected weights should be zero now? Sparsity is
always the *target fraction of zeros* (never an increment of what remains). Each schedule counts either
optimizer steps (``unit="step"``, ``trainer.global_step``) or epochs (``unit="epoch"``,
``trainer.current_epoch``); a point ``t`` means "from the start of step/epoch ``t`` on".

Example:
    >>> AtEpochs({2: 0.3, 4: 0.5, 6: 0.6})(3)
    0.3
    >>> round(Cubic(final=0.8, start=0, end=100)(50), 6)
    0.7
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "AtEpochs",
    "AtSteps",
    "Cubic",
    "Linear",
    "OneShot",
    "Schedule",
    "Unit",
    "cubic_sparsity",
    "linear_sparsity",
    "piecewise_sparsity",
]

Unit = Literal["step", "epoch"]


def check_sparsity(value: float, what: str = "sparsity") -> float:
    """Return ``value`` as a float if it lies in [0, 1), else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{what} must be a fraction of zeros in [0, 1), got {value!r}.")
    return float(value)


def piecewise_sparsity(points: Mapping[int, float], t: int) -> float:
    """Sparsity of the latest point at or before ``t`` (0 before the first point)."""
    reached = [p for p in points if p <= t]
    return float(points[max(reached)]) if reached else 0.0


def cubic_sparsity(t: int, final: float, start: int, end: int, initial: float = 0.0, every: int = 1) -> float:
    """Gradual pruning of Zhu & Gupta (2017), "To prune, or not to prune".

    s_t = s_f + (s_0 - s_f) * (1 - (t' - t_0) / (t_end - t_0))^3, where t' is ``t`` rounded down to the last
    update point t_0 + k * every. Before ``start`` the sparsity is 0; from ``end`` on it is ``final``.
    """
    if t < start:
        return 0.0
    if t >= end:
        return final
    t = start + (t - start) // every * every  # 1. hold the value between updates
    progress = (t - start) / (end - start)  # 2. fraction of the pruning window done
    return final + (initial - final) * (1.0 - progress) ** 3  # 3. fast early, slow late


def linear_sparsity(t: int, final: float, start: int, end: int, initial: float = 0.0, every: int = 1) -> float:
    """s_t = s_0 + (s_f - s_0) * (t' - t_0) / (t_end - t_0), with t' as in :func:`cubic_sparsity`."""
    if t < start:
        return 0.0
    if t >= end:
        return final
    t = start + (t - start) // every * every
    return initial + (final - initial) * (t - start) / (end - start)


class Schedule:
    """Base of all schedules: ``schedule(t)`` is the target sparsity at position ``t``."""

    unit: Unit

    def __call__(self, t: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def last(self) -> int:
        """The last position at which the target changes (must lie inside the run)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def end_sparsity(self) -> float:
        """The sparsity reached at the end of the schedule."""
        return self(self.last())

    def check_fits(self, max_epochs: int | None, max_steps: int | None) -> None:
        """Raise ``ValueError`` if the schedule's last change lies past the end of the run."""
        limit = max_epochs if self.unit == "epoch" else max_steps
        if limit is None or limit < 0:
            return
        if self.last() >= limit:
            name = "max_epochs" if self.unit == "epoch" else "max_steps"
            raise ValueError(
                f"{type(self).__name__} changes sparsity at {self.unit} {self.last()}, but the run has {name}={limit}"
                f" ({self.unit}s 0..{limit - 1}). Move the point before {limit} or raise {name}."
            )


def _check_points(points: Mapping[int, float], unit: str) -> dict[int, float]:
    if not points:
        raise ValueError(f"a schedule needs at least one {{{unit}: sparsity}} point, got {dict(points)!r}.")
    clean: dict[int, float] = {}
    for t, s in sorted((int(t), s) for t, s in points.items()):
        if t < 0:
            raise ValueError(f"{unit} points must be >= 0, got {t}.")
        clean[t] = check_sparsity(s, f"sparsity at {unit} {t}")
    values = list(clean.values())
    if any(b < a for a, b in zip(values, values[1:])):
        raise ValueError(f"sparsity must not decrease along the schedule (pruned weights stay pruned), got {clean}.")
    return clean


@dataclass
class _Points(Schedule):
    points: dict[int, float]  # {position: target sparsity from that position on}

    def __post_init__(self) -> None:
        self.points = _check_points(self.points, self.unit)

    def __call__(self, t: int) -> float:
        return piecewise_sparsity(self.points, t)

    def last(self) -> int:
        return max(self.points)


@dataclass
class AtEpochs(_Points):
    """Sparsity set at the start of given epochs, e.g. ``AtEpochs({2: 0.3, 4: 0.5, 6: 0.6})``."""

    unit: Unit = field(default="epoch", init=False)


@dataclass
class AtSteps(_Points):
    """Sparsity set at given optimizer steps, e.g. ``AtSteps({100: 0.5, 200: 0.7})``."""

    unit: Unit = field(default="step", init=False)


@dataclass
class _Gradual(Schedule):
    final: float  # target sparsity reached at `end`
    start: int  # first position at which pruning begins
    end: int  # position from which `final` holds
    initial: float = 0.0  # sparsity at `start`
    every: int = 1  # positions between mask updates (Δt)
    unit: Unit = "step"  # "step" (global_step) or "epoch" (current_epoch)

    def __post_init__(self) -> None:
        check_sparsity(self.final, "final")
        check_sparsity(self.initial, "initial")
        if self.initial > self.final:
            raise ValueError(f"initial={self.initial} must not exceed final={self.final}.")
        if not 0 <= self.start < self.end:
            raise ValueError(f"need 0 <= start < end, got start={self.start}, end={self.end}.")
        if self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every}.")
        if self.unit not in ("step", "epoch"):
            raise ValueError(f"unit must be 'step' or 'epoch', got {self.unit!r}.")

    def last(self) -> int:
        return self.end


@dataclass
class Cubic(_Gradual):
    """Cubic gradual pruning (Zhu & Gupta 2017); see :func:`cubic_sparsity`."""

    def __call__(self, t: int) -> float:
        return cubic_sparsity(t, self.final, self.start, self.end, self.initial, self.every)


@dataclass
class Linear(_Gradual):
    """Linear ramp of sparsity from ``initial`` at ``start`` to ``final`` at ``end``."""

    def __call__(self, t: int) -> float:
        return linear_sparsity(t, self.final, self.start, self.end, self.initial, self.every)


@dataclass
class OneShot(Schedule):
    """Prune once to ``sparsity`` at position ``at``."""

    sparsity: float  # target sparsity
    at: int = 0  # position of the single pruning event
    unit: Unit = "epoch"  # "step" or "epoch"

    def __post_init__(self) -> None:
        check_sparsity(self.sparsity)
        if self.at < 0:
            raise ValueError(f"at must be >= 0, got {self.at}.")
        if self.unit not in ("step", "epoch"):
            raise ValueError(f"unit must be 'step' or 'epoch', got {self.unit!r}.")

    def __call__(self, t: int) -> float:
        return self.sparsity if t >= self.at else 0.0

    def last(self) -> int:
        return self.at

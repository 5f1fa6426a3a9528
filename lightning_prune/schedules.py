"""Sparsity schedules: pure functions of the training position.

A schedule answers one question: what fraction of the selected weights should be zero now? Sparsity is
always the *target fraction of zeros* (never an increment of what remains). Each schedule counts either
optimizer steps (``unit="step"``, ``trainer.global_step``: with ``accumulate_grad_batches=k`` one step is k
batches) or epochs (``unit="epoch"``, ``trainer.current_epoch``); a point ``t`` means "from the start of step/epoch
``t`` on". A weight writer reads the values as sparsity (the fraction removed); ``StructuredPruning`` reads them as
the fraction of the way to its size target (ending at 1).

Examples:
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
    "Run",
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


def check_value(value: float, what: str) -> float:
    """Return a schedule's value as a float if it lies in [0, 1], else raise ``ValueError``.

    A schedule may reach 1: read as a fraction of the way to a size (``StructuredPruning``) that is the target
    itself. A writer of weight sparsity refuses a schedule that ends at 1 (every weight pruned) on its own.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(
            f"{what} must be in [0, 1] (a fraction of zeros, or of the way to a size target), got {value!r}."
        )
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
    """s_t = s_0 + (s_f - s_0) * (t' - t_0) / (t_end - t_0), with t' as in
    [`cubic_sparsity`][lightning_prune.schedules.cubic_sparsity]."""
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

    def first(self) -> int:
        """The first position at which the target is above zero (the first pruning event)."""
        t = 0
        while self(t) <= 0.0 and t < self.last():
            t += 1
        return t

    def check_fits(self, max_epochs: int | None, max_steps: int | None, steps_per_epoch: int | None = None) -> None:
        """Raise ``ValueError`` if the schedule's last change lies past the end of the run.

        Args:
            max_epochs: the Trainer's ``max_epochs`` (None or -1: unbounded).
            max_steps: the Trainer's ``max_steps`` (None or -1: unbounded).
            steps_per_epoch: optimizer steps per epoch when known (then each limit also bounds the other unit).
        """
        run = Run.of(max_epochs, max_steps, steps_per_epoch)
        limit = run.epochs if self.unit == "epoch" else run.steps
        if limit is None or self.last() < limit:
            return
        name = type(self).__name__
        raise ValueError(
            f"{name} changes sparsity at {self.unit} {self.last()}, but the run has only {self.unit}s 0..{limit - 1} "
            f"({run.why(self.unit)}). Move the point before {self.unit} {limit}, or let the run reach it: "
            f"{run.needed(self.unit, self.last())}."
        )


@dataclass(frozen=True)
class Run:
    """How far a run goes: the epochs it starts and the optimizer steps it takes (None: unbounded or not known)."""

    epochs: int | None
    steps: int | None
    max_epochs: int | None = None  # the Trainer's limits as given (None: unbounded)
    max_steps: int | None = None
    steps_per_epoch: int | None = None

    @staticmethod
    def of(max_epochs: int | None, max_steps: int | None, steps_per_epoch: int | None = None) -> Run:
        """The run of a Trainer with these limits; with ``steps_per_epoch`` each limit bounds the other unit too."""
        max_epochs = max_epochs if max_epochs is not None and max_epochs >= 0 else None
        max_steps = max_steps if max_steps is not None and max_steps >= 0 else None
        epochs, steps = max_epochs, max_steps
        if steps_per_epoch:
            if max_epochs is not None:
                steps = min(steps, max_epochs * steps_per_epoch) if steps is not None else max_epochs * steps_per_epoch
            if max_steps is not None:
                started = -(-max_steps // steps_per_epoch)  # epochs with at least one step
                epochs = min(epochs, started) if epochs is not None else started
        return Run(epochs, steps, max_epochs, max_steps, steps_per_epoch)

    def why(self, unit: str) -> str:
        """Which limit ends the run in ``unit``."""
        per = f"{self.steps_per_epoch} optimizer steps per epoch"
        if unit == "epoch":
            if self.max_epochs is not None and self.epochs == self.max_epochs:
                return f"max_epochs={self.max_epochs}"
            return f"max_steps={self.max_steps} at {per}"
        if self.max_steps is not None and self.steps == self.max_steps:
            return f"max_steps={self.max_steps}"
        return f"max_epochs={self.max_epochs} at {per}"

    def needed(self, unit: str, point: int) -> str:
        """The Trainer limits that let the run reach ``point`` (in ``unit``), as arguments to pass."""
        spe = self.steps_per_epoch
        steps = point + 1 if unit == "step" else (point * spe + 1 if spe else None)
        epochs = point + 1 if unit == "epoch" else (-(-(point + 1) // spe) if spe else None)
        flags = []
        if self.max_epochs is not None and epochs is not None and self.max_epochs < epochs:
            flags.append(f"max_epochs={epochs} (--trainer.max_epochs {epochs})")
        if self.max_steps is not None and steps is not None and self.max_steps < steps:
            flags.append(f"max_steps={steps} (--trainer.max_steps {steps})")
        return " and ".join(flags) or "a longer run"


def _check_points(points: Mapping[int, float], unit: str) -> dict[int, float]:
    if not points:
        raise ValueError(f"a schedule needs at least one {{{unit}: sparsity}} point, got {dict(points)!r}.")
    clean: dict[int, float] = {}
    for t, s in sorted((int(t), s) for t, s in points.items()):
        if t < 0:
            raise ValueError(f"{unit} points must be >= 0, got {t}.")
        clean[t] = check_value(s, f"the value at {unit} {t}")
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

    def first(self) -> int:
        return min((t for t, s in self.points.items() if s > 0), default=self.last())


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
        check_value(self.final, "final")
        check_value(self.initial, "initial")
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

    def first(self) -> int:
        return self.start if self.initial > 0 else min(self.start + self.every, self.end)


@dataclass
class Cubic(_Gradual):
    """Cubic gradual pruning (Zhu & Gupta 2017); see [`cubic_sparsity`][lightning_prune.schedules.cubic_sparsity]."""

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
        check_value(self.sparsity, "sparsity")
        if self.at < 0:
            raise ValueError(f"at must be >= 0, got {self.at}.")
        if self.unit not in ("step", "epoch"):
            raise ValueError(f"unit must be 'step' or 'epoch', got {self.unit!r}.")

    def __call__(self, t: int) -> float:
        return self.sparsity if t >= self.at else 0.0

    def last(self) -> int:
        return self.at

    def first(self) -> int:
        return self.at

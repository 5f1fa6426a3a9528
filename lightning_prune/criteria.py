"""Importance criteria: pure score functions. A higher score means a more important weight.

Each criterion maps ``(fqn, weight, stats)`` to a score tensor shaped like the weight, where ``stats`` is
the :class:`~lightning_prune.trackers.RunningStats` of the run (or None for criteria that need none).

=====================  ===========================================  =============================================
name                   score                                        source
=====================  ===========================================  =============================================
``magnitude``          |w| now (one snapshot)                       Han et al. 2015, "Learning both weights..."
``running_magnitude``  EMA of |w| over steps                        running statistics of this library
``time_weighted``      Σ_i √i·|w_i| / Σ_i √i over epoch snapshots   Islam et al., arXiv 2502.17071
``gradient``           EMA of |g| over steps                        gradient-magnitude saliency
``taylor``             Σ_t |w_t·g_t|                                Molchanov et al. 2019, first-order Taylor
``movement``           −Σ_t w_t·g_t                                 Sanh et al. 2020, "Movement Pruning"
``wanda``              |w_ij| · √EMA(mean_t x_j²) over passes      Sun et al. 2023 (Wanda), as a running statistic
``platon``             Ī·Ū: EMA of |w·g| × EMA of its deviation     Zhang et al. 2022 (PLATON), upper confidence bound
``random``             uniform noise, seeded per fqn                baseline
=====================  ===========================================  =============================================

PLATON's betas (β₁ = 0.85 of Ī, β₂ = 0.95 of Ū, the paper's) are
:data:`~lightning_prune.trackers.PLATON_BETAS`; see :mod:`lightning_prune.trackers` for the recursion.

A user criterion is any callable ``fn(fqn, weight, stats) -> Tensor``; give it a ``stats`` attribute (a
tuple of statistic names) to have the tracker keep what it reads.

Example:
    >>> crit = get_criterion("magnitude")
    >>> crit("w", torch.tensor([-2.0, 1.0]), None)
    tensor([2., 1.])
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_prune.trackers import RunningStats

__all__ = ["CRITERIA", "Criterion", "RandomScore", "StatScore", "get_criterion"]

ScoreFn = Callable[[str, Tensor, "RunningStats | None"], Tensor]


@dataclass(frozen=True)
class Criterion:
    """A named score function and the running statistics it reads."""

    name: str  # how recipes and logs refer to it
    fn: ScoreFn  # (fqn, weight, stats) -> score shaped like weight
    stats: tuple[str, ...] = ()  # statistics the tracker must keep for it

    def __call__(self, fqn: str, weight: Tensor, stats: RunningStats | None) -> Tensor:
        if self.stats and stats is None:
            raise RuntimeError(
                f"criterion {self.name!r} reads running statistics {self.stats}: add an ImportanceTracking callback."
            )
        return self.fn(fqn, weight, stats)


def _magnitude(fqn: str, weight: Tensor, stats: RunningStats | None) -> Tensor:
    return weight.detach().abs().float()


@dataclass(frozen=True)
class StatScore:
    """Score = ``sign`` × a running statistic of the tracker (a class, not a closure, so it pickles)."""

    stat: str  # name in lightning_prune.trackers.STATS
    sign: float = 1.0  # -1 turns "lower is more important" into a score

    def __call__(self, fqn: str, weight: Tensor, stats: RunningStats | None) -> Tensor:
        assert stats is not None
        return self.sign * stats.value(self.stat, fqn)


def _wanda(fqn: str, weight: Tensor, stats: RunningStats | None) -> Tensor:
    assert stats is not None
    return weight.detach().abs().float() * stats.input_scale(fqn)


@dataclass(frozen=True)
class RandomScore:
    """Uniform random scores, seeded from ``seed`` and the fqn so every process draws the same."""

    seed: int = 0

    def __call__(self, fqn: str, weight: Tensor, stats: RunningStats | None) -> Tensor:
        gen = torch.Generator().manual_seed(self.seed + zlib.crc32(fqn.encode()))
        return torch.rand(weight.shape, generator=gen).to(weight.device)


CRITERIA: dict[str, Criterion] = {
    c.name: c
    for c in (
        Criterion("magnitude", _magnitude),
        Criterion("running_magnitude", StatScore("abs_weight"), ("abs_weight",)),
        Criterion("time_weighted", StatScore("time_weighted"), ("time_weighted",)),
        Criterion("gradient", StatScore("abs_grad"), ("abs_grad",)),
        Criterion("taylor", StatScore("taylor"), ("taylor",)),
        Criterion("movement", StatScore("movement", sign=-1.0), ("movement",)),
        Criterion("wanda", _wanda, ("input_norm",)),
        Criterion("platon", StatScore("platon"), ("platon",)),
        Criterion("random", RandomScore()),
    )
}


def get_criterion(criterion: str | Criterion | ScoreFn) -> Criterion:
    """Resolve a criterion name, :class:`Criterion` or plain callable.

    Raises:
        ValueError: for an unknown name (the message lists the known ones).
    """
    if isinstance(criterion, Criterion):
        return criterion
    if isinstance(criterion, str):
        if criterion not in CRITERIA:
            raise ValueError(f"unknown criterion {criterion!r}; known: {sorted(CRITERIA)}, or pass a callable.")
        return CRITERIA[criterion]
    if callable(criterion):
        name = getattr(criterion, "__name__", type(criterion).__name__)
        return Criterion(name, criterion, tuple(getattr(criterion, "stats", ())))
    raise ValueError(f"criterion must be a name, a Criterion or a callable, got {criterion!r}.")

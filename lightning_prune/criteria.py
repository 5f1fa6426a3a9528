"""Importance criteria, weights and neurons in one registry. A higher score means more important.

A [`Criterion`][lightning_prune.Criterion] is a named score function, the running statistics it reads and the *unit* it
scores:

- ``unit="weights"``: ``fn(fqn, weight, stats) -> scores`` shaped like the weight, where ``stats`` is the run's
  `RunningStats` (None for criteria that need none);
- ``unit="neurons"``: ``fn(layer, inputs) -> scores (n,)`` over one block's feed-forward neurons, where
  ``inputs`` is a [`NeuronInputs`][lightning_prune.criteria.NeuronInputs] (running neuron statistics, the layer's
  weights); a criterion that selects rather than ranks (mutual information: one of each redundant pair) also gives
  ``select``.

Weights (``get_criterion(name)``):

| name | score | source |
| --- | --- | --- |
| ``magnitude`` | `|w|` now (one snapshot) | Han et al. 2015, "Learning both weights..." |
| ``running_magnitude`` | EMA of `|w|` over steps | running statistics of this library |
| ``time_weighted`` | Σ_i √i·`|w_i|` / Σ_i √i over epoch snapshots | Islam et al., arXiv 2502.17071 |
| ``gradient`` | EMA of `|g|` over steps | gradient-magnitude saliency |
| ``taylor`` | Σ_t `|w_t·g_t|` | Molchanov et al. 2019, first-order Taylor |
| ``movement`` | −Σ_t w_t·g_t | Sanh et al. 2020, "Movement Pruning" |
| ``wanda`` | `|w_ij|` · √EMA(mean_t x_j²) over passes | Sun et al. 2023 (Wanda), as a running statistic |
| ``platon`` | Ī·Ū: EMA of `|w·g|` × EMA of its deviation | Zhang et al. 2022 (PLATON), upper confidence bound |
| ``random`` | uniform noise, seeded per fqn | baseline |

Neurons (``get_criterion(name, unit="neurons")``, [`NeuronPruning`][lightning_prune.NeuronPruning]):

| name | score |
| --- | --- |
| ``activation`` | running mean `|activation|` |
| ``taylor`` | running mean `|activation · ∂L/∂activation|` (Molchanov et al. 2017) |
| ``weight_norm`` | ‖incoming weights‖₂ · ‖outgoing weights‖₂ (the tracker's running `|w|` when it keeps it) |
| ``mutual_information`` | one of each redundant pair goes first (arXiv 2406.00030), then the lowest activation |

PLATON's betas (β₁ = 0.85 of Ī, β₂ = 0.95 of Ū, the paper's) are
`PLATON_BETAS`; see `lightning_prune.trackers` for the recursion.

A user criterion is any callable ``fn(fqn, weight, stats) -> Tensor`` (give it a ``stats`` attribute, a tuple of
statistic names, to have the tracker keep what it reads), or a [`Criterion`][lightning_prune.Criterion] added with
[`register`][lightning_prune.criteria.register].

Examples:
    >>> crit = get_criterion("magnitude")
    >>> crit("w", torch.tensor([-2.0, 1.0]), None)
    tensor([2., 1.])
    >>> get_criterion("taylor", unit="neurons").stats
    ('taylor',)
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_prune.trackers import RunningStats

__all__ = [
    "CRITERIA",
    "NEURON_CRITERIA",
    "UNITS",
    "Criterion",
    "NeuronInputs",
    "RandomScore",
    "StatScore",
    "get_criterion",
    "names",
    "register",
]

ScoreFn = Callable[[str, Tensor, "RunningStats | None"], Tensor]


UNITS = ("weights", "neurons")  # what a criterion scores


@dataclass(frozen=True)
class NeuronInputs:
    """What a neuron criterion reads for one model: running neuron statistics and each block's weights."""

    stats: Any  # lightning_prune.neurons.NeuronStats
    norms: Sequence[tuple[Tensor, Tensor]] | None = None  # per block (w_in (n, ·), w_out (n, ·)), for weight norms
    threshold: float = 0.0  # normalised mutual information above which a pair is redundant


@dataclass(frozen=True)
class Criterion:
    """A named score function, the running statistics it reads and the unit it scores (see the module docstring)."""

    name: str  # how recipes and logs refer to it
    fn: Callable[..., Tensor]  # weights: (fqn, weight, stats) -> scores; neurons: (layer, NeuronInputs) -> (n,)
    stats: tuple[str, ...] = ()  # statistics the tracker (or NeuronStats) must keep for it
    unit: str = "weights"  # "weights" or "neurons"
    select: Callable[..., Tensor] | None = None  # neurons only: (layer, candidates, n_remove, inputs) -> drop

    def __call__(self, *args: Any) -> Tensor:
        if self.unit == "weights" and self.stats and args[2] is None:
            raise RuntimeError(
                f"criterion {self.name!r} reads running statistics {self.stats}: add an ImportanceTracking callback."
            )
        return self.fn(*args)


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


def _neuron_stat(stat: str) -> Callable[[int, NeuronInputs], Tensor]:
    def score(layer: int, inputs: NeuronInputs) -> Tensor:
        if int(inputs.stats.counts[stat][layer]) == 0:
            raise ValueError(f"no {stat} statistics for layer {layer} yet: prune after at least one training step.")
        return getattr(inputs.stats, stat)[layer].float().cpu()

    return score


def _weight_norm(layer: int, inputs: NeuronInputs) -> Tensor:
    from lightning_prune.mutual_information import weight_norm_scores

    return weight_norm_scores(*inputs.norms[layer]).cpu()


def _redundant(layer: int, candidates: Tensor, n_remove: int, inputs: NeuronInputs) -> Tensor:
    """The candidates mutual information removes: one of each redundant pair, then the lowest activation."""
    from lightning_prune.mutual_information import redundant_neurons

    acts = inputs.stats.kept_samples(layer).float().cpu()[:, candidates]
    if acts.shape[0] < 2:
        raise ValueError(f"layer {layer}: mutual information needs at least 2 sampled tokens, got {acts.shape[0]}.")
    importance = _neuron_stat("activation")(layer, inputs)[candidates]
    return candidates[~redundant_neurons(acts, n_remove, threshold=inputs.threshold, importance=importance)]


_REGISTRY: dict[tuple[str, str], Criterion] = {}


def register(criterion: Criterion) -> Criterion:
    """Add a criterion to the registry (replacing one of the same name and unit); returns it.

    Raises:
        ValueError: for an unknown unit.
    """
    if criterion.unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {criterion.unit!r}.")
    _REGISTRY[(criterion.unit, criterion.name)] = criterion
    return criterion


for _c in (
    Criterion("magnitude", _magnitude),
    Criterion("running_magnitude", StatScore("abs_weight"), ("abs_weight",)),
    Criterion("time_weighted", StatScore("time_weighted"), ("time_weighted",)),
    Criterion("gradient", StatScore("abs_grad"), ("abs_grad",)),
    Criterion("taylor", StatScore("taylor"), ("taylor",)),
    Criterion("movement", StatScore("movement", sign=-1.0), ("movement",)),
    Criterion("wanda", _wanda, ("input_norm",)),
    Criterion("platon", StatScore("platon"), ("platon",)),
    Criterion("random", RandomScore()),
    Criterion("activation", _neuron_stat("activation"), ("activation",), unit="neurons"),
    Criterion("taylor", _neuron_stat("taylor"), ("taylor",), unit="neurons"),
    Criterion("weight_norm", _weight_norm, unit="neurons"),
    Criterion(
        "mutual_information", _neuron_stat("activation"), ("activation", "samples"), unit="neurons", select=_redundant
    ),
):
    register(_c)


def names(unit: str = "weights") -> tuple[str, ...]:
    """The registered criteria of a unit, by name."""
    return tuple(n for u, n in _REGISTRY if u == unit)


CRITERIA: dict[str, Criterion] = {n: _REGISTRY[("weights", n)] for n in names("weights")}  # the built-in weights'
NEURON_CRITERIA = names("neurons")


def get_criterion(criterion: str | Criterion | ScoreFn, unit: str = "weights") -> Criterion:
    """Resolve a criterion name (of ``unit``), [`Criterion`][lightning_prune.Criterion] or plain callable (a weights
    criterion).

    Raises:
        ValueError: for an unknown name (the message lists the known ones) or a criterion of another unit.
    """
    if isinstance(criterion, Criterion):
        if criterion.unit != unit:
            raise ValueError(f"criterion {criterion.name!r} scores {criterion.unit}, not {unit}.")
        return criterion
    if isinstance(criterion, str):
        if (unit, criterion) not in _REGISTRY:
            raise ValueError(
                f"unknown {'neuron ' if unit == 'neurons' else ''}criterion {criterion!r}; known: "
                f"{sorted(names(unit))}" + (", or pass a callable." if unit == "weights" else ".")
            )
        return _REGISTRY[(unit, criterion)]
    if callable(criterion) and unit == "weights":
        name = getattr(criterion, "__name__", type(criterion).__name__)
        return Criterion(name, criterion, tuple(getattr(criterion, "stats", ())))
    raise ValueError(f"criterion must be a name, a Criterion or a callable, got {criterion!r}.")

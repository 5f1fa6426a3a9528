"""Exponential moving averages of |w| and |g| over optimizer steps: ``abs_weight`` and ``abs_grad``."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from lightning_prune._compat import foreach_abs
from lightning_prune.trackers.accumulate import Accumulator
from lightning_prune.trackers.base import Step, StepStatistic, zeros_like

__all__ = ["AbsGrad", "AbsWeight"]


class _AbsEMA(StepStatistic):
    """EMA of |x| for x read from each step: m_1 = |x_1|, m_n = β·m_{n-1} + (1-β)·|x_n|."""

    def __init__(self, params: Mapping[str, Tensor], accumulator: Accumulator, decay: float) -> None:
        self.accumulator, self.decay = accumulator, decay
        self.state = zeros_like(params, accumulator.dtype)  # {fqn: m}

    def read(self, step: Step) -> list[Tensor]:
        """The x of this step, float32, one per fqn."""
        raise NotImplementedError

    def update(self, step: Step) -> None:
        self.accumulator.ema_(self.name, self.state, foreach_abs(self.read(step)), self.decay, step.first, step.counter)

    def tensors(self) -> dict[str, dict[str, Tensor]]:
        return {self.name: self.state}

    def value(self, fqn: str) -> Tensor:
        return self.state[fqn].float()


class AbsWeight(_AbsEMA):
    """``abs_weight``: exponential moving average of |w| over optimizer steps, from the first step's value:

        m_1 = |w_1|,  m_n = β·m_{n-1} + (1-β)·|w_n|

    Args:
        params: ``{fqn: weight}``; only shapes and devices are read.
        accumulator: folds the values into state of its dtype.
        decay: β, in [0, 1).

    Examples:
        >>> stat = AbsWeight({"w": torch.zeros(2)}, Accumulator(torch.float32), decay=0.5)
        >>> stat.update(Step([torch.tensor([1.0, -2.0])], [], first=True, counter=1))
        >>> stat.update(Step([torch.tensor([3.0, 0.0])], [], first=False, counter=2))
        >>> stat.value("w").tolist()
        [2.0, 1.0]
    """

    name = "abs_weight"
    reads_grads = False

    def read(self, step: Step) -> list[Tensor]:
        return step.weights


class AbsGrad(_AbsEMA):
    """``abs_grad``: exponential moving average of |g| over optimizer steps, the recursion of `AbsWeight`:

        m_1 = |g_1|,  m_n = β·m_{n-1} + (1-β)·|g_n|

    Args:
        params: ``{fqn: weight}``; only shapes and devices are read.
        accumulator: folds the values into state of its dtype.
        decay: β, in [0, 1).
    """

    name = "abs_grad"

    def read(self, step: Step) -> list[Tensor]:
        return step.grads

"""Running sums of the products w·g over optimizer steps: ``movement`` and ``taylor``."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from lightning_prune.trackers.accumulate import Accumulator
from lightning_prune.trackers.base import Step, StepStatistic, zeros_like

__all__ = ["Movement", "Taylor"]


class _ProductSum(StepStatistic):
    """Running sum from zero of a product read from each step: s_n = s_{n-1} + x_n."""

    def __init__(self, params: Mapping[str, Tensor], accumulator: Accumulator) -> None:
        self.accumulator = accumulator
        self.state = zeros_like(params, accumulator.dtype)  # {fqn: s}

    def read(self, step: Step) -> list[Tensor]:
        """The x of this step, float32, one per fqn."""
        raise NotImplementedError

    def update(self, step: Step) -> None:
        self.accumulator.add_(self.name, self.state, self.read(step), step.counter)

    def tensors(self) -> dict[str, dict[str, Tensor]]:
        return {self.name: self.state}

    def value(self, fqn: str) -> Tensor:
        return self.state[fqn].float()


class Movement(_ProductSum):
    """``movement``: running sum over optimizer steps of w·g, from zero (movement pruning scores −Σ w·g, Sanh et
    al. 2020):

        s_n = Σ_{t≤n} w_t·g_t

    Args:
        params: ``{fqn: weight}``; only shapes and devices are read.
        accumulator: folds the values into state of its dtype.

    Examples:
        >>> stat = Movement({"w": torch.zeros(2)}, Accumulator(torch.float32))
        >>> stat.update(Step([torch.tensor([1.0, -2.0])], [torch.tensor([0.5, -1.0])], first=True, counter=1))
        >>> stat.update(Step([torch.tensor([3.0, -4.0])], [torch.tensor([-1.5, 0.5])], first=False, counter=2))
        >>> stat.value("w").tolist()
        [-4.0, 0.0]
    """

    name = "movement"

    def read(self, step: Step) -> list[Tensor]:
        return step.products()


class Taylor(_ProductSum):
    """``taylor``: running sum over optimizer steps of |w·g|, from zero (first-order Taylor importance, Molchanov
    et al. 2019):

        s_n = Σ_{t≤n} |w_t·g_t|

    Args:
        params: ``{fqn: weight}``; only shapes and devices are read.
        accumulator: folds the values into state of its dtype.
    """

    name = "taylor"

    def read(self, step: Step) -> list[Tensor]:
        return step.sensitivity()

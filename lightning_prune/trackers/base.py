"""What every running statistic is: state tensors per fqn, the value read from them, and a checkpoint; and what
one optimizer step hands the statistics that read steps (`Step`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from lightning_prune._compat import foreach_abs_, foreach_mul

__all__ = ["Statistic", "Step", "StepStatistic"]


class Step:
    """One optimizer step as the statistics read it: float32 weights and gradients in the tracker's fqn order, and
    the products w·g, formed once for all the statistics that read them.

    Args:
        weights: the weights, float32.
        grads: the gradients, float32 (empty when no statistic reads them).
        first: whether no step has been folded in before (an EMA that starts from its first value copies it).
        counter: the optimizer step's count, which seeds the stochastic rounding.
    """

    def __init__(self, weights: list[Tensor], grads: list[Tensor], first: bool, counter: int) -> None:
        self.weights, self.grads, self.first, self.counter = weights, grads, first, counter
        self._products: list[Tensor] | None = None
        self._absolute = False  # whether _products holds |w·g| (made in place over w·g)

    def products(self) -> list[Tensor]:
        """w·g per entry (formed again if `sensitivity` has already overwritten it)."""
        if self._products is None or self._absolute:
            self._products, self._absolute = foreach_mul(self.weights, self.grads), False
        return self._products

    def sensitivity(self) -> list[Tensor]:
        """|w·g| per entry, made in place over `products` (read those first)."""
        if self._products is None or not self._absolute:
            foreach_abs_(self.products())
            self._absolute = True
        return self._products


class Statistic:
    """A running statistic of a fixed set of weights: state tensors keyed by fqn, and its value per fqn.

    Subclasses set ``name`` (its name in `STATS`) and fill `tensors`.
    """

    name: ClassVar[str]

    def tensors(self) -> dict[str, dict[str, Tensor]]:
        """The state tensors as ``{key: {fqn: tensor}}``, keyed as in the checkpoint (the statistic's name, and
        ``platon_uncertainty`` for PLATON's second tensor); the tensors themselves, not copies."""
        raise NotImplementedError

    def value(self, fqn: str) -> Tensor:
        """The statistic for one weight, float32."""
        raise NotImplementedError

    def nbytes(self) -> int:
        """Bytes held by the state tensors."""
        return sum(t.numel() * t.element_size() for per in self.tensors().values() for t in per.values())

    def state_dict(self) -> dict[str, Any]:
        """The statistic's part of `RunningStats.state_dict`: copies of its tensors under ``state``."""
        return {"state": {key: {f: t.clone() for f, t in per.items()} for key, per in self.tensors().items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Copy the statistic's tensors from a `RunningStats.state_dict` (the entries it holds)."""
        for key, mine in self.tensors().items():
            for f, t in state["state"].get(key, {}).items():
                mine[f].copy_(t)


class StepStatistic(Statistic):
    """A statistic updated on every optimizer step the tracker folds in."""

    reads_grads: ClassVar[bool] = True  # whether `update` reads the gradients

    def update(self, step: Step) -> None:
        """Fold one optimizer step into the state."""
        raise NotImplementedError


def zeros_like(params: Mapping[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    """``{fqn: zeros shaped like the weight, in dtype}``: one state tensor per weight."""
    return {fqn: torch.zeros_like(p, dtype=dtype) for fqn, p in params.items()}

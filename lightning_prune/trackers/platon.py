"""PLATON's upper confidence bound of the sensitivity |w·g| (Zhang et al., ICML 2022): ``platon``."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from lightning_prune._compat import foreach_abs_, foreach_sub
from lightning_prune.trackers.accumulate import Accumulator
from lightning_prune.trackers.base import Step, StepStatistic, zeros_like

__all__ = ["PLATON_BETAS", "Platon"]

PLATON_BETAS = (0.85, 0.95)  # β₁ of the sensitivity EMA and β₂ of the uncertainty EMA (Zhang et al. 2022)


class Platon(StepStatistic):
    """``platon``: the sensitivity I_t = |w_t·g_t|, its EMA Ī and the EMA Ū of its uncertainty, both from zero:

        Ī_t = β₁·Ī_{t-1} + (1-β₁)·I_t
        Ū_t = β₂·Ū_{t-1} + (1-β₂)·|I_t − Ī_t|
        value = Ī_t·Ū_t  (the upper confidence bound score)

    Ū reads Ī_t *after* its update with I_t, as the paper's equations write it (the authors' released code
    subtracts Ī_{t-1}). Neither average is bias-corrected, as in the paper and its code, so after one step
    Ī = (1-β₁)·I and Ū = (1-β₂)·β₁·I. Two state tensors per weight: Ī under ``platon`` and Ū under
    ``platon_uncertainty``.

    Args:
        params: ``{fqn: weight}``; only shapes and devices are read.
        accumulator: folds the values into state of its dtype.
        betas: (β₁, β₂), each in [0, 1) (default `PLATON_BETAS`, the paper's).

    Examples:
        >>> stat = Platon({"w": torch.zeros(1)}, Accumulator(torch.float32), betas=(0.5, 0.5))
        >>> stat.update(Step([torch.tensor([2.0])], [torch.tensor([-2.0])], first=True, counter=1))  # I = 4
        >>> stat.mean["w"].item(), stat.uncertainty["w"].item(), stat.value("w").item()  # Ī = 2, Ū = 0.5·|4 − 2|
        (2.0, 1.0, 2.0)
    """

    name = "platon"
    uncertainty_key = "platon_uncertainty"  # the checkpoint's key of Ū

    def __init__(
        self, params: Mapping[str, Tensor], accumulator: Accumulator, betas: tuple[float, float] = PLATON_BETAS
    ) -> None:
        self.accumulator, self.betas = accumulator, betas
        self.mean = zeros_like(params, accumulator.dtype)  # {fqn: Ī}
        self.uncertainty = zeros_like(params, accumulator.dtype)  # {fqn: Ū}

    def update(self, step: Step) -> None:
        """Fold I = |w·g| into Ī, then |I − Ī| (Ī after its update) into Ū."""
        (beta1, beta2), acc, n = self.betas, self.accumulator, step.counter
        sensitivity = step.sensitivity()
        acc.ema_(self.name, self.mean, sensitivity, beta1, first=False, counter=n)
        means = [m.float() for m in self.mean.values()]  # a no-op for float32 state
        deviation = foreach_sub([v.float() for v in sensitivity], means)
        foreach_abs_(deviation)
        acc.ema_(self.uncertainty_key, self.uncertainty, deviation, beta2, first=False, counter=n)

    def tensors(self) -> dict[str, dict[str, Tensor]]:
        return {self.name: self.mean, self.uncertainty_key: self.uncertainty}

    def value(self, fqn: str) -> Tensor:
        return self.mean[fqn].float() * self.uncertainty[fqn].float()

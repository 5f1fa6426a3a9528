"""Shared arithmetic of the running statistics: exponential moving averages and running sums, computed in float32
and stored in the state's dtype, rounded without bias when that is a 16-bit one.

Every rounding draws from a generator seeded from what it rounds: the state's key (the statistic's name, or
``platon_uncertainty`` for PLATON's second tensor), the fqn and a counter (the optimizer step, or the snapshot for
``time_weighted``). The draws are then a function of the run's position: a resumed run rounds exactly as an
uninterrupted one, and processes holding the same values round them alike.

Examples:
    >>> acc = Accumulator(torch.bfloat16)
    >>> state = {"w": torch.zeros(2, dtype=torch.bfloat16)}
    >>> acc.add_("taylor", state, [torch.tensor([1.0, 2.0])], counter=1)
    >>> state["w"].tolist()
    [1.0, 2.0]
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import torch
from torch import Tensor

from lightning_prune._compat import foreach_add_, foreach_copy_, foreach_lerp_

__all__ = ["Accumulator", "float32", "stochastic_round"]

_GOLDEN = 0x9E3779B1  # the seed's stride per count: a different stream per step


class Accumulator:
    """Folds float32 values into state tensors of one dtype (``float32``, or a 16-bit one rounded stochastically).

    Args:
        dtype: dtype of the state tensors.
    """

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self._generators: dict[torch.device, torch.Generator] = {}  # one per device, re-seeded for every rounding

    def ema_(
        self, key: str, state: Mapping[str, Tensor], values: list[Tensor], decay: float, first: bool, counter: int
    ) -> None:
        """m ← v if ``first`` else β·m + (1-β)·v, for every fqn of ``state`` (``values`` in its order).

        Args:
            key: the state's name, which seeds the rounding.
            state: ``{fqn: state tensor}``, updated in place.
            values: the new values, float32, one per fqn.
            decay: β.
            first: copy the values (the first step of an EMA that starts from its first value).
            counter: the step or snapshot count, which seeds the rounding.
        """
        targets = list(state.values())
        if self.dtype == torch.float32:
            values = [v.float() for v in values] if values and values[0].dtype != torch.float32 else values
            if first:
                foreach_copy_(targets, values)
            else:
                foreach_lerp_(targets, values, 1.0 - decay)
            return
        for fqn, t, v in zip(state, targets, values):  # in float32, rounded to the state's dtype without bias
            new = v.float() if first else torch.lerp(t.float(), v.float(), 1.0 - decay)
            t.copy_(stochastic_round(new, self.dtype, self.generator(t.device, key, fqn, counter)))

    def add_(
        self, key: str, state: Mapping[str, Tensor], values: list[Tensor], counter: int, alpha: float = 1.0
    ) -> None:
        """s ← s + α·v for every fqn of ``state`` (``values`` in its order); arguments as in `ema_`."""
        targets = list(state.values())
        if self.dtype == torch.float32:
            values = [v.float() for v in values] if values and values[0].dtype != torch.float32 else values
            foreach_add_(targets, values, alpha=alpha)
            return
        for fqn, t, v in zip(state, targets, values):
            new = t.float().add_(v.float(), alpha=alpha)
            t.copy_(stochastic_round(new, self.dtype, self.generator(t.device, key, fqn, counter)))

    def generator(self, device: torch.device, key: str, fqn: str, counter: int) -> torch.Generator:
        """The generator that rounds ``fqn``'s entry of the state ``key`` at ``counter``, seeded from the three."""
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device)
        seed = zlib.crc32(f"{key}/{fqn}".encode()) + counter * _GOLDEN
        return self._generators[device].manual_seed(seed % (1 << 63))


def float32(tensors: list[Tensor]) -> list[Tensor]:
    """The tensors as float32 (copies only of those in another dtype)."""
    return [t if t.dtype == torch.float32 else t.float() for t in tensors]


@torch.no_grad()
def stochastic_round(x: Tensor, dtype: torch.dtype, generator: torch.Generator | None = None) -> Tensor:
    """Round float32 ``x`` to ``dtype`` up or down at random, with the probability that makes the result
    unbiased (E[round(x)] = x), so running sums and averages kept in 16 bits drift no more than noise.

    bfloat16 keeps the top 16 bits of a float32: adding uniform noise below them and truncating is exactly that
    rounding. Other dtypes pick between the two neighbours with probability proportional to the distance.
    Non-finite entries are rounded to nearest.
    """
    if dtype == torch.float32:
        return x
    x = x.float().contiguous()
    if dtype == torch.bfloat16:
        noise = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device, generator=generator)
        rounded = ((x.view(torch.int32) + noise) & -65536).view(torch.float32)  # low 16 bits zero: exact in bf16
        return torch.where(torch.isfinite(rounded), rounded, x).to(dtype)
    near = x.to(dtype)
    error = x - near.float()
    toward = torch.where(error > 0, float("inf"), float("-inf")).to(dtype)
    other = torch.nextafter(near, toward)  # the neighbour of ``near`` in ``dtype`` on the side of ``x``
    gap = (other.float() - near.float()).abs()
    chance = torch.where(gap > 0, error.abs() / gap, torch.zeros_like(gap))
    draw = torch.rand(x.shape, device=x.device, generator=generator)
    return torch.where(draw < chance, other, near)

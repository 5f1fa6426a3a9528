"""Time-weighted average of |w| over snapshots, later ones weighing more: ``time_weighted`` ("Systematic Weight
Evaluation for Pruning LLMs", arXiv 2502.17071)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from lightning_prune._compat import foreach_abs
from lightning_prune.trackers.accumulate import Accumulator
from lightning_prune.trackers.base import Statistic, zeros_like

__all__ = ["TimeWeighted", "snapshot_weights"]

_WEIGHTINGS: dict[str, Callable[[int], float]] = {
    "sqrt": math.sqrt,
    "linear": float,
    "uniform": lambda i: 1.0,
}


def snapshot_weights(weighting: str | Callable[[int], float]) -> Callable[[int], float]:
    """Resolve a weighting name (``sqrt``, ``linear``, ``uniform``) or callable c(i) for snapshot i >= 1."""
    if callable(weighting):
        return weighting
    if weighting not in _WEIGHTINGS:
        raise ValueError(f"weighting must be one of {sorted(_WEIGHTINGS)} or a callable, got {weighting!r}.")
    return _WEIGHTINGS[weighting]


class TimeWeighted(Statistic):
    """``time_weighted``: the average of |w| over snapshots (one per epoch by default) weighted by c(i):

        value = Σ_i c_i·|w_i| / Σ_i c_i,  c_i = √i for snapshot i = 1, 2, ... (``weighting="sqrt"``)

    over the last ``window`` snapshots, kept as a ring of |w| (``window=None``: over all of them, kept as the
    running sum Σ_i c_i·|w_i| and its norm Σ_i c_i).

    Args:
        params: ``{fqn: weight}``; only shapes and devices are read.
        accumulator: folds the values into state of its dtype.
        weight_of: c(i), from `snapshot_weights`.
        window: number of most recent snapshots averaged (None: all).

    Examples:
        >>> stat = TimeWeighted({"w": torch.zeros(1)}, Accumulator(torch.float32), snapshot_weights("linear"), None)
        >>> stat.snapshot([torch.tensor([1.0])], 1), stat.snapshot([torch.tensor([-4.0])], 2)
        (None, None)
        >>> stat.value("w").item()  # (1·1 + 2·4) / (1 + 2)
        3.0
    """

    name = "time_weighted"

    def __init__(
        self,
        params: Mapping[str, Tensor],
        accumulator: Accumulator,
        weight_of: Callable[[int], float],
        window: int | None,
    ) -> None:
        self.accumulator, self.weight_of, self.window = accumulator, weight_of, window
        self.fqns = list(params)
        self.state = zeros_like(params, accumulator.dtype) if window is None else {}  # {fqn: Σ_i c_i·|w_i|}
        self.norm = 0.0  # Σ c_i over the snapshots in the running sum
        self.ring: list[dict[str, Tensor]] = []  # window snapshots of |w|, oldest first
        self.ring_index: list[int] = []  # their snapshot numbers i

    def snapshot(self, weights: list[Tensor], i: int) -> None:
        """Fold in |w| of ``weights`` (in fqn order, any dtype) as snapshot number ``i`` (from 1)."""
        c = self.weight_of(i)
        abs_w = foreach_abs(weights)
        if self.window is None:
            self.accumulator.add_(self.name, self.state, abs_w, counter=i, alpha=c)
            self.norm += c
            return
        self.ring.append({f: a.to(self.accumulator.dtype) for f, a in zip(self.fqns, abs_w)})
        self.ring_index.append(i)
        del self.ring[: -self.window], self.ring_index[: -self.window]

    def tensors(self) -> dict[str, dict[str, Tensor]]:
        return {self.name: self.state} if self.window is None else {}

    def value(self, fqn: str) -> Tensor:
        if self.window is None:
            return self.state[fqn].float() / self.norm
        cs = [self.weight_of(i) for i in self.ring_index]
        total = sum(c * snap[fqn].float() for c, snap in zip(cs, self.ring))
        return total / sum(cs)

    def nbytes(self) -> int:
        return super().nbytes() + sum(t.numel() * t.element_size() for snap in self.ring for t in snap.values())

    def state_dict(self) -> dict[str, Any]:
        """The running sum under ``state``, the ring under ``ring`` and ``ring_index``, the norm as ``twa_norm``."""
        return {
            **super().state_dict(),
            "twa_norm": self.norm,
            "ring": [{f: t.clone() for f, t in snap.items()} for snap in self.ring],
            "ring_index": list(self.ring_index),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.ring = [{f: t.to(self.accumulator.dtype) for f, t in snap.items()} for snap in state["ring"]]
        self.ring_index = list(state["ring_index"])
        self.norm = state["twa_norm"]

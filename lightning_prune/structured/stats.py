"""Running importance statistics of structured units, gathered while training, and the scores read from them.

What each dimension's statistic sees, per training pass (``a``: an activation, ``g``: the gradient of the loss
with respect to it, means over the pass's tokens):

=========  ==================================  ===================================  ============================
dimension  observed at                         ``activation``                       ``taylor``
=========  ==================================  ===================================  ============================
neurons    input of the FFN output projection  mean |a_j|                           mean |a_j·g_j|
heads      input of the attention output       mean ‖o_h‖₂ (the head's output)      mean |Σ_f o_hf·g_hf|
           projection (heads side by side)
layers     the block's input x and output y    mean (1 − cos(x, y)) (Block          mean |Σ_c (y − x)_c·g_c|
                                               Influence, ShortGPT)
hidden     outputs of the norms on the         Σ over norms of mean |n_c|           Σ over norms of mean |n_c·g_c|
           residual stream                     (Minitron's embedding channels)
experts    the router                          mean routing probability             mean Σ_k |w_k·g_k| of the
                                                                                    routing weights of expert e
=========  ==================================  ===================================  ============================

The Taylor values are first-order estimates of the loss change when the unit is removed (Molchanov et al. 2019),
so they share one unit across dimensions; the activation values do not.

:class:`UnitStats` keeps, per dimension and row (block, norm), an exponential moving average in float32 (the first
pass sets it, then ``m ← decay·m + (1 − decay)·x``); a pass with a non-finite value is left out without a host
sync.

Example:
    >>> stats = UnitStats({"neurons": [3]}, decay=0.5)
    >>> stats.add("neurons", 0, torch.tensor([1.0, 2.0, 3.0]))
    >>> stats.values["neurons"][0].tolist()
    [1.0, 2.0, 3.0]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "STRUCTURE_CRITERIA",
    "UnitStats",
    "expert_activation",
    "expert_taylor",
    "head_activation",
    "head_taylor",
    "hidden_activation",
    "hidden_taylor",
    "layer_activation",
    "layer_taylor",
    "neuron_activation",
    "neuron_taylor",
]

STRUCTURE_CRITERIA = ("taylor", "activation")


def _tokens(x: Tensor) -> Tensor:
    return x.detach().float().reshape(-1, x.shape[-1])  # (T, features)


def neuron_activation(acts: Tensor) -> Tensor:
    """``(n,)``: mean |a| over tokens of activations ``(..., n)``."""
    return _tokens(acts).abs().mean(0)


def neuron_taylor(acts: Tensor, grads: Tensor) -> Tensor:
    """``(n,)``: mean |a·g| over tokens."""
    return (_tokens(acts) * _tokens(grads)).abs().mean(0)


def head_activation(out: Tensor, n_heads: int) -> Tensor:
    """``(n_heads,)``: mean L2 norm of each head's output over tokens; ``out`` is ``(..., n_heads·head_dim)``."""
    o = _tokens(out)
    return o.view(o.shape[0], n_heads, -1).norm(dim=-1).mean(0)


def head_taylor(out: Tensor, grads: Tensor, n_heads: int) -> Tensor:
    """``(n_heads,)``: mean over tokens of |Σ over the head's features of o·g|."""
    prod = _tokens(out) * _tokens(grads)  # (T, n_heads·head_dim)
    return prod.view(prod.shape[0], n_heads, -1).sum(-1).abs().mean(0)


def layer_activation(x: Tensor, y: Tensor) -> Tensor:
    """``(1,)``: mean over tokens of 1 − cos(x, y) between a block's input and output."""
    return (1 - F.cosine_similarity(_tokens(x), _tokens(y), dim=-1)).mean().reshape(1)


def layer_taylor(delta: Tensor, grads: Tensor) -> Tensor:
    """``(1,)``: mean over tokens of |Σ_c Δ_c·g_c|, Δ = output − input of the block, g = ∂L/∂output."""
    return (_tokens(delta) * _tokens(grads)).sum(-1).abs().mean().reshape(1)


def hidden_activation(normed: Tensor) -> Tensor:
    """``(d,)``: mean |n_c| over tokens of a norm's output."""
    return _tokens(normed).abs().mean(0)


def hidden_taylor(normed: Tensor, grads: Tensor) -> Tensor:
    """``(d,)``: mean |n_c·g_c| over tokens of a norm's output and its gradient."""
    return (_tokens(normed) * _tokens(grads)).abs().mean(0)


def expert_activation(logits: Tensor) -> Tensor:
    """``(E,)``: mean routing probability (softmax of the router's logits ``(..., E)``) over tokens."""
    return torch.softmax(_tokens(logits), dim=-1).mean(0)


def expert_taylor(weights: Tensor, grads: Tensor, index: Tensor, n_experts: int) -> Tensor:
    """``(E,)``: per expert, the mean over tokens of |w·∂L/∂w| of the routing weights ``(T, k)`` that chose it
    (``index``, ``(T, k)``): the first-order loss change of dropping its contribution."""
    prod = (_tokens(weights) * _tokens(grads)).abs()  # (T, k)
    out = torch.zeros(n_experts, device=prod.device)
    return out.index_add_(0, index.reshape(-1).to(prod.device), prod.reshape(-1)) / prod.shape[0]


class UnitStats:
    """Running statistics per dimension and row: ``values[dim][row]`` of shape ``(n,)``, float32.

    Args:
        sizes: per dimension, the unit count of each row (``{"neurons": [n] * layers, "layers": [1] * layers}``).
        decay: EMA decay in [0, 1).

    Raises:
        ValueError: for a decay outside [0, 1).
    """

    def __init__(self, sizes: Mapping[str, Sequence[int]], decay: float = 0.99) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}.")
        self.sizes = {d: list(s) for d, s in sizes.items()}
        self.decay = decay
        self.values = {d: [torch.zeros(n) for n in s] for d, s in self.sizes.items()}
        self.counts = {d: torch.zeros(len(s), dtype=torch.long) for d, s in self.sizes.items()}
        self.skipped = torch.zeros((), dtype=torch.long)

    def to(self, device: torch.device | str) -> UnitStats:
        """Move the state to ``device``; returns self."""
        self.values = {d: [t.to(device) for t in v] for d, v in self.values.items()}
        self.counts = {d: t.to(device) for d, t in self.counts.items()}
        self.skipped = self.skipped.to(device)
        return self

    @torch.no_grad()
    def add(self, dim: str, row: int, x: Tensor) -> None:
        """Fold one pass's value ``x`` (n,) of ``row`` into the average, unless it is non-finite."""
        state, count = self.values[dim][row], self.counts[dim][row]
        x = x.detach().float().to(state.device)
        ok = torch.isfinite(x).all()
        new = torch.where(count == 0, x, torch.lerp(state, x, 1.0 - self.decay))
        state.copy_(torch.where(ok, new, state))
        count += ok
        self.skipped += ~ok

    def ready(self) -> list[str]:
        """The dimensions with statistics in every row."""
        return [d for d, c in self.counts.items() if bool((c > 0).all())]

    def scores(self, dim: str) -> list[Tensor]:
        """The averages of ``dim``, one ``(n,)`` per row, on the CPU."""
        return [v.float().cpu() for v in self.values[dim]]

    def tensors(self) -> list[Tensor]:
        """Every statistic tensor (to average across processes in place)."""
        return [t for v in self.values.values() for t in v]

    def state_dict(self) -> dict[str, Any]:
        return {
            "sizes": {d: list(s) for d, s in self.sizes.items()},
            "values": {d: [t.cpu().clone() for t in v] for d, v in self.values.items()},
            "counts": {d: t.cpu().clone() for d, t in self.counts.items()},
            "skipped": int(self.skipped),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`.

        Raises:
            ValueError: if the dimensions or their sizes differ from this instance's.
        """
        sizes = {d: list(s) for d, s in state["sizes"].items()}
        if sizes != self.sizes:
            raise ValueError(f"unit statistics are for sizes {sizes}, this model has {self.sizes}.")
        device = self.skipped.device
        self.values = {d: [t.to(device).float().clone() for t in v] for d, v in state["values"].items()}
        self.counts = {d: torch.as_tensor(t, dtype=torch.long).to(device) for d, t in state["counts"].items()}
        self.skipped = torch.tensor(int(state["skipped"]), device=device)

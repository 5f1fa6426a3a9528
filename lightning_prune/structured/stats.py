"""Running importance statistics of structured units, gathered while training, and the scores read from them.

What each dimension's statistic sees, per training pass (``a``: an activation, ``g``: the gradient of the pass's
loss with respect to it; sums and means over the pass's tokens):

| dimension | observed at | ``activation`` (mean over tokens) | ``taylor``: the gate gradient G |
| --- | --- | --- | --- |
| neurons | input of the FFN output projection | `|a_j|` | Σ_tokens a_j·g_j |
| heads | input of the attention output projection | ‖o_h‖₂ (the head's output) | Σ_tokens Σ_(f in h) o_f·g_f |
| layers | the block's input x and output y | 1 − cos(x, y) (Block Influence, ShortGPT) | Σ_tokens Σ_c (y − x)_c·g_c |
| hidden | outputs of the residual stream's norms | Σ over norms of `|n_c|` (Minitron) | Σ over norms Σ_tokens n_c·g_c |
| experts | the router | routing probability | Σ over tokens routed to e of w·∂L/∂w (routing weights) |

**Taylor, in units of the loss.** Put a gate s on a unit's output (s = 1: as trained; s = 0: removed). Its
gradient on a pass is G = ∂L/∂s = Σ over the unit's outputs of a·∂L/∂a — the same formula for a neuron, a head,
a block (its output is x + s·(y − x)), a residual feature (every reader of the stream sees s·n_c) and an expert
(its routing weight times s). Removing the unit changes the loss by ΔL ≈ −E[G] + ½·H with H = ∂²L/∂s². At a
trained state E[G] ≈ 0 and the running estimate of it is mostly noise, so the first-order term says little and
its absolute value |G| measures gradient noise, which does not add up over units (|Σ G| ≤ Σ |G|: a block looks
cheaper than its parts). The statistic is therefore the second-order term, with the Fisher information for the
curvature (Molchanov et al. 2019, squared gate gradients): per pass ½·n·G², n the pass's tokens, whose
expectation is ½·(F + (n − 1)·E[G]²) — the expected loss increase ½·F at a trained state, in nats per token. It
is one formula in one unit for every dimension, and additive over independent parts; first and second order both
miss what whole blocks do far from s = 1, which is why [`StructuredPruning`][lightning_prune.StructuredPruning] measures
the loss of its candidate removals at each event (`ablation`) and compares dimensions by that.

A pass's contributions to a row are *staged* (summed: a hidden feature's G sums over every norm, a module called
twice adds both calls) and *committed* once per pass — by `observe`'s hook at the start of the
next training pass, or by whoever reads the statistics. `UnitStats` keeps, per dimension and row (block,
experts block; one row for the hidden features), an exponential moving average in float32 of the committed
values (the first pass sets it, then ``m ← decay·m + (1 − decay)·x``); a pass with a non-finite value is left out
without a host sync.

Examples:
    >>> stats = UnitStats({"neurons": [3]}, decay=0.5, fisher=True)
    >>> stats.stage("neurons", 0, torch.tensor([1.0, -2.0, 0.0]), tokens=4)
    >>> stats.commit()
    >>> stats.values["neurons"][0].tolist()  # ½·4·G²
    [2.0, 8.0, 0.0]
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
    "tokens_of",
]

STRUCTURE_CRITERIA = ("taylor", "activation")


def _tokens(x: Tensor) -> Tensor:
    return x.detach().float().reshape(-1, x.shape[-1])  # (T, features)


def tokens_of(x: Tensor) -> int:
    """The tokens (positions) of an activation ``(..., features)``."""
    return x[..., 0].numel()


def neuron_activation(acts: Tensor) -> Tensor:
    """``(n,)``: mean |a| over tokens of activations ``(..., n)``."""
    return _tokens(acts).abs().mean(0)


def neuron_taylor(acts: Tensor, grads: Tensor) -> Tensor:
    """``(n,)``: the gate gradient of each neuron, Σ over tokens of a·g."""
    return (_tokens(acts) * _tokens(grads)).sum(0)


def head_activation(out: Tensor, n_heads: int) -> Tensor:
    """``(n_heads,)``: mean L2 norm of each head's output over tokens; ``out`` is ``(..., n_heads·head_dim)``."""
    o = _tokens(out)
    return o.view(o.shape[0], n_heads, -1).norm(dim=-1).mean(0)


def head_taylor(out: Tensor, grads: Tensor, n_heads: int) -> Tensor:
    """``(n_heads,)``: the gate gradient of each head, Σ over tokens and the head's features of o·g."""
    prod = _tokens(out) * _tokens(grads)  # (T, n_heads·head_dim)
    return prod.view(prod.shape[0], n_heads, -1).sum((0, 2))


def layer_activation(x: Tensor, y: Tensor) -> Tensor:
    """``(1,)``: mean over tokens of 1 − cos(x, y) between a block's input and output."""
    return (1 - F.cosine_similarity(_tokens(x), _tokens(y), dim=-1)).mean().reshape(1)


def layer_taylor(delta: Tensor, grads: Tensor) -> Tensor:
    """``(1,)``: the gate gradient of a block, Σ over tokens and features of Δ·g, Δ = output − input of the block,
    g = ∂L/∂output."""
    return (_tokens(delta) * _tokens(grads)).sum().reshape(1)


def hidden_activation(normed: Tensor) -> Tensor:
    """``(d,)``: mean |n_c| over tokens of a norm's output."""
    return _tokens(normed).abs().mean(0)


def hidden_taylor(normed: Tensor, grads: Tensor) -> Tensor:
    """``(d,)``: one norm's part of the gate gradient of each residual feature, Σ over tokens of n_c·g_c."""
    return (_tokens(normed) * _tokens(grads)).sum(0)


def expert_activation(logits: Tensor) -> Tensor:
    """``(E,)``: mean routing probability (softmax of the router's logits ``(..., E)``) over tokens."""
    return torch.softmax(_tokens(logits), dim=-1).mean(0)


def expert_taylor(weights: Tensor, grads: Tensor, index: Tensor, n_experts: int) -> Tensor:
    """``(E,)``: the gate gradient of each expert: Σ of w·∂L/∂w over the routing weights ``(T, k)`` that chose it
    (``index``, ``(T, k)``)."""
    prod = _tokens(weights) * _tokens(grads)  # (T, k)
    out = torch.zeros(n_experts, device=prod.device)
    return out.index_add_(0, index.reshape(-1).to(prod.device), prod.reshape(-1))


class UnitStats:
    """Running statistics per dimension and row: ``values[dim][row]`` of shape ``(n,)``, float32.

    Args:
        sizes: per dimension, the unit count of each row (``{"neurons": [n] * layers, "layers": [1] * layers}``).
        decay: EMA decay in [0, 1).
        fisher: commit a pass's staged gate gradient G as ½·n·G² (n: its tokens), the second-order estimate of the
            loss increase (``taylor``); else commit staged values as they are (``activation``).

    Raises:
        ValueError: for a decay outside [0, 1).
    """

    def __init__(self, sizes: Mapping[str, Sequence[int]], decay: float = 0.99, fisher: bool = False) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}.")
        self.sizes = {d: list(s) for d, s in sizes.items()}
        self.decay, self.fisher = decay, fisher
        self.values = {d: [torch.zeros(n) for n in s] for d, s in self.sizes.items()}
        self.counts = {d: torch.zeros(len(s), dtype=torch.long) for d, s in self.sizes.items()}
        self.skipped = torch.zeros((), dtype=torch.long)
        self._staged: dict[tuple[str, int], tuple[Tensor, int]] = {}  # (dim, row) -> (this pass's sum, tokens)

    def to(self, device: torch.device | str) -> UnitStats:
        """Move the state to ``device``; returns self."""
        self.values = {d: [t.to(device) for t in v] for d, v in self.values.items()}
        self.counts = {d: t.to(device) for d, t in self.counts.items()}
        self.skipped = self.skipped.to(device)
        self._staged = {k: (t.to(device), n) for k, (t, n) in self._staged.items()}
        return self

    @torch.no_grad()
    def stage(self, dim: str, row: int, x: Tensor, tokens: int = 0) -> None:
        """Add ``x`` (n,) to what this pass gives ``row`` (folded into the average by `commit`); ``tokens``: the
        pass's tokens of a gate gradient (0: a value committed as it is, also with ``fisher``)."""
        x = x.detach().float().to(self.values[dim][row].device)
        key = (dim, row)
        if key in self._staged:
            total, n = self._staged[key]
            self._staged[key] = (total + x, max(n, tokens))
        else:
            self._staged[key] = (x, tokens)

    @torch.no_grad()
    def commit(self) -> None:
        """Fold every staged row into its average (½·n·G² with ``fisher``) and start a new pass."""
        staged, self._staged = self._staged, {}
        for (dim, row), (x, n) in staged.items():
            self.add(dim, row, 0.5 * n * x.square() if self.fisher and n else x)

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
        """The averages (a pass still staged is committed first)."""
        self.commit()
        return {
            "sizes": {d: list(s) for d, s in self.sizes.items()},
            "values": {d: [t.cpu().clone() for t in v] for d, v in self.values.items()},
            "counts": {d: t.cpu().clone() for d, t in self.counts.items()},
            "skipped": int(self.skipped),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a `state_dict`.

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
        self._staged = {}

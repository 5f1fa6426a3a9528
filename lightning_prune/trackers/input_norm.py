"""Running mean over training forward passes of the squared inputs per feature of 2-D weights: ``input_norm``, whose
square root scales |w| in the running Wanda score |w_ij|·‖x_j‖ (Sun et al. 2023)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from lightning_prune._shards import Layout
from lightning_prune.trackers.base import Statistic

__all__ = ["InputNorm", "passes_seen"]


class InputNorm(Statistic):
    """``input_norm``: per input feature j of a 2-D weight, the EMA over forward passes of the mean over tokens of
    x_j², from the first pass's value:

        n_1 = mean_t x_{t,j}²,  n_k = β·n_{k-1} + (1-β)·mean_t x_{t,j}²

    One row of features per row block of a weight whose rows are fed by ``sections`` different inputs (query, key
    and value of ``nn.MultiheadAttention.in_proj_weight``). Kept in float32: a few numbers per layer, over the
    full input width when the weight is a shard. The passes folded in per weight (``seen``) and left out for a
    non-finite input (``skipped``) are counted in tensors, so that no pass waits for the device.

    Args:
        params: ``{fqn: weight}`` (local tensors); only devices are read.
        in_dims: ``{fqn: dim}`` of the input features of the measured 2-D weights (1 for ``nn.Linear``'s
            (out, in), 0 for ``Conv1D``'s (in, out)).
        sections: ``{fqn: k}`` row blocks per weight.
        full_shapes: ``{fqn: shape}`` of the whole tensors.
        layouts: ``{fqn: Layout}`` of the weights that are shards.
        decay: β, in [0, 1).

    Examples:
        >>> stat = InputNorm({"w": torch.zeros(3, 2)}, {"w": 1}, {"w": 1}, {"w": (3, 2)}, {}, decay=0.5)
        >>> stat.add("w", torch.tensor([[1.0, 2.0], [3.0, 0.0]])).item()
        True
        >>> stat.value("w").tolist()  # (1 + 9) / 2, (4 + 0) / 2
        [[5.0, 2.0]]
    """

    name = "input_norm"

    def __init__(
        self,
        params: Mapping[str, Tensor],
        in_dims: Mapping[str, int],
        sections: Mapping[str, int],
        full_shapes: Mapping[str, tuple[int, ...]],
        layouts: Mapping[str, Layout],
        decay: float,
    ) -> None:
        self.in_dims, self.full_shapes, self.layouts, self.decay = dict(in_dims), full_shapes, layouts, decay
        self.state = {  # {fqn: (sections, in_features)}
            f: torch.zeros(sections[f], full_shapes[f][d], device=params[f].device) for f, d in self.in_dims.items()
        }
        self.seen = passes_seen(params, self.in_dims)
        self.skipped = torch.zeros((), dtype=torch.long)

    def add(self, fqn: str, *inputs: Tensor) -> Tensor:
        """Fold one pass's inputs ``(..., in_features)``, one per row block, into ``fqn``'s state. A pass with a
        non-finite input leaves the state as it was and is counted in ``skipped``.

        Returns:
            A bool tensor: whether the pass was folded in (chosen on the device, so nothing waits for it).

        Raises:
            ValueError: if the number of inputs is not the weight's number of row blocks.
        """
        state, seen = self.state[fqn], self.seen[fqn]
        if len(inputs) != state.shape[0]:
            raise ValueError(f"{fqn}: expected {state.shape[0]} inputs (one per row block), got {len(inputs)}.")
        mean_sq = torch.stack(
            [x.detach().reshape(-1, x.shape[-1]).float().square().mean(0).to(state.device) for x in inputs]
        )  # (sections, in)
        ok = torch.isfinite(mean_sq).all()  # a non-finite input makes its feature's mean non-finite
        new = torch.where(seen == 0, mean_sq, torch.lerp(state, mean_sq, 1.0 - self.decay))
        state.copy_(torch.where(ok, new, state))
        seen += ok
        self.skipped = self.skipped.to(ok.device) + ~ok
        return ok

    def scale(self, fqn: str) -> Tensor:
        """√n shaped to broadcast against the local weight: a row of feature norms per output row block, or a
        column of them for ``Conv1D``.

        Raises:
            KeyError: if the weight's inputs are not measured.
            RuntimeError: if no pass of the weight's module has been seen.
        """
        if fqn not in self.in_dims:
            raise KeyError(
                f"parameter {fqn!r} is not a tracked 2-D weight of a Linear, Conv1D or MultiheadAttention module, "
                "so its inputs are not measured."
            )
        if int(self.seen[fqn]) == 0:
            raise RuntimeError(
                f"no input of {fqn!r} has been seen: its module never ran forward in training (a weight read "
                "without calling its module, like nn.MultiheadAttention's out_proj, has no inputs to measure); "
                "exclude it or choose a criterion without 'input_norm'."
            )
        norms = self.state[fqn].sqrt()  # (sections, in)
        shape = self.full_shapes[fqn]
        if self.in_dims[fqn] == 1:  # (out, in): each row block reads its own input
            scale = norms.repeat_interleave(shape[0] // norms.shape[0], dim=0)  # (out, in)
        else:  # Conv1D (in, out)
            scale = norms[0][:, None].expand(shape)
        scale = scale.expand(shape)
        return self.layouts[fqn].slice(scale) if fqn in self.layouts else scale

    def tensors(self) -> dict[str, dict[str, Tensor]]:
        return {self.name: self.state}

    def value(self, fqn: str) -> Tensor:
        return self.state[fqn].float()

    def state_dict(self) -> dict[str, Any]:
        """The state under ``state``; the pass counts as ``inputs_seen`` and ``inputs_skipped``."""
        seen = {f: int(n) for f, n in self.seen.items()}
        return {"inputs_seen": seen, "inputs_skipped": int(self.skipped), **super().state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for f, t in state["state"].get(self.name, {}).items():  # reshaped to the state's (sections, in)
            self.state[f].copy_(t.reshape(self.state[f].shape))
        for f, n in state.get("inputs_seen", {}).items():
            self.seen[f].fill_(n)
        self.skipped = torch.tensor(int(state.get("inputs_skipped", 0)))


def passes_seen(params: Mapping[str, Tensor], in_dims: Mapping[str, int]) -> dict[str, Tensor]:
    """``{fqn: 0}`` for every measured weight, as a long tensor on the weight's device."""
    return {f: torch.zeros((), dtype=torch.long, device=params[f].device) for f in in_dims}

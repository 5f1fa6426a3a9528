"""Hooks that fold each training pass into `UnitStats`.

One hook per observed module (see the table in `stats`): a forward pre-hook on the feed-forward and
attention output projections (their inputs are the neurons and the heads), a forward hook on every block (its
input and output), on every norm of the residual stream and on every router. With ``criterion="taylor"`` each
hook registers a tensor hook on what it saw, which stages the gate gradient in backward. A forward pre-hook on
the model commits the previous pass's staged values when the next training pass starts (read the statistics
after `commit`). Passes without gradients (validation, inference) are not observed. The
handles are returned; remove them when done.

Cost per training pass: one elementwise product and a sum over each observed activation (Taylor: in backward;
the neurons' is the size of the FFN activations, the others of the hidden states), and one small EMA update per
row at the commit; nothing is kept between passes but the staged sums, ``(n,)`` per row.

Examples:
    >>> handles = observe(model, stats, ("neurons", "layers"), "taylor")  # doctest: +SKIP
    >>> ...  # train  # doctest: +SKIP
    >>> for h in handles:  # doctest: +SKIP
    ...     h.remove()
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_prune.structured import stats as S
from lightning_prune.structured.layout import block_layouts, blocks_of, stream_layout
from lightning_prune.structured.masks import hidden_size
from lightning_prune.structured.stats import UnitStats, tokens_of

__all__ = ["hidden_norms", "observe", "stat_sizes"]


def hidden_norms(model: nn.Module) -> list[str]:
    """fqns of the norms on the residual stream: every block's, then those outside the blocks."""
    names = [n for lay in block_layouts(model) for n in lay.norms]
    return names + [n for n in stream_layout(model)[0] if not isinstance(model.get_submodule(n), nn.Embedding)]


def stat_sizes(model: nn.Module, dims: Sequence[str]) -> dict[str, list[int]]:
    """Per dimension the unit count of each statistic row of ``model`` (see `UnitStats`)."""
    layouts = block_layouts(model)
    sizes = {
        "neurons": [lay.n_neurons for lay in layouts],
        "heads": [lay.n_heads for lay in layouts],
        "layers": [1] * len(layouts),
        "hidden": [hidden_size(model)],  # one row: a feature's statistic sums over every norm
        "experts": [lay.n_experts for lay in layouts if lay.n_experts],
    }
    return {d: sizes[d] for d in dims}


def _later(tensor: Tensor, taylor: bool, add: Callable[[Tensor], None]) -> None:
    """With Taylor, call ``add(grad)`` in backward (the gradient passes on unchanged)."""
    if taylor and tensor.requires_grad and torch.is_grad_enabled():

        def folded(grad: Tensor) -> None:
            add(grad)

        tensor.register_hook(folded)


def _first(value: Any) -> Tensor:
    return value[0] if isinstance(value, (tuple, list)) else value


def observe(model: nn.Module, stats: UnitStats, dims: Sequence[str], criterion: str) -> list[RemovableHandle]:
    """Register the hooks that feed ``stats`` for ``dims`` by ``criterion`` (``"taylor"`` or ``"activation"``).

    Raises:
        ValueError: for an unknown criterion.
    """
    if criterion not in S.STRUCTURE_CRITERIA:
        raise ValueError(f"unknown structured criterion {criterion!r}; choose one of {S.STRUCTURE_CRITERIA}.")
    taylor = criterion == "taylor"
    layouts, handles = block_layouts(model), [model.register_forward_pre_hook(_commit_hook(stats))]

    def pre(dim: str, row: int, value: Callable, grad_value: Callable) -> Callable:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if not torch.is_grad_enabled():  # a training pass (validation runs without gradients)
                return
            x = args[0]
            if taylor:
                _later(x, True, lambda g: stats.stage(dim, row, grad_value(x, g), tokens_of(x)))
            else:
                stats.stage(dim, row, value(x))

        return hook

    for lay in layouts:
        i = lay.index
        if "neurons" in dims:
            module = model.get_submodule(lay.ffn_out)
            handles.append(module.register_forward_pre_hook(pre("neurons", i, S.neuron_activation, S.neuron_taylor)))
        if "heads" in dims:
            h = lay.n_heads
            act = lambda x, h=h: S.head_activation(x, h)  # noqa: E731
            tay = lambda x, g, h=h: S.head_taylor(x, g, h)  # noqa: E731
            handles.append(model.get_submodule(lay.attn_out).register_forward_pre_hook(pre("heads", i, act, tay)))
    if "layers" in dims:
        for i, block in enumerate(blocks_of(model)):
            handles.append(block.register_forward_hook(_block_hook(stats, i, taylor), with_kwargs=True))
    if "hidden" in dims:
        for name in hidden_norms(model):
            handles.append(model.get_submodule(name).register_forward_hook(_norm_hook(stats, taylor)))
    if "experts" in dims:
        routers = [(lay.router, lay.n_experts) for lay in layouts if lay.n_experts]
        for row, (name, n) in enumerate(routers):
            handles.append(model.get_submodule(name).register_forward_hook(_router_hook(stats, row, n, taylor)))
    return handles


def _commit_hook(stats: UnitStats) -> Callable:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        if torch.is_grad_enabled():  # a training pass starts: the previous one's backward is done
            stats.commit()

    return hook


def _block_hook(stats: UnitStats, row: int, taylor: bool) -> Callable:
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        if not torch.is_grad_enabled():
            return
        x = args[0] if args else kwargs["hidden_states"]
        y = _first(out)
        if taylor:
            gate = lambda g: S.layer_taylor(y.detach() - x.detach(), g)  # noqa: E731  (Δ made in backward)
            _later(y, True, lambda g: stats.stage("layers", row, gate(g), tokens_of(y)))
        else:
            stats.stage("layers", row, S.layer_activation(x, y))

    return hook


def _norm_hook(stats: UnitStats, taylor: bool) -> Callable:
    def hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if not torch.is_grad_enabled():
            return
        y = _first(out)
        if taylor:
            _later(y, True, lambda g: stats.stage("hidden", 0, S.hidden_taylor(y, g), tokens_of(y)))
        else:
            stats.stage("hidden", 0, S.hidden_activation(y))

    return hook


def _router_hook(stats: UnitStats, row: int, n_experts: int, taylor: bool) -> Callable:
    def hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if not torch.is_grad_enabled():
            return
        if taylor and isinstance(out, tuple) and len(out) == 3 and out[1].requires_grad:
            weights, index = out[1], out[2]
            tay = lambda g: S.expert_taylor(weights, g, index, n_experts)  # noqa: E731
            _later(weights, True, lambda g: stats.stage("experts", row, tay(g), tokens_of(weights)))
        else:  # logits only: the routing probability (also the activation criterion)
            stats.stage("experts", row, S.expert_activation(_first(out)))

    return hook

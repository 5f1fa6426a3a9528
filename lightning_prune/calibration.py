"""Calibration passes: forward hooks that collect activations and input norms, and Wanda scores and masks.

Every hook is registered inside [`forward_hooks`][lightning_prune.calibration.forward_hooks], a context manager that
removes all handles in a ``finally`` block, so a failing batch never leaves a hook behind.

Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models"): the score of
weight ``W_ij`` (output i, input j) is ``|W_ij| · ‖X_j‖₂`` where ``‖X_j‖₂`` is the L2 norm of input feature j
over all calibration tokens; each output row keeps its top ``(1 - sparsity)`` fraction.

Examples:
    >>> layer = torch.nn.Linear(4, 2)
    >>> norms = collect_input_norms({"layer": layer}, lambda: layer(torch.randn(3, 4)))
    >>> norms["layer"].count
    3
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_prune._selection import in_features, is_conv1d
from lightning_prune.masks import output_masks
from lightning_prune.schedules import check_sparsity

__all__ = [
    "InputNormStats",
    "collect_activations",
    "collect_input_norms",
    "collect_taylor",
    "forward_hooks",
    "linear_modules",
    "wanda_mask",
    "wanda_masks",
    "wanda_scores",
]

HookFn = Callable[[str, nn.Module, tuple[Any, ...], Any], None]  # (name, module, inputs, output)


def linear_modules(model: nn.Module, exclude: tuple[str, ...] = ("lm_head",)) -> dict[str, nn.Module]:
    """``{name: module}`` of every ``nn.Linear`` and transformers ``Conv1D`` whose name has no ``exclude`` part."""
    return {
        name: m
        for name, m in model.named_modules()
        if (isinstance(m, nn.Linear) or is_conv1d(m)) and not any(part in name for part in exclude)
    }


@contextmanager
def forward_hooks(modules: Mapping[str, nn.Module], fn: HookFn) -> Iterator[list[RemovableHandle]]:
    """Register ``fn(name, module, inputs, output)`` as a forward hook on each module; always remove them.

    Args:
        modules: ``{name: module}`` to hook.
        fn: called after each hooked module's forward.

    Yields:
        The handles (already removed once the ``with`` block exits, also on an exception).
    """
    handles: list[RemovableHandle] = []
    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(lambda m, i, o, _n=name: fn(_n, m, i, o)))
        yield handles
    finally:
        for handle in handles:
            handle.remove()


def _run(model_or_fn: nn.Module | Callable[[], Any], batches: Iterable[Any] | None) -> None:
    """Run the calibration forward passes: ``fn()`` once, or ``model(**batch)`` / ``model(batch)`` per batch."""
    if batches is None:
        model_or_fn()
        return
    for batch in batches:
        model_or_fn(**batch) if isinstance(batch, Mapping) else model_or_fn(batch)


def _flat(x: Tensor) -> Tensor:
    return x.detach().reshape(-1, x.shape[-1])  # (..., C) → (T, C)


def collect_activations(
    modules: Mapping[str, nn.Module],
    run: nn.Module | Callable[[], Any],
    batches: Iterable[Any] | None = None,
    which: str = "input",
    max_tokens: int | None = None,
) -> dict[str, Tensor]:
    """Activations seen by each module: its first input (``which="input"``) or its output, flattened to tokens.

    The input of a feed-forward output projection (``c_proj``/``down_proj``/``output.dense``) is the neuron
    activation of that block. Runs under ``torch.no_grad()``.

    Args:
        modules: ``{name: module}`` to watch.
        run: the model (called on each of ``batches``) or a zero-argument callable doing all forward passes.
        batches: inputs for ``run``; each a mapping (``model(**batch)``) or a tensor (``model(batch)``).
        which: ``"input"`` or ``"output"``.
        max_tokens: keep at most this many tokens per module (the first ones seen).

    Returns:
        ``{name: (T, C)}`` float32 on the CPU.

    Raises:
        ValueError: if ``which`` is not ``"input"`` or ``"output"``.
    """
    if which not in ("input", "output"):
        raise ValueError(f"which must be 'input' or 'output', got {which!r}.")
    seen: dict[str, list[Tensor]] = {name: [] for name in modules}
    counts = dict.fromkeys(modules, 0)

    def hook(name: str, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        x = _flat(inputs[0] if which == "input" else output)
        if max_tokens is not None:
            x = x[: max(max_tokens - counts[name], 0)]
        counts[name] += x.shape[0]
        seen[name].append(x.float().cpu())

    with forward_hooks(modules, hook), torch.no_grad():
        _run(run, batches)
    return {name: torch.cat(xs) for name, xs in seen.items()}


def collect_taylor(
    modules: Mapping[str, nn.Module],
    loss_fn: Callable[[Any], Tensor],
    batches: Iterable[Any],
) -> dict[str, Tensor]:
    """First-order Taylor scores of each module's input features: mean over tokens of ``|a · ∂L/∂a|``.

    Args:
        modules: ``{name: module}``; the score is over the features of the module's first input.
        loss_fn: ``batch → scalar loss`` (a forward pass through the model); ``backward()`` is called on it.
        batches: calibration batches.

    Returns:
        ``{name: (C,)}`` float32 on the CPU. Parameter gradients are left accumulated; zero them after.
    """
    sums: dict[str, Tensor] = {}
    tokens = dict.fromkeys(modules, 0)

    def hook(name: str, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        a = inputs[0]
        if not a.requires_grad:
            return

        def grad_hook(g: Tensor) -> None:
            s = (_flat(a).float() * _flat(g).float()).abs().sum(0).cpu()  # (C,)
            sums[name] = sums[name] + s if name in sums else s
            tokens[name] += _flat(g).shape[0]

        a.register_hook(grad_hook)

    with forward_hooks(modules, hook):
        for batch in batches:
            loss_fn(batch).backward()
    return {name: sums[name] / max(tokens[name], 1) for name in sums}


class InputNormStats:
    """Running sum of squared input-feature norms of one layer (Wanda's ``‖X_j‖₂`` over calibration tokens).

    ``sq_sum_j = Σ_t x_tj²`` over every token t seen, ``count`` = number of tokens. ``norm()`` is
    ``sqrt(sq_sum)`` and ``rms()`` is ``sqrt(sq_sum / count)``; the two rank weights within a row identically.

    Args:
        in_features: number of input features.
        device: where the running sum lives.
    """

    def __init__(self, in_features: int, device: torch.device | str | None = None) -> None:
        if in_features <= 0:
            raise ValueError(f"in_features must be positive, got {in_features}.")
        self.sq_sum = torch.zeros(in_features, dtype=torch.float64, device=device)  # (C,) float64: exact sums
        self.count = 0

    @torch.no_grad()
    def add_batch(self, x: Tensor) -> None:
        """Fold in a batch of inputs ``(..., C)``: every leading position counts as one token.

        Raises:
            ValueError: if the last dimension is not ``in_features``.
        """
        if x.shape[-1] != self.sq_sum.shape[0]:
            raise ValueError(f"expected inputs with {self.sq_sum.shape[0]} features, got shape {tuple(x.shape)}.")
        flat = _flat(x).to(self.sq_sum.device, torch.float64)  # (T, C)
        self.sq_sum += flat.square().sum(0)
        self.count += flat.shape[0]

    def norm(self) -> Tensor:
        """``(C,)`` float32 L2 norm of each input feature over all tokens seen."""
        return self.sq_sum.sqrt().float()

    def rms(self) -> Tensor:
        """``(C,)`` float32 root-mean-square of each input feature (zeros before any batch)."""
        return (self.sq_sum / max(self.count, 1)).sqrt().float()

    def state_dict(self) -> dict[str, Any]:
        return {"sq_sum": self.sq_sum.clone(), "count": self.count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a `state_dict`.

        Raises:
            ValueError: if the stored feature count differs.
        """
        sq_sum = torch.as_tensor(state["sq_sum"], dtype=torch.float64)
        if sq_sum.shape != self.sq_sum.shape:
            raise ValueError(f"state has {tuple(sq_sum.shape)} features, this layer {tuple(self.sq_sum.shape)}.")
        self.sq_sum = sq_sum.to(self.sq_sum.device).clone()
        self.count = int(state["count"])


def collect_input_norms(
    modules: Mapping[str, nn.Module],
    run: nn.Module | Callable[[], Any],
    batches: Iterable[Any] | None = None,
) -> dict[str, InputNormStats]:
    """One [`InputNormStats`][lightning_prune.calibration.InputNormStats] per module, filled from the calibration
    forward passes (``no_grad``)."""
    stats = {name: InputNormStats(in_features(m)) for name, m in modules.items()}
    with forward_hooks(modules, lambda name, m, i, o: stats[name].add_batch(i[0])), torch.no_grad():
        _run(run, batches)
    return stats


def wanda_scores(weight: Tensor, input_norm: Tensor) -> Tensor:
    """``|W_ij| · ‖X_j‖₂`` for a weight ``(out, in)`` and input norms ``(in,)``.

    Raises:
        ValueError: if the input sizes differ.
    """
    if weight.dim() != 2 or weight.shape[1] != input_norm.shape[0]:
        raise ValueError(
            f"weight (out, in) and input_norm (in,) disagree: {tuple(weight.shape)}, {tuple(input_norm.shape)}."
        )
    return weight.detach().abs().float() * input_norm.to(weight.device).float()[None, :]  # (out, in)


def wanda_mask(weight: Tensor, input_norm: Tensor, sparsity: float) -> Tensor:
    """Bool keep mask ``(out, in)``: per output row, the ``round(sparsity · in)`` lowest Wanda scores are removed
    (`lightning_prune.masks.output_masks`, as ``scope="output"`` does during training).

    Ties are broken by position: among equal scores the lower input index is removed first.

    Raises:
        ValueError: if ``sparsity`` is not in [0, 1).
    """
    check_sparsity(sparsity)
    return output_masks({"w": wanda_scores(weight, input_norm)}, sparsity, {"w": 1})["w"]


def wanda_masks(
    model: nn.Module,
    batches: Iterable[Any],
    sparsity: float,
    modules: Mapping[str, nn.Module] | None = None,
) -> dict[str, Tensor]:
    """One-shot Wanda: calibrate on ``batches`` and return ``{fqn of weight: bool mask}`` in each weight's layout.

    Args:
        model: called as ``model(**batch)`` or ``model(batch)``.
        batches: calibration batches.
        sparsity: fraction of each output row to remove.
        modules: ``{name: Linear or Conv1D}``; [`linear_modules`][lightning_prune.calibration.linear_modules] (all but
            ``lm_head``) when None.
    """
    modules = linear_modules(model) if modules is None else modules
    stats = collect_input_norms(modules, model, batches)
    masks = {}
    for name, m in modules.items():
        w = m.weight.t() if is_conv1d(m) else m.weight  # (out, in)
        mask = wanda_mask(w, stats[name].norm(), sparsity)
        masks[f"{name}.weight"] = mask.t().contiguous() if is_conv1d(m) else mask
    return masks

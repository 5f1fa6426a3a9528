"""Removing neurons whose part the kept neurons can take over, and handing it over.

A feed-forward block's output is ``Y = A·W + b``: activations ``A`` (T tokens × n neurons) times the outgoing
weights ``W`` (n × d, one row per neuron). Removing a neuron deletes its term ``a_i·w_i``. If the kept neurons
predict ``a_i`` well (it is *redundant given the kept set*), refitting their outgoing weights recovers most of
that term; if not, the term is lost whatever pairwise redundancy said. Two pieces:

* [`conditional_redundancy`][lightning_prune.compensation.conditional_redundancy] picks the neurons to remove by
backward elimination on the activation
  covariance ``Σ``. With ``P = Σ⁻¹`` over the kept set, ``1 / P_ii`` is the variance of ``a_i`` that the other
  kept neurons do not explain linearly (for Gaussian activations ``I(a_i; kept) = −½·log(1 − R²_i)``). Without
  outgoing weights it removes the most predictable neuron first; with them it removes the one whose loss
  costs the least output, ``‖w_i‖² / P_ii`` — the squared block-output error per token of removing ``i`` after
  the refit (the structured form of Optimal Brain Surgeon). ``P`` is downdated after each removal, so every
  choice is conditioned on what is kept.
* [`refit_outputs`][lightning_prune.compensation.refit_outputs] hands the removed part over: the kept rows of ``W`` and
the bias are refitted by least
  squares so that ``A_kept·W' + b' ≈ A·W + b`` on calibration tokens (``bias_only``: only the removed neurons'
  mean output moves into the bias).

Both work on plain (unsharded) tensors; run them on calibration activations from
[`lightning_prune.calibration.collect_activations`][lightning_prune.calibration.collect_activations] (the input of the
block's output projection), or let [`refit_ffn_`][lightning_prune.refit_ffn_] collect them for every block of a
``transformers`` model. One-shot use:

```python
masks = calibrated_neuron_masks(model, batches, 0.5, "redundancy")  # lightning_prune.neurons
refit_ffn_(model, batches, masks)
shrink_(model, neuron_masks=masks)  # lightning_prune.structured
```

Examples:
    >>> acts = torch.randn(512, 8)
    >>> acts[:, 1] = 2 * acts[:, 0]  # neuron 1 repeats neuron 0
    >>> keep = conditional_redundancy(acts, 1)
    >>> bool(keep[0]) != bool(keep[1])
    True
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_prune._selection import is_conv1d
from lightning_prune._shards import is_sharded
from lightning_prune.calibration import collect_activations
from lightning_prune.structured import ffn_output_modules

__all__ = ["conditional_redundancy", "outgoing_weights", "refit_ffn_", "refit_outputs"]


def outgoing_weights(module: nn.Module) -> Tensor:
    """The output projection's weight as ``(n neurons, d outputs)`` (a view: ``Linear`` is stored ``(d, n)``)."""
    return module.weight if is_conv1d(module) else module.weight.t()


def _covariance(acts: Tensor, ridge: float) -> Tensor:
    """``(n, n)`` float64 covariance of ``(T, n)`` activations, ``ridge`` × its mean variance added on the diagonal."""
    a = acts.double()
    a = a - a.mean(0)
    cov = a.t() @ a / max(a.shape[0] - 1, 1)
    cov.diagonal().add_(ridge * cov.diagonal().mean().clamp_min(1e-12))
    return cov


def conditional_redundancy(acts: Tensor, n_remove: int, w_out: Tensor | None = None, ridge: float = 1e-3) -> Tensor:
    """Keep mask after removing ``n_remove`` neurons, each the most redundant given the neurons still kept.

    Args:
        acts: ``(T, n)`` activations, T > n for a well-posed covariance (``ridge`` keeps it invertible).
        n_remove: neurons to remove, 0 <= n_remove < n.
        w_out: ``(n, d)`` outgoing weights ([`outgoing_weights`][lightning_prune.compensation.outgoing_weights]); when
            given, the score is the output error ``‖w_i‖² / P_ii``, otherwise the unexplained fraction of variance
            ``1 / (P_ii Σ_ii)`` (0 for a neuron whose activation does not vary: a dead neuron goes first).
        ridge: added to the covariance's diagonal, as a fraction of the mean variance.

    Returns:
        ``(n,)`` bool mask, True = keep, with exactly ``n - n_remove`` True. Cost: ``O(n_remove · n²)`` time and
        ``O(n²)`` float64 memory.

    Raises:
        ValueError: on a bad ``n_remove``, non-2-D ``acts``, non-finite activations, or a ``w_out`` of another
            neuron count or sharded.
    """
    if acts.dim() != 2:
        raise ValueError(f"acts must be (tokens, neurons), got shape {tuple(acts.shape)}.")
    n = acts.shape[1]
    if not 0 <= n_remove < n:
        raise ValueError(f"n_remove must be in [0, {n}) for {n} neurons (at least one kept), got {n_remove}.")
    if w_out is not None and is_sharded(w_out):
        raise ValueError("w_out is sharded (a DTensor); pass the whole outgoing weights (e.g. w_out.full_tensor()).")
    if w_out is not None and w_out.shape[0] != n:
        raise ValueError(f"w_out needs one row per neuron ({n}), got shape {tuple(w_out.shape)}.")
    if not torch.isfinite(acts).all():
        raise ValueError("acts contain NaN or infinity; calibrate on finite activations.")
    cov = _covariance(acts, ridge)
    prec = torch.linalg.inv(cov)  # (n, n), the inverse over the kept set
    weight = None if w_out is None else w_out.detach().double().to(cov.device).square().sum(1)  # (n,)
    variance = cov.diagonal().clone()
    if weight is None:  # a dead (or constant) neuron carries no variance: nothing is lost by removing it first
        raw = acts.double().var(0).to(cov.device)  # (n,) without the ridge
        weight_free = raw > 1e-12 * raw.mean().clamp_min(1e-300)
    keep = torch.ones(n, dtype=torch.bool, device=cov.device)
    for _ in range(n_remove):
        d = prec.diagonal()
        score = (1.0 / (d * variance)) * weight_free if weight is None else weight / d
        i = int(torch.where(keep, score, torch.inf).argmin())
        keep[i] = False
        col = prec[:, i].clone()
        prec -= torch.outer(col, col) / col[i]  # Schur complement: the inverse over the kept set without i
        prec[i, :] = 0.0
        prec[:, i] = 0.0
        prec[i, i] = 1.0  # keeps the removed diagonal finite; it is masked out above
    return keep.to(acts.device)


@torch.no_grad()
def refit_outputs(module: nn.Module, acts: Tensor, keep: Tensor, bias_only: bool = False, ridge: float = 1e-6) -> None:
    """Refit an output projection in place so the kept neurons reproduce its output without the removed ones.

    The kept rows of [`outgoing_weights`][lightning_prune.compensation.outgoing_weights] and the bias are set to the
    least-squares fit of ``A·W + b`` from ``A_kept`` over the calibration tokens; the removed rows are left as they were
    (remove them with [`lightning_prune.structured.shrink_`][lightning_prune.shrink_] or mask them). Without a bias the
    fit has no intercept.

    Args:
        module: ``nn.Linear`` or ``transformers`` ``Conv1D`` whose input is the neuron activations.
        acts: ``(T, n)`` calibration activations (its input).
        keep: ``(n,)`` bool, True = kept.
        bias_only: only move the removed neurons' mean output ``mean(a_i)·w_i`` into the bias.
        ridge: added to the kept covariance's diagonal, as a fraction of its mean variance.

    Raises:
        ValueError: if shapes disagree, nothing is kept, ``bias_only`` is asked of a module without a bias, or the
            weight is sharded (a ``DTensor``).
    """
    w = outgoing_weights(module)  # (n, d) view
    if is_sharded(w):
        raise ValueError(
            "refit_outputs needs the whole output projection in one process, got a sharded (DTensor) weight: "
            "refit before sharding the model, or on a copy loaded unsharded."
        )
    keep = keep.to(torch.bool).cpu()
    if acts.dim() != 2 or acts.shape[1] != w.shape[0] or keep.shape != (w.shape[0],):
        raise ValueError(
            f"acts (T, n) and keep (n,) must match the {w.shape[0]} input neurons, got {tuple(acts.shape)} and "
            f"{tuple(keep.shape)}."
        )
    if not keep.any():
        raise ValueError("keep removes every neuron; keep at least one.")
    bias = getattr(module, "bias", None)
    if bias_only and bias is None:
        raise ValueError("bias_only needs an output projection with a bias.")
    a = acts.detach().double().cpu()
    full = w.detach().double().cpu()
    mean = a.mean(0) if bias is not None else torch.zeros(a.shape[1], dtype=torch.float64)
    if bias_only:
        bias += (mean[~keep] @ full[~keep]).to(bias)
        return
    a = a - mean
    kept = a[:, keep]  # (T, k)
    gram = kept.t() @ kept
    gram.diagonal().add_(ridge * gram.diagonal().mean().clamp_min(1e-12))
    fitted = torch.linalg.solve(gram, kept.t() @ (a @ full))  # (k, d)
    if bias is not None:
        bias += (mean @ full - mean[keep] @ fitted).to(bias)
    rows = keep.nonzero().squeeze(1).to(w.device)
    w[rows] = fitted.to(w)


def refit_ffn_(
    model: nn.Module, batches: Iterable[Any], masks: Sequence[Tensor], bias_only: bool = False
) -> dict[str, Tensor]:
    """Refit every feed-forward block's output projection for the neurons ``masks`` keep (one per block).

    Activations of all blocks are collected in one pass of the unchanged model over ``batches`` (memory
    ``tokens · n · 4`` bytes per block), then each block is refitted with
    [`refit_outputs`][lightning_prune.compensation.refit_outputs]. Follow with
    [`lightning_prune.structured.shrink_`][lightning_prune.shrink_] (or hold the neurons at zero) to remove the neurons.

    Args:
        model: a GPT-2, Llama or BERT ``transformers`` model, called as ``model(**batch)`` or ``model(batch)``.
        batches: calibration batches.
        masks: ``(n,)`` bool keep masks, one per block in order
            (e.g. from [`lightning_prune.neurons.calibrated_neuron_masks`][lightning_prune.calibrated_neuron_masks]).
        bias_only: see [`refit_outputs`][lightning_prune.compensation.refit_outputs].

    Returns:
        ``{fqn of the output projection: (T, n) activations used}``.

    Raises:
        ValueError: if the number of masks is not the number of blocks, or see
            [`refit_outputs`][lightning_prune.compensation.refit_outputs].
    """
    modules = ffn_output_modules(model)
    if len(masks) != len(modules):
        raise ValueError(f"need one keep mask per feed-forward block ({len(modules)}), got {len(masks)}.")
    acts = collect_activations(modules, model, batches)
    for (name, module), keep in zip(modules.items(), masks, strict=True):
        refit_outputs(module, acts[name], keep, bias_only=bias_only)
    return acts

"""Running statistics of feed-forward neurons, neuron scores by criterion, and neuron masks as weight masks.

The activation of a block's feed-forward neurons is the input of its output projection (``c_proj`` /
``down_proj`` / ``output.dense``, see [`lightning_prune.structured`][lightning_prune.structured]).
[`NeuronStats`][lightning_prune.neurons.NeuronStats] folds the activations ``a`` (tokens × n) of each training forward
pass into running statistics per layer:

* ``activation``: exponential moving average over passes of ``mean_t |a_tj|``;
* ``taylor``: the same of ``mean_t |a_tj · ∂L/∂a_tj|`` (first-order Taylor, Molchanov et al. 2017);
* ``samples``: a ring of the last ``samples`` token activations (a few tokens per pass), the input of the
  mutual-information redundancy criterion (`redundant_neurons`).

The first pass sets an average; later passes ``m ← decay·m + (1 − decay)·x``. A pass with a non-finite value is
left out and counted in ``skipped``, without a host sync: the choice is a ``torch.where`` on the device.

Neuron criteria are in the one registry of [`lightning_prune.criteria`][lightning_prune.criteria] (``unit="neurons"``:
``activation``, ``taylor``, ``weight_norm``, ``mutual_information``; higher score = keep).

One-shot only ([`CALIBRATED_CRITERIA`][lightning_prune.neurons.CALIBRATED_CRITERIA],
[`calibrated_neuron_masks`][lightning_prune.calibrated_neuron_masks]): ``redundancy``, the neuron whose outgoing term
the kept neurons best take over ([`lightning_prune.compensation`][lightning_prune.compensation]), to pair with
[`refit_ffn_`][lightning_prune.refit_ffn_].

Examples:
    >>> stats = NeuronStats([4], decay=0.5)
    >>> folded = stats.add_activations(0, torch.tensor([[1.0, -2.0, 0.0, 4.0]]))
    >>> stats.activation[0].tolist()
    [1.0, 2.0, 0.0, 4.0]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_prune.calibration import collect_activations, collect_taylor
from lightning_prune.compensation import conditional_redundancy
from lightning_prune.criteria import NEURON_CRITERIA, NeuronInputs, get_criterion
from lightning_prune.mutual_information import mean_abs_activation, redundant_neurons, weight_norm_scores
from lightning_prune.structured import (
    ffn_neuron_weights,
    ffn_output_modules,
    neuron_masks_from_scores,
)
from lightning_prune.structured import neuron_weight_masks as _owned_entries

__all__ = [
    "CALIBRATED_CRITERIA",
    "NEURON_CRITERIA",
    "NeuronStats",
    "calibrated_neuron_masks",
    "neuron_masks",
    "neuron_weight_masks",
]

# one-shot only: needs more calibration tokens than a block has neurons, and pairs with refit_ffn_
CALIBRATED_CRITERIA = (*NEURON_CRITERIA, "redundancy")


class NeuronStats:
    """Running per-neuron statistics of several layers (see the module docstring).

    Updates never wait for the device (no host sync): a non-finite pass is left out with ``torch.where`` and the
    counts are tensors. The ring takes ``per_pass`` evenly spaced tokens of every pass, shifted from pass to pass.

    Args:
        sizes: neurons per layer.
        decay: EMA decay in [0, 1).
        samples: token activations kept per layer for mutual information (0: none).
        per_pass: tokens sampled into the ring from each forward pass.

    Raises:
        ValueError: for a decay outside [0, 1) or negative sample counts.
    """

    def __init__(self, sizes: Sequence[int], decay: float = 0.99, samples: int = 0, per_pass: int = 16) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}.")
        if samples < 0 or per_pass <= 0:
            raise ValueError(f"samples must be >= 0 and per_pass > 0, got {samples} and {per_pass}.")
        self.sizes, self.decay, self.n_samples, self.per_pass = list(sizes), decay, samples, per_pass
        self.activation = [torch.zeros(n) for n in self.sizes]
        self.taylor = [torch.zeros(n) for n in self.sizes]
        self.samples = [torch.zeros(samples, n) for n in self.sizes]  # ring buffers (samples, n)
        self.counts = {k: torch.zeros(len(self.sizes), dtype=torch.long) for k in ("activation", "taylor")}
        self.skipped = torch.zeros((), dtype=torch.long)  # passes left out for a non-finite value
        self.filled = [0] * len(self.sizes)  # rows of the ring written so far (all time)

    def to(self, device: torch.device | str) -> NeuronStats:
        """Move the state to ``device``; returns self."""
        self.activation = [t.to(device) for t in self.activation]
        self.taylor = [t.to(device) for t in self.taylor]
        self.samples = [t.to(device) for t in self.samples]
        self.counts = {k: t.to(device) for k, t in self.counts.items()}
        self.skipped = self.skipped.to(device)
        return self

    def _ema_(self, which: str, layer: int, x: Tensor) -> Tensor:
        """Fold ``x (n,)`` into the average unless it is non-finite; returns that test as a bool tensor."""
        state, count = getattr(self, which)[layer], self.counts[which][layer]
        x = x.to(state.device)
        ok = torch.isfinite(x).all()
        new = torch.where(count == 0, x, torch.lerp(state, x, 1.0 - self.decay))
        state.copy_(torch.where(ok, new, state))
        count += ok
        self.skipped += ~ok
        return ok

    @torch.no_grad()
    def add_activations(self, layer: int, acts: Tensor) -> Tensor:
        """Fold one pass's activations ``(..., n)`` of ``layer`` in; a non-finite pass changes no statistic.

        Returns:
            A bool tensor: whether the pass was folded in.
        """
        flat = acts.detach().reshape(-1, acts.shape[-1])  # (T, n)
        ok = self._ema_("activation", layer, flat.float().abs().mean(0))  # a non-finite entry makes its mean so
        if self.n_samples:
            ring = self.samples[layer]
            k, n_tokens = min(self.per_pass, flat.shape[0]), flat.shape[0]
            stride = n_tokens // k
            rows = (self.filled[layer] * 7919 + torch.arange(k, device=flat.device) * stride) % n_tokens
            at = (self.filled[layer] + torch.arange(k, device=ring.device)) % self.n_samples
            ring[at] = torch.where(ok, flat[rows].to(ring), ring[at])
            self.filled[layer] += k
        return ok

    @torch.no_grad()
    def add_taylor(self, layer: int, acts: Tensor, grads: Tensor) -> Tensor:
        """Fold one pass's ``|a · ∂L/∂a|`` (both ``(..., n)``) in; a non-finite pass changes nothing.

        Returns:
            A bool tensor: whether the pass was folded in.
        """
        prod = (acts.detach().float() * grads.detach().float()).abs().reshape(-1, acts.shape[-1])  # (T, n)
        return self._ema_("taylor", layer, prod.mean(0))

    def kept_samples(self, layer: int) -> Tensor:
        """The ring's filled rows ``(min(filled, samples), n)``."""
        return self.samples[layer][: min(self.filled[layer], self.n_samples)]

    def state_dict(self) -> dict[str, Any]:
        return {
            "sizes": list(self.sizes),
            "activation": [t.cpu().clone() for t in self.activation],
            "taylor": [t.cpu().clone() for t in self.taylor],
            "samples": [t.cpu().clone() for t in self.samples],
            "counts": {k: t.cpu().clone() for k, t in self.counts.items()},
            "filled": list(self.filled),
            "skipped": int(self.skipped),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a `state_dict`.

        Raises:
            ValueError: if the layer sizes or the ring size differ from this instance's.
        """
        if list(state["sizes"]) != self.sizes:
            raise ValueError(f"neuron statistics are for layers of {list(state['sizes'])} neurons, not {self.sizes}.")
        if state["samples"] and state["samples"][0].shape[0] != self.n_samples:
            raise ValueError(f"the checkpoint keeps {state['samples'][0].shape[0]} samples, not {self.n_samples}.")
        device = self.activation[0].device if self.activation else "cpu"
        self.activation = [t.to(device).clone() for t in state["activation"]]
        self.taylor = [t.to(device).clone() for t in state["taylor"]]
        self.samples = [t.to(device).clone() for t in state["samples"]]
        self.counts = {k: torch.as_tensor(v, dtype=torch.long).to(device) for k, v in state["counts"].items()}
        self.filled = list(state["filled"])
        self.skipped = torch.tensor(int(state["skipped"]), device=device)


def neuron_masks(
    model: nn.Module,
    stats: NeuronStats,
    criterion: str,
    sparsity: float,
    current: Sequence[Tensor] | None = None,
    threshold: float = 0.0,
    weights: Mapping[str, Tensor] | None = None,
) -> list[Tensor]:
    """Keep masks ``(n,)`` per layer removing ``round(sparsity · n)`` neurons of every layer, by ``criterion``.

    Neurons already removed in ``current`` stay removed (they count toward the target; a layer already past it
    loses none more). ``weights`` (``{fqn in model: tensor}``, e.g. the running |w| of
    [`ImportanceTracking`][lightning_prune.ImportanceTracking]) replaces the current weights in ``weight_norm``.

    Raises:
        ValueError: for an unknown criterion, a sparsity outside [0, 1) or that removes every neuron of a layer, or
            statistics not yet gathered.
    """
    crit = get_criterion(criterion, unit="neurons")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be a fraction of neurons removed in [0, 1), got {sparsity!r}.")
    norms = ffn_neuron_weights(model, weights) if crit.name == "weight_norm" else None
    inputs = NeuronInputs(stats, norms, threshold)
    masks = []
    for i, n in enumerate(stats.sizes):
        keep = torch.ones(n, dtype=torch.bool) if current is None else current[i].bool().cpu()
        n_remove = max(0, round(sparsity * n) - int((~keep).sum()))  # removed beyond the target already: none more
        if round(sparsity * n) >= n:
            raise ValueError(f"sparsity {sparsity} removes all {n} neurons of layer {i}; keep at least one.")
        idx = keep.nonzero().flatten()  # candidates: the neurons still kept
        if crit.select is not None:
            drop = crit.select(i, idx, n_remove, inputs)
        else:
            drop = idx[torch.argsort(crit(i, inputs)[idx], stable=True)[:n_remove]]
        keep = keep.clone()
        keep[drop] = False
        masks.append(keep)
    return masks


def neuron_weight_masks(model: nn.Module, masks: Sequence[Tensor]) -> dict[str, Tensor]:
    """``{fqn: bool pruned}`` of every weight and bias entry that a removed neuron owns, in ``model``'s names.

    Producers (``c_fc``; ``gate_proj``/``up_proj``; ``intermediate.dense``) lose the neuron's output row and bias,
    the consumer (``c_proj``; ``down_proj``; ``output.dense``) the neuron's input column. Holding these entries at
    zero is exactly removing the neuron. See
    [`lightning_prune.structured.neuron_weight_masks`][lightning_prune.structured.neuron_weight_masks].
    """
    return _owned_entries(model, masks)


def calibrated_neuron_masks(
    model: nn.Module,
    batches: Iterable[Any],
    sparsity: float,
    criterion: str = "activation",
    loss_fn: Callable[[Any], Tensor] | None = None,
    threshold: float = 0.0,
    max_samples: int = 256,
) -> list[Tensor]:
    """One-shot neuron masks from calibration batches (no training): remove ``round(sparsity · n)`` per layer.

    ``redundancy`` removes, one at a time, the neuron whose outgoing term the kept neurons can best take over
    ([`lightning_prune.compensation.conditional_redundancy`][lightning_prune.compensation.conditional_redundancy] with
    the outgoing weights); follow it with [`lightning_prune.compensation.refit_ffn_`][lightning_prune.refit_ffn_], which
    hands that term over. It wants more calibration tokens than a block has neurons and costs ``O(n_remove · n²)`` per
    block.

    Args:
        model: a GPT-2, Llama or BERT ``transformers`` model, called as ``model(**batch)`` or ``model(batch)``.
        batches: calibration batches (a list: ``taylor`` passes over them again with gradients).
        sparsity: fraction of each layer's feed-forward neurons to remove.
        criterion: one of [`CALIBRATED_CRITERIA`][lightning_prune.neurons.CALIBRATED_CRITERIA].
        loss_fn: ``batch → scalar loss`` for ``taylor`` (parameter gradients are zeroed afterwards).
        threshold: normalised mutual information of a redundant pair, for ``mutual_information``.
        max_samples: tokens sampled per layer for the Gram matrices of ``mutual_information``.

    Raises:
        ValueError: for an unknown criterion, ``taylor`` without ``loss_fn``, or a sparsity out of range.
    """
    if criterion not in CALIBRATED_CRITERIA:
        raise ValueError(f"unknown neuron criterion {criterion!r}; choose one of {CALIBRATED_CRITERIA}.")
    if criterion == "taylor" and loss_fn is None:
        raise ValueError("criterion 'taylor' needs loss_fn: batch -> scalar loss.")
    batches = list(batches)
    modules = ffn_output_modules(model)
    if criterion == "weight_norm":
        return neuron_masks_from_scores([weight_norm_scores(*w) for w in ffn_neuron_weights(model)], sparsity)
    if criterion == "taylor":
        taylor = collect_taylor(modules, loss_fn, batches)
        model.zero_grad(set_to_none=True)
        return neuron_masks_from_scores([taylor[name] for name in modules], sparsity)
    acts = collect_activations(modules, model, batches)  # {fqn: (T, n)}
    if criterion == "activation":
        return neuron_masks_from_scores([mean_abs_activation(a) for a in acts.values()], sparsity)
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be a fraction of neurons removed in [0, 1), got {sparsity!r}.")
    if criterion == "redundancy":
        return [
            conditional_redundancy(a, round(sparsity * a.shape[1]), w_out)
            for a, (_, w_out) in zip(acts.values(), ffn_neuron_weights(model), strict=True)
        ]
    return [
        redundant_neurons(a, round(sparsity * a.shape[1]), threshold, max_samples=max_samples) for a in acts.values()
    ]

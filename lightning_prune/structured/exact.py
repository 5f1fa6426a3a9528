"""Whether removing a dimension's units is exact for a model: decided from the model itself, on a small copy.

Structured pruning while training holds a removed unit's entries at zero (the *masked* model) and cuts them out at
export (the *shrunk* model). The two compute the same where zeroing a unit removes its contribution — a neuron, a
key/value group, a pre-norm residual block — and differ where the architecture says otherwise: a post-norm block
whose zeroed norm outputs zeros instead of passing its input on, a LayerNorm that centres over the zeroed hidden
features, q/k norms over all heads that a head cut rescales, a block whose computation reads its own index (a
renumbering changes it), learned residual scales zeroed with a block, a router that still gives a zeroed expert a
share.

`inexact_dims` finds these by doing it: on a small copy of the model, each dimension loses a few units, masked in
one copy and cut out of another, and the two copies' logits on a seeded batch are compared — the shrunk one rebuilt
from its config as ``from_pretrained`` would build it, so what the modeling code derives from a block's index or the
config is derived anew. What differs beyond ``tolerance`` of the logits' standard deviation is reported with the
difference. The copy is the model itself when it is small and whole in this process, else the same class built
from its config with few blocks and narrow widths (random weights). Either way the norms' epsilons are set aside:
an RMS norm over zeroed features is exact up to its epsilon (negligible at a trained model's activations, magnified
by small random ones), and the structure alone decides; the export's own check accounts for the epsilon.

Examples:
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> model = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=16, n_head=2, n_inner=16, vocab_size=32))
    >>> inexact_dims(model, ("neurons", "layers"))
    {}
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from lightning_prune._shards import is_sharded
from lightning_prune.structured.config import config_accepts, config_for
from lightning_prune.structured.layout import block_layouts
from lightning_prune.structured.size import Counts, SizeModel
from lightning_prune.structured.units import Units, shrink_units_

__all__ = ["inexact_dims", "probe_units", "small_copy", "without_epsilon_"]

_SMALL = 4_000_000  # parameters up to which the model itself is copied for the probe
_CACHE: dict[tuple[type, str, tuple[str, ...]], dict[str, str]] = {}


def _smaller_counts(model: nn.Module, size: SizeModel) -> Counts:
    """Few blocks, narrow widths the config accepts: the sizes of the small copy."""
    full, accepts = size.full, config_accepts(model)
    layers = tuple(i < 3 for i in range(len(full.layers)))
    counts = replace(full, layers=layers, neurons=min(full.neurons, 16), groups=min(full.groups, 2))
    counts = replace(counts, experts=min(full.experts, 4)) if full.experts else counts
    for hidden in range(32, full.hidden, 8):  # the narrowest residual stream the config takes
        if accepts(replace(counts, hidden=hidden)):
            return replace(counts, hidden=hidden)
    return counts


def without_epsilon_(model: nn.Module) -> nn.Module:
    """Norms' epsilons made negligible: a masked and a shrunk norm agree up to their epsilon, which random weights of a
    small copy (tiny activations) would otherwise magnify."""
    for module in model.modules():
        for name in ("eps", "variance_epsilon", "epsilon"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 1e-12)
    return model


def _own_weights(model: nn.Module) -> bool:
    """Whether the probe copies the model itself: small, and whole in this process (not sharded)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params) <= _SMALL and not any(is_sharded(p) for p in params)


def small_copy(model: nn.Module) -> nn.Module | None:
    """A small model of ``model``'s class and family in float32, in eval mode: a deep copy when it is small, else built
    from its config with at most 3 blocks, 16 neurons, 2 key/value groups, 4 experts, a narrow residual stream and a
    vocabulary of 128 (random weights; also for a model sharded over processes). None when the class cannot be built
    from its config."""
    if _own_weights(model):
        return without_epsilon_(copy.deepcopy(model).float().eval())
    try:
        config = config_for(model, _smaller_counts(model, SizeModel.from_model(model)))
        config = copy.deepcopy(config)
        vocab = int(getattr(config, "vocab_size", 0) or 0)
        if vocab > 128:
            config.vocab_size = 128
            for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
                if isinstance(getattr(config, key, None), int) and getattr(config, key) >= 128:
                    setattr(config, key, 127)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            small = type(model)(config)
    except Exception:  # noqa: BLE001 - a class that does not build from its config: nothing to probe on
        return None
    return without_epsilon_(small.float().eval())


def probe_units(model: nn.Module, dim: str) -> Units | None:
    """A few units of ``dim`` removed (the same count in every block, sizes the config accepts): the last neuron, the
    last key/value group, the middle block, the last residual features, the last expert. None when there is nothing
    the config lets go."""
    units, layouts = Units.full(model, (dim,)), block_layouts(model)
    if dim == "neurons":
        for m in units.neurons:
            m[-1] = False
    elif dim == "heads":
        group = layouts[0].n_heads // layouts[0].n_kv_heads
        for m in units.heads:
            m[-group:] = False
    elif dim == "layers":
        if len(units.layers) < 2:
            return None
        units.layers[min(1, len(units.layers) - 1)] = False
    elif dim == "experts":
        for m in units.experts:
            m[-1] = False
    elif dim == "hidden":
        size, accepts = SizeModel.from_model(model), config_accepts(model)
        kept = [h for h in range(size.full.hidden - 1, 0, -1) if accepts(replace(size.full, hidden=h))]
        if not kept:
            return None
        units.hidden[kept[0] :] = False
    return units


def _rebuilt(model: nn.Module) -> nn.Module:
    """``model`` as ``from_pretrained`` would give it back: its class built from its config, its weights loaded (what
    the modeling code derives from the config or a block's index at construction is derived anew)."""
    with torch.random.fork_rng(devices=[]):
        fresh = type(model)(copy.deepcopy(model.config))
    fresh.load_state_dict(model.state_dict())
    return without_epsilon_(fresh.float().eval())


def _output(out: Any) -> torch.Tensor:
    """The logits, or an encoder's last hidden state."""
    value = getattr(out, "logits", None)
    return (value if value is not None else out.last_hidden_state).float()


@torch.no_grad()
def _difference(model: nn.Module, units: Units, ids: torch.Tensor) -> float:
    """Largest logit difference of the masked and the shrunk copy, relative to the masked logits' std."""
    masked = copy.deepcopy(model)
    params = dict(masked.named_parameters())
    for fqn, pruned in units.weight_masks(masked).items():
        params[fqn][pruned.to(params[fqn].device)] = 0
    shrunk = _rebuilt(shrink_units_(copy.deepcopy(masked), units, masked=True))
    ref, got = _output(masked(input_ids=ids)), _output(shrunk(input_ids=ids))
    return float((got - ref).abs().max()) / (float(ref.std()) or 1.0)


def inexact_dims(model: nn.Module, dims: Sequence[str], tolerance: float = 1e-2) -> dict[str, str]:
    """``{dimension: why}`` for the dimensions of ``dims`` whose masked model does not compute what the shrunk model
    computes (see the module docstring), decided on a small copy. A dimension the probe cannot try (the class does not
    build from its config, or the config lets no unit go) is not reported. Results are cached by class and config.
    """
    key = (type(model), json.dumps(model.config.to_dict(), sort_keys=True, default=str), tuple(dims))
    if key in _CACHE:
        return dict(_CACHE[key])
    out: dict[str, str] = {}
    small = small_copy(model) if dims else None
    if small is not None:
        vocab = int(getattr(small.config, "vocab_size", 32) or 32)
        ids = torch.randint(0, vocab, (2, 8), generator=torch.Generator().manual_seed(0))
        ids = ids.to(next(small.parameters()).device)
        for dim in dims:
            try:
                units = probe_units(small, dim)
                difference = _difference(small, units, ids) if units is not None else 0.0
            except Exception:  # noqa: BLE001 - the copy cannot lose this unit (its config, adapters): not decided here
                continue
            if difference > tolerance:
                out[dim] = (
                    f"zeroing its units while training computes another model than cutting them out (the logits of "
                    f"a small {type(model).__name__} differ by {difference:.3g} of their std)"
                )
    _CACHE[key] = dict(out)
    return out

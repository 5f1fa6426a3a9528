"""One mask registry per model: every mask of every writer, held in one place.

Pruning callbacks (weights, neurons) and ``FineTune`` each *write* masks into the registry of their model under
their own name; the registry keeps the union (an entry is pruned if any writer pruned it) and is the one place
that makes pruned entries exact zeros:

- after every ``optimizer.step`` (a step post-hook per optimizer) and in the gradients before it (a pre-hook),
  with one fused pass over all held tensors each time: 2 passes per step in all;
- on demand (`MaskRegistry.enforce_`): in the weights, in every optimizer state tensor shaped like a weight
  (Adam's moments, momentum), and in *shadow* copies of the model (the averaged model of a weight-averaging
  callback), so no copy of the weights can bring a pruned entry back.

Every pass clears exactly (`clear_`: the tensors' integer views times the bool masks):
a pruned entry becomes +0.0 whatever arrived there — a NaN or infinite gradient included (a regulariser such as
``sqrt(sum w²)`` over a pruned row has gradient 0/0 there) — so masks never make a finite run non-finite, and kept
entries are untouched bit for bit (a non-finite value there stays the user's).

Masks are ``bool`` on the parameter's *local* tensor (the whole tensor, or this process's shard of a ``DTensor``;
see `_shards`): one byte per parameter, nothing else is kept.

Structure travels beside the masks: a writer that removes whole units (neurons, heads, layers, hidden features,
experts) *publishes* them in `MaskRegistry.units` (`MaskRegistry.publish`), so that an export can cut
them out physically without knowing which callback removed them. ``units[writer]`` is
``{"prefix": fqn of the transformers model, "neurons": [...], "heads": [...], "layers": ..., "hidden": ...,
"experts": [...]}`` with bool keep masks in the shapes of [`lightning_prune.structured`][lightning_prune.structured]
(absent or None: that dimension untouched).

Examples:
    >>> model = torch.nn.Linear(2, 2)
    >>> registry = registry_of(model)
    >>> registry.resolve(model)
    >>> registry.write("mine", {"weight": torch.tensor([[True, False], [True, True]])})
    >>> registry.enforce_()
    >>> float(model.weight[0, 1])
    0.0
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from lightning_prune._compat import inner_optimizer, version
from lightning_prune._shards import Layout, layout_of, local
from lightning_prune.masks import clear_

__all__ = ["MaskRegistry", "Shrink", "registry_of"]

_REGISTRIES: weakref.WeakKeyDictionary[nn.Module, MaskRegistry] = weakref.WeakKeyDictionary()


def registry_of(model: nn.Module) -> MaskRegistry:
    """The registry of ``model`` (created on first use; one per model object, dropped with the model)."""
    if model not in _REGISTRIES:
        _REGISTRIES[model] = MaskRegistry()
    return _REGISTRIES[model]


@dataclass(frozen=True)
class Shrink:
    """A physical shrink of the model that the registry followed: how every record named by an fqn before it maps to
    the model after it. A cut keeps the features ``keep`` (bool, ``(size,)``) of parameter ``fqn`` along ``dim``
    (named as before the shrink); a rename maps an fqn to its name after removed blocks are renumbered (None: its
    block is gone); fqns in neither are unchanged."""

    cuts: tuple[tuple[str, int, Tensor], ...] = ()  # (fqn before, dim, bool keep)
    renames: Mapping[str, str | None] = field(default_factory=dict)  # fqn before -> fqn after (None: removed)
    prefix: str | None = None  # every unit published for the model at this fqn was cut out

    def fqn(self, fqn: str) -> str | None:
        """The name after the shrink (None: the parameter is gone)."""
        return self.renames.get(fqn, fqn)

    def mask(self, fqn: str, mask: Tensor) -> Tensor:
        """A tensor shaped like parameter ``fqn`` before the shrink, cut as the parameter was."""
        for name, dim, keep in self.cuts:
            if name == fqn and mask.dim() > dim and mask.shape[dim] == keep.numel():
                mask = mask.index_select(dim, keep.nonzero().flatten().to(mask.device)).contiguous()
        return mask

    def shape(self, fqn: str, shape: Sequence[int]) -> tuple[int, ...]:
        """A parameter's shape after the shrink."""
        out = list(shape)
        for name, dim, keep in self.cuts:
            if name == fqn and len(out) > dim and out[dim] == keep.numel():
                out[dim] = int(keep.sum())
        return tuple(out)

    def record(self, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``{fqn: tensor}`` keyed and shaped as after the shrink (entries of removed blocks dropped)."""
        out = {}
        for fqn, mask in masks.items():
            new = self.fqn(fqn)
            if new is not None:
                out[new] = self.mask(fqn, mask)
        return out


def block_renames(fqns: Iterable[str], blocks: Sequence[str], layers: Tensor | None) -> dict[str, str | None]:
    """How fqns move when the blocks ``layers`` (bool keep, one per block) are removed and the rest renumbered:
    ``blocks`` are the blocks' fqn prefixes before (``model.layers.0`` …); the j-th kept block takes the name of the
    j-th block."""
    if layers is None or bool(layers.all()):
        return {}
    new = {}
    kept = 0
    for i, keep in enumerate(layers.tolist()):
        new[blocks[i] + "."] = (blocks[kept] + ".") if keep else None
        kept += bool(keep)
    out: dict[str, str | None] = {}
    for fqn in fqns:
        for old, moved in new.items():
            if fqn.startswith(old):
                if moved != old:
                    out[fqn] = None if moved is None else moved + fqn[len(old) :]
                break
    return out


class MaskRegistry:
    """The masks of one model, by fqn, from every writer; see the module docstring."""

    def __init__(self) -> None:
        self.params: dict[str, nn.Parameter] = {}  # fqn -> the parameter as it trains now
        self.layouts: dict[str, Layout] = {}  # fqn -> where its local tensor sits
        self.writers: dict[str, dict[str, Tensor]] = {}  # writer -> fqn -> local bool keep mask
        self.keep: dict[str, Tensor] = {}  # fqn -> union over writers: True only if every writer keeps it
        self.units: dict[str, dict[str, Any]] = {}  # writer -> {"prefix": ..., dimension: unit keep masks}
        self.trackers: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()  # Trainer -> its tracker
        self.wanted: dict[str, set[str]] = {}  # fqn -> running statistics a pruning callback reads of it
        self.progress: dict[str, tuple[float, float]] = {}  # writer -> (target reached, final target)
        self.events: dict[str, list[dict[str, Any]]] = {}  # writer -> its pruning events ({"step", "epoch", ...})
        self.grouped: dict[str, dict[str, tuple[int, int]]] = {}  # writer -> fqn -> (axis, M) of its N:M groups
        self.shrinks: list[Shrink] = []  # the physical shrinks followed, in order (records before them map through)
        self._model: weakref.ref[nn.Module] | None = None
        self._optimizers: list[Optimizer] = []
        self._handles: list[Any] = []
        self._grads_masked: tuple[int, int] | None = None  # (id, version) of the gradient last masked

    # ---- parameters ----------------------------------------------------------------------------------------

    def resolve(self, model: nn.Module) -> None:
        """Find every parameter of ``model`` as it trains now (after ``configure_model``, sharding and precision
        conversion have replaced them), keeping the masks, which are keyed by fqn.

        Masks that no longer fit (their parameter is gone or has another shape) are dropped with a warning.
        """
        self._model = weakref.ref(model)
        self.params = dict(model.named_parameters())
        self.layouts = {}
        stale = sorted(f for f, m in self.keep.items() if not self._fits(f, m))
        if stale:  # the model was reshaped (e.g. structured removal) or replaced under the same object
            warnings.warn(
                f"the masks of {stale[:5]}{' …' if len(stale) > 5 else ''} no longer fit the model's parameters "
                "(missing, or reshaped since they were written, e.g. by a structured shrink): they are dropped, and "
                "the zeros already in those weights are no longer held. A pruning callback of this fit prunes anew.",
                stacklevel=2,
            )
            for masks in self.writers.values():
                for f in stale:
                    masks.pop(f, None)
            self._union(stale)
        self.keep = {f: m.to(local(self.params[f]).device) for f, m in self.keep.items()}
        for masks in self.writers.values():
            masks.update({f: m.to(local(self.params[f]).device) for f, m in masks.items()})

    def layout(self, fqn: str) -> Layout:
        """The `Layout` of a resolved parameter."""
        if fqn not in self.layouts:
            self.layouts[fqn] = layout_of(self.params[fqn])
        return self.layouts[fqn]

    def local(self, fqn: str) -> Tensor:
        """The local tensor of a resolved parameter (its shard under FSDP2)."""
        return local(self.params[fqn])

    def _fits(self, fqn: str, mask: Tensor) -> bool:
        return fqn in self.params and tuple(mask.shape) == tuple(local(self.params[fqn]).shape)

    def _check(self, fqn: str, mask: Tensor) -> None:
        if fqn not in self.params:
            raise ValueError(
                f"a mask names {fqn!r}, which the model lacks; its parameters look like {list(self.params)[:4]}."
            )
        shape = tuple(local(self.params[fqn]).shape)
        if tuple(mask.shape) != shape:
            raise ValueError(f"the mask of {fqn!r} is shaped {tuple(mask.shape)}, its parameter here {shape}.")

    # ---- writing -------------------------------------------------------------------------------------------

    @torch.no_grad()
    def write(self, writer: str, masks: Mapping[str, Tensor]) -> None:
        """Set ``writer``'s masks (local bool, True keeps) for the given fqns and update the union. A writer's
        masks replace its earlier ones for those fqns; other writers' masks are untouched."""
        for fqn, mask in masks.items():
            self._check(fqn, mask)
        own = self.writers.setdefault(writer, {})
        own.update({f: m.to(dtype=torch.bool, device=self.local(f).device) for f, m in masks.items()})
        self._union(masks)

    def forget(self, writer: str) -> None:
        """Drop every mask of ``writer`` (entries it alone pruned are free to train again) and its published units."""
        fqns = list(self.writers.pop(writer, {}))
        for record in (self.units, self.progress, self.events, self.grouped):
            record.pop(writer, None)
        self._union(fqns)

    def publish(self, writer: str, units: Mapping[str, Any]) -> None:
        """Publish the whole units ``writer`` removes: ``{"prefix": fqn of the transformers model, "neurons": [...],
        "heads": [...], "layers": ..., "hidden": ..., "experts": [...]}`` (bool keep masks, on the CPU), replacing
        what it published before. An export reads them to cut the units out physically.

        Raises:
            ValueError: without a ``prefix`` or with a dimension the structured package does not know.
        """
        known = {"prefix", "neurons", "heads", "layers", "hidden", "experts"}
        if "prefix" not in units or set(units) - known:
            raise ValueError(
                f"units need a 'prefix' and only the dimensions {sorted(known - {'prefix'})}, got {sorted(units)}."
            )
        self.units[writer] = {k: _cpu(v) for k, v in units.items()}

    def others(self, writer: str, prefix: str) -> Any:
        """The units every writer but ``writer`` removed from the model at ``prefix``, as one
        [`Units`][lightning_prune.structured.Units] (a unit removed by any of them is removed), or None: what a
        writer of units counts before it decides."""
        from lightning_prune.structured.units import combine_units

        return combine_units({w: u for w, u in self.units.items() if w != writer}, prefix)

    def group(self, writer: str, axes: Mapping[str, int], m: int) -> None:
        """Declare that ``writer`` keeps N:M groups of ``m`` consecutive entries along axis ``axes[fqn]`` of these
        parameters: a writer that cuts features out along that axis would break the groups, and refuses (see
        ``StructuredPruning``)."""
        self.grouped[writer] = {f: (int(d), int(m)) for f, d in axes.items()}

    @torch.no_grad()
    def shrunk_(self, shrink: Shrink) -> None:
        """Follow a physical shrink of the model: every writer's masks, the union, the published units and the
        wanted statistics are renamed and cut through ``shrink`` (one function for every record), the parameters
        are found again, and the shrink is kept in `shrinks`, through which each callback maps its own state
        at its next fit. Units published for the shrunk model are cut too; a writer whose units are all gone keeps
        no unit record."""
        for writer, masks in self.writers.items():
            self.writers[writer] = shrink.record(masks)
        self.keep = {}
        self._union({f for masks in self.writers.values() for f in masks})
        self.wanted = {new: stats for f, stats in self.wanted.items() if (new := shrink.fqn(f)) is not None}
        for writer in list(self.grouped):
            self.grouped[writer] = {n: m for f, m in self.grouped[writer].items() if (n := shrink.fqn(f)) is not None}
        if shrink.prefix is not None:
            self.units = {w: u for w, u in self.units.items() if u.get("prefix", "") != shrink.prefix}
        self.shrinks.append(shrink)
        model = self._model() if self._model is not None else None
        if model is not None:
            self.resolve(model)

    def _union(self, fqns: Iterable[str]) -> None:
        for fqn in fqns:
            parts = [masks[fqn] for masks in self.writers.values() if fqn in masks]
            if not parts:
                self.keep.pop(fqn, None)
                continue
            keep = parts[0]  # one writer: its own tensor, no copy (one byte per parameter in all)
            for part in parts[1:]:
                keep = keep & part
            self.keep[fqn] = keep

    @torch.no_grad()
    def cut_(self, fqn: str, dim: int, keep: Tensor) -> None:
        """Follow a physical shrink of parameter ``fqn``: every writer's mask keeps only the features ``keep`` (bool,
        ``(size,)``) along ``dim``, as the parameter did, so the entries pruned in what remains stay held."""
        index = keep.nonzero().flatten()
        for masks in self.writers.values():
            if fqn in masks:
                masks[fqn] = masks[fqn].index_select(dim, index.to(masks[fqn].device)).contiguous()
        self._union([fqn])

    def pruned_count(self, fqns: Iterable[str]) -> int:
        """Entries of these parameters' local tensors pruned by any writer."""
        return sum(int((~self.keep[f]).sum()) for f in fqns if f in self.keep)

    # ---- holding -------------------------------------------------------------------------------------------

    def attach(self, optimizers: Iterable[Optimizer]) -> None:
        """Hold the masks through every step of these optimizers: gradients masked before ``step``, weights after.
        Idempotent for the same optimizers; hooks of earlier optimizers are removed."""
        optimizers = [inner_optimizer(o) for o in optimizers]  # LightningOptimizer wraps the real one
        if [id(o) for o in optimizers] == [id(o) for o in self._optimizers] and self._handles:
            return
        self.detach()
        self._optimizers = optimizers
        for optimizer in optimizers:
            self._handles.append(optimizer.register_step_pre_hook(self._mask_grads))
            self._handles.append(optimizer.register_step_post_hook(self._mask_weights))

    def detach(self) -> None:
        """Remove the step hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._optimizers = []

    @torch.no_grad()
    def mask_grads_(self) -> None:
        """Multiply the gradients by the masks, once per step: the callbacks call it in
        ``on_before_optimizer_step`` so that gradient clipping sees masked gradients; the step pre-hook calls it
        again for loops that have no such hook, and it does nothing when the gradients have not changed since."""
        fqns = [f for f in self.keep if self.params[f].grad is not None]
        if not fqns:
            return
        grads = [local(self.params[f].grad) for f in fqns]
        seen = (id(grads[0]), version(grads[0]))  # a new backward writes a new tensor or bumps the version
        if seen == self._grads_masked:
            return
        clear_(grads, [self.keep[f] for f in fqns])
        self._grads_masked = (id(grads[0]), version(grads[0]))

    def _mask_grads(self, *_: Any) -> None:
        self.mask_grads_()

    @torch.no_grad()
    def _mask_weights(self, *_: Any) -> None:
        if self.keep:
            clear_([self.local(f) for f in self.keep], list(self.keep.values()))

    @torch.no_grad()
    def enforce_(self, optimizers: Iterable[Optimizer] = (), shadows: Iterable[Mapping[str, Tensor]] = ()) -> None:
        """Make every pruned entry exactly zero now (also over NaN): in the weights, their gradients, the optimizer
        state tensors shaped like them, and each shadow ``{fqn: tensor}`` (e.g. an averaged copy of the model)."""
        optimizers, shadows = [inner_optimizer(o) for o in optimizers], list(shadows)
        tensors, keeps = [], []
        for fqn, keep in self.keep.items():
            param = self.params[fqn]
            held = [param, param.grad, *(v for o in optimizers for v in o.state.get(param, {}).values())]
            held += [shadow[fqn] for shadow in shadows if fqn in shadow]
            for t in held:
                if isinstance(t, Tensor) and tuple(local(t).shape) == tuple(keep.shape):
                    tensors.append(local(t))
                    keeps.append(keep if local(t).device == keep.device else keep.to(local(t).device))
        clear_(tensors, keeps)

    def tracking(self, trainer: Any) -> Any:
        """The ``ImportanceTracking`` that keeps this model's running statistics in ``trainer`` (it registers itself
        at setup), or None."""
        return self.trackers.get(trainer)

    def at_target(self) -> bool:
        """Whether every writer has reached its final target (see `progress`)."""
        return all(reached >= final for reached, final in self.progress.values())

    def want(self, fqns: Iterable[str], stats: Iterable[str]) -> None:
        """Ask for running statistics of these parameters (a pruning callback at ``on_fit_start``); the tracker keeps
        them from ``on_train_start`` on, whatever its own selection."""
        stats = set(stats)
        for fqn in fqns:
            self.wanted.setdefault(fqn, set()).update(stats)

    def nbytes(self) -> int:
        """Bytes held by the masks (writers' and the union; a tensor shared by both counts once)."""
        held = [*self.keep.values(), *(m for masks in self.writers.values() for m in masks.values())]
        unique = {t.data_ptr(): t for t in held}
        return sum(t.numel() * t.element_size() for t in unique.values())


def _cpu(value: Any) -> Any:
    """Tensors (also inside lists) as bool tensors on the CPU; everything else as it is."""
    if isinstance(value, Tensor):
        return value.detach().bool().cpu().clone()
    if isinstance(value, (list, tuple)):
        return [_cpu(v) for v in value]
    return value

"""The one checkpoint format of what a writer removed, and its one reader.

Every writer (``ScheduledPruning``, ``NeuronPruning``, ``StructuredPruning``, ``HoldMasks``) saves in its callback
state the entry masks it holds in the model's registry — bit-packed ``tensors`` (saved shard by shard by the
lifecycle), ``where`` their parameter is, which are ``packed``, and the full ``shapes`` of the parameters — and a
writer of whole units also what it published (``published``: ``{"prefix": ..., dimension: keep masks}``). Recovery
([`HoldMasks`][lightning_prune.HoldMasks], [`FineTune`][lightning_prune.FineTune], ``masks_from_checkpoint``) reads
every state in that format, whichever callback wrote it: `read_checkpoint`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_prune.masks import pack_mask, unpack_mask

__all__ = ["Record", "checkpoint_masks", "dump_masks", "dump_writer", "masks_in_state", "read_checkpoint"]


def dump_masks(masks: Mapping[str, Tensor], registry: Any, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """A checkpoint state of local masks: bit-packed ``tensors`` (saved shard by shard by the lifecycle), ``where``
    their parameter is, which are ``packed``, and the full ``shapes`` of the parameters they are for."""
    packed = [f for f, m in masks.items() if _packable(m, registry.layout(f))]
    return {
        "tensors": {f: pack_mask(m) if f in packed else m.clone() for f, m in masks.items()},
        "where": {f: f for f in masks},
        "packed": packed,
        "shapes": {f: list(s) for f, s in shapes.items()},
    }


def dump_writer(registry: Any, writer: str) -> dict[str, Any]:
    """What ``writer`` removed, as its checkpoint state carries it for recovery: its entry masks in the registry
    (`dump_masks`, full shapes from their layouts) and its published units."""
    if registry is None:  # never fitted: nothing removed yet
        return {}
    masks = registry.writers.get(writer, {})
    state = dump_masks(masks, registry, {f: registry.layout(f).shape for f in masks})
    return {**state, "published": registry.units.get(writer)}


def masks_in_state(state: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """``{fqn: bool keep}`` from a writer's state (bit-packed ``tensors``, or the plain ``masks`` of older
    ``ScheduledPruning`` checkpoints), unpacked to ``shapes`` (the local shapes, or the full ones for a single-file
    state)."""
    if "tensors" not in state:
        return {f: m.bool() for f, m in state["masks"].items()}
    packed = set(state.get("packed", ()))
    return {f: unpack_mask(t, shapes[f]) if f in packed else t.bool() for f, t in state["tensors"].items()}


def _packable(mask: Tensor, layout: Any) -> bool:
    """A mask is bit-packed along its last dim when it has one to spare and is not split along it."""
    return mask.dim() >= 2 and layout.dim != mask.dim() - 1


def holds_masks(state: Any) -> bool:
    """Whether a callback state is in the writers' format (or an older ``ScheduledPruning`` one)."""
    if not isinstance(state, Mapping):
        return False
    tensors, shapes = state.get("tensors"), state.get("shapes")
    mine = (
        isinstance(tensors, Mapping)
        and isinstance(shapes, Mapping)
        and "packed" in state
        and set(tensors) <= set(shapes)
    )
    return mine or isinstance(state.get("masks"), Mapping) and all(torch.is_tensor(m) for m in state["masks"].values())


@dataclass
class Record:
    """Everything a checkpoint says was removed: the union of every writer's entry masks (``{fqn: bool keep}``) and
    every writer's published units (``[{"prefix": ..., dimension: keep masks}]``)."""

    masks: dict[str, Tensor] = field(default_factory=dict)
    units: list[dict[str, Any]] = field(default_factory=list)
    writers: list[str] = field(default_factory=list)


def read_checkpoint(path: str | Path, state_key: str | None = None) -> Record:
    """What a pruning run's Lightning checkpoint says was removed, from every writer's state (or ``state_key``'s).

    Raises:
        KeyError: if the checkpoint holds no writer's state (or not ``state_key``'s); the message lists its states.
        ValueError: if a writer's state is saved shard by shard (a distributed checkpoint): resume it instead.
    """
    states = torch.load(path, map_location="cpu", weights_only=False).get("callbacks", {})
    if state_key is not None and state_key not in states:
        raise KeyError(f"{path} holds no {state_key!r} state; callback states found: {sorted(map(str, states))}.")
    chosen = {state_key: states[state_key]} if state_key is not None else states
    record = Record()
    for key, state in chosen.items():
        if not holds_masks(state):
            continue
        if any(isinstance(t, Mapping) for t in state.get("tensors", {}).values()):
            raise ValueError(
                f"{path}: the state {key!r} is saved shard by shard in a distributed checkpoint; resume that run with "
                "ckpt_path= under the same strategy to continue it."
            )
        shapes = {f: tuple(s) for f, s in state.get("shapes", {}).items()}
        for f, keep in masks_in_state(state, shapes).items():
            record.masks[f] = record.masks[f] & keep if f in record.masks else keep
        if state.get("published"):
            record.units.append(dict(state["published"]))
        record.writers.append(str(key))
    if not record.writers:
        raise KeyError(f"{path} holds no pruning callback's state; callback states: {sorted(map(str, states))}.")
    return record


def checkpoint_masks(path: str | Path) -> dict[str, Tensor]:
    """Every entry mask a pruning run's Lightning checkpoint holds: the union over every writer's state
    (``{fqn in its LightningModule: bool keep}``).

    Raises:
        KeyError: if the checkpoint holds no writer's state (the message lists the states it holds).
    """
    return read_checkpoint(path).masks

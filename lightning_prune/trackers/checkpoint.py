"""The checkpoint of `RunningStats`: plain tensors and numbers, in a fixed key
order, each statistic's part written and read by the statistic; the check that a checkpoint fits a tracker; and its
flat form (``ImportanceTracking`` checkpoints name every tensor ``stat/fqn`` or ``ringI/fqn``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class Tracked(Protocol):
    """What a checkpoint reads of a `RunningStats` (named here, not imported: the tracker imports this module)."""

    in_dims: Mapping[str, int]
    full_shapes: Mapping[str, tuple[int, ...]]
    stats: Sequence[str]
    statistics: Mapping[str, Any]
    snapshots: int
    calls: int
    steps: int
    skipped: int


__all__ = ["check_fits", "dump", "load", "nested"]


def dump(stats: Tracked) -> dict[str, Any]:
    """``stats.state_dict()``: its counters, then the parts of its statistics (`Statistic.state_dict`)."""
    parts: dict[str, Any] = {  # what a statistic that is not kept leaves, in the checkpoint's key order
        "inputs_seen": {f: 0 for f in stats.in_dims},
        "inputs_skipped": 0,
        "snapshots": stats.snapshots,
        "twa_norm": 0.0,
        "state": {},
        "ring": [],
        "ring_index": [],
    }
    for statistic in stats.statistics.values():
        part = statistic.state_dict()
        parts["state"].update(part.pop("state"))
        parts.update(part)
    return {
        "stats": list(stats.stats),
        "shapes": {f: list(s) for f, s in stats.full_shapes.items()},
        "counters": {"calls": stats.calls, "steps": stats.steps, "skipped": stats.skipped},
        **parts,
    }


def load(stats: Tracked, state: Mapping[str, Any]) -> None:
    """``stats.load_state_dict(state)``, for a nested or a flat ``state``, after `check_fits`."""
    if "tensors" in state:
        state = nested(state)
    check_fits(state, stats.full_shapes, stats.stats)
    for statistic in stats.statistics.values():  # by name: the order the statistics were listed in does not matter
        statistic.load_state_dict(state)
    counters = state["counters"]
    stats.calls, stats.steps, stats.skipped = counters["calls"], counters["steps"], counters["skipped"]
    stats.snapshots = state["snapshots"]


def check_fits(state: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], stats: Sequence[str]) -> None:
    """Check that a `RunningStats.state_dict` was made for weights of these full ``shapes`` and these ``stats``.

    Raises:
        ValueError: if the statistics, parameter names or shapes differ.
    """
    saved = {f: tuple(s) for f, s in state["shapes"].items()}
    if set(saved) != set(shapes):
        missing, extra = sorted(set(shapes) - set(saved)), sorted(set(saved) - set(shapes))
        raise ValueError(
            f"checkpointed statistics are for other parameters (missing: {missing[:5]}, unexpected: {extra[:5]})."
        )
    bad = [f"{f}: {saved[f]} vs model {shapes[f]}" for f in shapes if saved[f] != shapes[f]]
    if bad:
        raise ValueError(f"checkpointed statistics do not fit the model's shapes: {bad[:5]}.")
    if set(state["stats"]) != set(stats):
        raise ValueError(f"checkpoint tracks statistics {state['stats']}, this tracker {list(stats)}.")


def nested(state: Mapping[str, Any]) -> dict[str, Any]:
    """A flat ``{"tensors": {"stat/fqn" or "ringI/fqn": tensor}}`` state back in `RunningStats.state_dict`'s
    nesting."""
    state = dict(state)
    per: dict[str, dict[str, Any]] = {}
    ring: dict[int, dict[str, Any]] = {}
    for name, t in state.pop("tensors").items():
        key, _, fqn = name.partition("/")
        if key.startswith("ring") and key[4:].isdigit():
            ring.setdefault(int(key[4:]), {})[fqn] = t
        else:
            per.setdefault(key, {})[fqn] = t
    state.pop("where", None)
    return {**state, "state": per, "ring": [ring[i] for i in sorted(ring)]}

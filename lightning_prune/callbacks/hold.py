"""``HoldMasks``: hold masks from a checkpoint or a previous run on any LightningModule while it trains."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from torch import Tensor
from typing_extensions import override

from lightning_prune._registry import Shrink
from lightning_prune.callbacks._lifecycle import Lifecycle
from lightning_prune.callbacks._record import checkpoint_masks, dump_masks, masks_in_state, read_checkpoint
from lightning_prune.structured.units import Units

__all__ = ["HoldMasks", "checkpoint_masks", "place_masks"]


def place_masks(masks: Mapping[str, Tensor], names: Mapping[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """The masks by the names of the module they are for (``{fqn: full shape}``): as given when every fqn is there,
    else with one common prefix added or removed (masks of a ``CausalLM``'s ``model.transformer...`` on a module
    holding the same transformer under ``net``, or on the bare model).

    Raises:
        ValueError: if no such placement fits every mask's name and shape (naming what did not fit), or several do.
    """

    def fits(placed: Mapping[str, Tensor]) -> bool:
        return all(f in names and tuple(m.shape) == names[f] for f, m in placed.items())

    heads = {f.split(".", 1)[0] for f in masks}
    bases = [dict(masks)]
    if len(heads) == 1 and all("." in f for f in masks):  # one common first component: try without it too
        bases.append({f.split(".", 1)[1]: m for f, m in masks.items()})
    for base in bases:
        if fits(base):
            return base
        first = next(iter(base), "")
        prefixes = sorted({n[: -len(first)] for n in names if n.endswith("." + first)})  # under another module
        placements = [p for p in ({prefix + f: m for f, m in base.items()} for prefix in prefixes) if fits(p)]
        if len(placements) > 1:
            where = [next(iter(p))[: -len(first)].rstrip(".") for p in placements]
            raise ValueError(
                f"the masks fit the module's parameters in several places ({where}): give masks by the module's own "
                "parameter names."
            )
        if placements:
            return placements[0]
    bad = [f"{f} {tuple(m.shape)}" for f, m in masks.items() if not (f in names and tuple(m.shape) == names[f])]
    raise ValueError(
        f"the masks do not fit the module's parameters: {bad[:5]} (its fqns look like {list(names)[:3]}); give masks "
        "by the module's own parameter names."
    )


def _moved(given: str, placed: str) -> tuple[str, str]:
    """``(old, new)``: the leading components of ``given`` that ``placed`` has instead (the rest is the same)."""
    a, b = given.split("."), placed.split(".")
    same = 0
    while same < min(len(a), len(b)) and a[-1 - same] == b[-1 - same]:
        same += 1
    old, new = a[: len(a) - same], b[: len(b) - same]
    return ("".join(f"{x}." for x in old), "".join(f"{x}." for x in new))


class HoldMasks(Lifecycle):
    """Hold fixed masks while a model trains: pruned entries stay exactly zero in the weights, their gradients, the
    optimizer state and averaged copies, through every step — on any LightningModule, as the pruning callbacks hold
    theirs (through the model's `MaskRegistry`). For fine-tuning or recovering a
    pruned model, or continuing from another run.

    The masks are checked against the model at ``on_fit_start`` (after ``configure_model`` and sharding) and kept in
    this callback's ``state_dict``, so a resumed run holds them too. ``validate``/``test`` change nothing.

    Args:
        masks: ``{fqn: bool keep mask}`` by the LightningModule's parameter names (or the names inside its model,
            or another module's with one prefix more or less: see `place_masks`).
        checkpoint: a pruning run's Lightning checkpoint: every entry mask it holds and every unit its writers
            removed, whichever callbacks wrote them (``ScheduledPruning``, ``NeuronPruning``, ``StructuredPruning``,
            ``HoldMasks``).
        units: whole units to publish for an export to cut out (``[{"prefix": fqn of the transformers model,
            dimension: keep masks}]``, as writers publish them; default: the checkpoint's).
        name: distinguishes several instances (``state_key``).

    Raises:
        ValueError: without masks or checkpoint, or with masks that do not fit the model.

    Examples:
        >>> hold = HoldMasks(checkpoint="runs/main/tensorboard/version_0/checkpoints/last.ckpt")  # doctest: +SKIP
        >>> pl.Trainer(callbacks=[hold]).fit(my_module, datamodule)  # doctest: +SKIP
    """

    def __init__(
        self,
        masks: Mapping[str, Tensor] | None = None,
        checkpoint: str | Path | None = None,
        units: list[Mapping[str, Any]] | None = None,
        name: str | None = None,
    ) -> None:
        if masks is None and checkpoint is None:
            raise ValueError("HoldMasks needs masks={fqn: bool tensor} or checkpoint='pruned.ckpt'.")
        record = read_checkpoint(checkpoint) if checkpoint is not None else None
        given = dict(record.masks) if record is not None and masks is None else {}
        given.update({f: m.bool() for f, m in (masks or {}).items()})
        self.given = {f: m.cpu() for f, m in given.items()}
        self.units = [dict(u) for u in (units if units is not None else record.units if record is not None else [])]
        self.name = name
        self._placed: dict[str, Tensor] = {}  # the given masks by the module's names (full shapes)
        self._moved: tuple[str, str] = ("", "")  # (prefix of the given names, of the module's) where they differ
        super().__init__()

    @property
    @override
    def state_key(self) -> str:
        return f"HoldMasks[{self.name}]" if self.name else "HoldMasks"

    @override
    def resolve(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, tuple[int, ...]]:
        names = {f: self.registry.layout(f).shape for f in self.registry.params}
        self._placed = place_masks(self.given, names)
        self._moved = _moved(next(iter(self.given), ""), next(iter(self._placed), ""))
        return {f: tuple(m.shape) for f, m in self._placed.items()}

    def _publish(self) -> None:
        """The units given, by the module's names, for an export to cut out (one record per model)."""
        old, new = self._moved
        by_prefix: dict[str, Units] = {}
        for record in self.units:
            prefix = str(record.get("prefix", ""))
            dotted = f"{prefix}." if prefix else ""
            if old and dotted.startswith(old):
                dotted = dotted[len(old) :]
            prefix = (new + dotted).rstrip(".")
            units = Units.from_dict(record)
            by_prefix[prefix] = by_prefix[prefix] & units if prefix in by_prefix else units
        for i, (prefix, units) in enumerate(by_prefix.items()):
            key = self.state_key if i == 0 else f"{self.state_key}/{prefix}"
            self.registry.publish(key, {"prefix": prefix, **units.to_dict()})

    @override
    def reset(self) -> None:
        if self.registry is not None:
            for key in [k for k in self.registry.units if k.startswith(f"{self.state_key}/")]:
                self.registry.forget(key)
            self.registry.forget(self.state_key)

    @override
    def follow(self, shrink: Shrink) -> None:
        super().follow(shrink)
        self._placed = shrink.record(self._placed)
        self.given = dict(self._placed)  # by the module's own names from now on
        self.units, self._moved = [], ("", "")  # (the shrink cut every published unit out)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        if self.state_key not in self.registry.writers:  # (a second fit keeps what it holds)
            self._write({f: self.registry.layout(f).slice(m) for f, m in self._placed.items()})
            self._publish()

    def _write(self, local: Mapping[str, Tensor]) -> None:
        self.registry.write(self.state_key, {f: m.to(self.registry.local(f).device) for f, m in local.items()})
        self.registry.progress[self.state_key] = (1.0, 1.0)  # nothing left to reach

    @property
    def masks(self) -> dict[str, Tensor]:
        """``{fqn: bool keep}`` held, on each parameter's local tensor."""
        return self.registry.writers.get(self.state_key, {}) if self.registry is not None else {}

    @override
    def dump(self) -> dict[str, Any]:
        state = dump_masks(self.masks, self.registry, {f: tuple(m.shape) for f, m in self._placed.items()})
        return {**state, "published": self.registry.units.get(self.state_key)}

    @override
    def restore(self, state: Mapping[str, Any]) -> None:
        shapes = {f: tuple(s) for f, s in state["shapes"].items()}
        mine = {f: tuple(m.shape) for f, m in self._placed.items()}
        if shapes != mine:
            raise ValueError(
                f"the checkpoint's held masks are for {sorted(shapes)[:5]}, this fit holds {sorted(mine)[:5]}."
            )
        local = masks_in_state(state, {f: tuple(self.registry.local(f).shape) for f in shapes})
        self.reset()
        self._write(local)
        if state.get("published"):
            self.registry.publish(self.state_key, state["published"])

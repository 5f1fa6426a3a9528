"""``RunningStats``: the running statistics of a fixed set of named weights, one object per statistic, fed one
optimizer step at a time (and forward passes, and epoch snapshots)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import torch
from torch import Tensor

from lightning_prune._compat import foreach_mul
from lightning_prune._shards import Layout
from lightning_prune.masks import all_finite
from lightning_prune.trackers.accumulate import Accumulator, float32
from lightning_prune.trackers.base import Statistic, Step, StepStatistic
from lightning_prune.trackers.checkpoint import dump, load
from lightning_prune.trackers.input_norm import InputNorm, passes_seen
from lightning_prune.trackers.magnitudes import AbsGrad, AbsWeight
from lightning_prune.trackers.platon import PLATON_BETAS, Platon
from lightning_prune.trackers.products import Movement, Taylor
from lightning_prune.trackers.time_weighted import TimeWeighted, snapshot_weights

__all__ = ["STATS", "RunningStats"]

STATS = ("abs_weight", "abs_grad", "movement", "taylor", "time_weighted", "input_norm", "platon")
_S = TypeVar("_S", bound=Statistic)


class RunningStats:
    """Running statistics for a fixed set of named parameters: one object per statistic kept (``statistics``,
    ``{name: Statistic}``), fed once per optimizer step from one shared `Step`.

    Args:
        params: ``{fqn: parameter}``; only shapes, devices and names are read here.
        stats: which statistics to keep, a subset of `STATS`.
        decay: β of the exponential moving averages, in [0, 1).
        every: fold in one optimizer step out of ``every`` (the others are counted, not read).
        dtype: dtype of the state tensors (``torch.bfloat16`` halves the memory of ``float32``).
        window: number of most recent snapshots in ``time_weighted`` (None: all, kept as a running sum).
        weighting: snapshot weighting c(i): ``"sqrt"`` (default), ``"linear"``, ``"uniform"`` or a callable.
        in_dims: ``{fqn: dim}`` of the input features of the 2-D weights whose inputs ``input_norm`` measures (1, as
            in ``nn.Linear``; 0 for ``transformers``' Conv1D); default: every 2-D weight, with dim 1.
        sections: ``{fqn: k}`` for a weight whose output rows fall in k equal blocks fed by k different inputs
            (``nn.MultiheadAttention.in_proj_weight``: query, key, value); ``input_norm`` keeps one row of norms per
            block.
        layouts: ``{fqn: Layout}`` when ``params`` are shards of larger tensors (FSDP2): ``input_norm`` covers the
            full input width and `input_scale` returns this process's part.
        platon_betas: (β₁, β₂) of ``platon``'s sensitivity and uncertainty EMAs, each in [0, 1).

    Raises:
        ValueError: for an unknown statistic, a decay or PLATON beta outside [0, 1), ``every`` < 1 or ``window`` < 1.

    Examples:
        >>> w = torch.nn.Parameter(torch.ones(2, 2))
        >>> stats = RunningStats({"w": w}, stats=("abs_weight",), decay=0.5)
        >>> w.grad = torch.zeros(2, 2)
        >>> stats.update({"w": w})
        True
    """

    def __init__(
        self,
        params: Mapping[str, Tensor],
        stats: Iterable[str] = ("abs_weight", "abs_grad"),
        decay: float = 0.99,
        every: int = 1,
        dtype: torch.dtype = torch.float32,
        window: int | None = None,
        weighting: str | Callable[[int], float] = "sqrt",
        in_dims: Mapping[str, int] | None = None,
        sections: Mapping[str, int] | None = None,
        layouts: Mapping[str, Layout] | None = None,
        platon_betas: tuple[float, float] = PLATON_BETAS,
    ) -> None:
        self.stats = tuple(dict.fromkeys(stats))
        unknown = [s for s in self.stats if s not in STATS]
        if unknown:
            raise ValueError(f"unknown statistics {unknown}; allowed: {list(STATS)}.")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}.")
        if len(platon_betas) != 2 or not all(0.0 <= b < 1.0 for b in platon_betas):
            raise ValueError(f"platon_betas must be two numbers in [0, 1), got {platon_betas!r}.")
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every!r}.")
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 or None, got {window!r}.")
        self.decay, self.every, self.dtype, self.window = decay, every, dtype, window
        self.platon_betas = (float(platon_betas[0]), float(platon_betas[1]))
        self.weight_of = snapshot_weights(weighting)
        self.fqns = list(params)
        self.shapes = {fqn: tuple(p.shape) for fqn, p in params.items()}
        self.calls = 0  # optimizer steps seen
        self.steps = 0  # steps folded into the statistics
        self.skipped = 0  # steps skipped for non-finite gradients
        self.snapshots = 0  # snapshots taken for time_weighted
        two_d = [f for f, p in params.items() if p.dim() == 2]
        self.in_dims = {f: 1 for f in two_d} if in_dims is None else {f: in_dims[f] for f in two_d if f in in_dims}
        self.layouts = dict(layouts or {})
        self.sections = {f: (sections or {}).get(f, 1) for f in self.in_dims}
        full = {f: self.layouts[f].shape if f in self.layouts else tuple(p.shape) for f, p in params.items()}
        self.full_shapes = {f: tuple(full[f]) for f in params}  # of the whole tensors (a shard's may be empty)
        self._unseen = passes_seen(params, self.in_dims)  # the pass counts while input_norm is not tracked
        accumulator = Accumulator(dtype)  # one for all: shares the rounding generators
        self.statistics: dict[str, Statistic] = {s: self._build(s, params, accumulator) for s in self.stats}
        per_step = [s for s in self.statistics.values() if isinstance(s, StepStatistic)]
        self._per_step = sorted(per_step, key=lambda s: STATS.index(s.name))  # movement reads w·g before |w·g|
        self._reads_grads = any(s.reads_grads for s in per_step)

    def _build(self, stat: str, params: Mapping[str, Tensor], accumulator: Accumulator) -> Statistic:
        makers: dict[str, Callable[[], Statistic]] = {
            "abs_weight": lambda: AbsWeight(params, accumulator, self.decay),
            "abs_grad": lambda: AbsGrad(params, accumulator, self.decay),
            "movement": lambda: Movement(params, accumulator),
            "taylor": lambda: Taylor(params, accumulator),
            "time_weighted": lambda: TimeWeighted(params, accumulator, self.weight_of, self.window),
            "input_norm": lambda: InputNorm(
                params, self.in_dims, self.sections, self.full_shapes, self.layouts, self.decay
            ),
            "platon": lambda: Platon(params, accumulator, self.platon_betas),
        }
        return makers[stat]()

    @property
    def state(self) -> dict[str, dict[str, Tensor]]:
        """The state tensors (not copies) as ``{key: {fqn: tensor}}``, keyed as in `state_dict`."""
        return {key: per for s in self.statistics.values() for key, per in s.tensors().items()}

    @property
    def ring(self) -> list[dict[str, Tensor]]:
        """``time_weighted``'s window snapshots of |w|, oldest first."""
        return tw.ring if (tw := self._kept(TimeWeighted)) is not None else []

    @property
    def ring_index(self) -> list[int]:
        """The snapshot numbers i of `ring`."""
        return tw.ring_index if (tw := self._kept(TimeWeighted)) is not None else []

    @property
    def twa_norm(self) -> float:
        """Σ c_i over the snapshots in ``time_weighted``'s running sum."""
        return tw.norm if (tw := self._kept(TimeWeighted)) is not None else 0.0

    @property
    def inputs_seen(self) -> dict[str, Tensor]:
        """Forward passes folded into ``input_norm`` per measured weight (long tensors, on its device)."""
        return norm.seen if (norm := self._kept(InputNorm)) is not None else self._unseen

    @property
    def inputs_skipped(self) -> Tensor:
        """Forward passes left out of ``input_norm`` for a non-finite input (a long tensor)."""
        return norm.skipped if (norm := self._kept(InputNorm)) is not None else torch.zeros((), dtype=torch.long)

    def _kept(self, kind: type[_S]) -> _S | None:
        statistic = self.statistics.get(kind.name)
        return statistic if isinstance(statistic, kind) else None

    def _required(self, kind: type[_S]) -> _S:
        statistic = self._kept(kind)
        if statistic is None:
            raise KeyError(f"statistic {kind.name!r} is not tracked; tracked: {list(self.stats)}.")
        return statistic

    @torch.no_grad()
    def update(
        self,
        params: Mapping[str, Tensor],
        grads: Mapping[str, Tensor | None] | None = None,
        scale: Tensor | float | None = None,
    ) -> bool:
        """Fold one optimizer step into the statistics.

        Args:
            params: ``{fqn: weight}`` (the local tensors: a shard under FSDP2).
            grads: ``{fqn: gradient or None}``; default each weight's ``.grad``.
            scale: a factor the gradients are multiplied by first (``1/loss_scale`` when a fused optimizer under
                ``16-mixed`` left them scaled); a tensor, so reading it never waits for the device.

        Returns:
            True if folded in; False if skipped (not this step's turn, or a non-finite gradient).
        """
        self.calls += 1
        if (self.calls - 1) % self.every:
            return False
        weights = float32([params[f].detach() for f in self.fqns])  # float32 arithmetic in every precision
        grads_: list[Tensor] = []
        if self._reads_grads:
            given = grads if grads is not None else {f: params[f].grad for f in self.fqns}
            found = [given.get(f) for f in self.fqns]
            grads_ = float32([g.detach() if g is not None else torch.zeros_like(w) for g, w in zip(found, weights)])
            if scale is not None:
                grads_ = foreach_mul(grads_, scale)
            if not all_finite(grads_):
                self.skipped += 1
                return False
        step = Step(weights, grads_, first=self.steps == 0, counter=self.calls)
        for statistic in self._per_step:
            statistic.update(step)
        self.steps += 1
        return True

    @torch.no_grad()
    def add_inputs(self, fqn: str, *inputs: Tensor) -> Tensor:
        """Fold one forward pass's inputs ``(..., in_features)`` of the module owning ``fqn`` into ``input_norm``:
        one input, or one per row block of a weight with ``sections`` (query, key, value).

        A pass with a non-finite input changes nothing and is counted in ``inputs_skipped``; the choice is a
        ``torch.where`` on the device, so no call waits for it.

        Returns:
            A bool tensor: whether the pass was folded in.
        """
        return self._required(InputNorm).add(fqn, *inputs)

    def input_scale(self, fqn: str) -> Tensor:
        """``sqrt(input_norm)`` shaped to broadcast against the (local) weight: a row of feature norms per output
        row block, or a column of them for ``Conv1D``.

        Raises:
            KeyError: if ``input_norm`` is not kept or the weight's inputs are not measured.
            RuntimeError: if no forward pass of the weight's module has been seen (e.g. the ``out_proj`` of
                ``nn.MultiheadAttention``, whose weight is read without calling the module).
        """
        return self._required(InputNorm).scale(fqn)

    @torch.no_grad()
    def snapshot(self, params: Mapping[str, Tensor]) -> None:
        """Record |w| as the next snapshot of the time-weighted average (call once per epoch)."""
        statistic = self._kept(TimeWeighted)
        if statistic is None:
            return
        self.snapshots += 1
        statistic.snapshot([params[f].detach() for f in self.fqns], self.snapshots)

    def value(self, stat: str, fqn: str) -> Tensor:
        """The statistic for one parameter, as float32 (the EMA, the sum, or the time-weighted average).

        Raises:
            KeyError: if the statistic is not kept or the fqn is not tracked.
            RuntimeError: if nothing has been folded in yet, so the value would be meaningless.
        """
        if stat not in self.stats:
            raise KeyError(f"statistic {stat!r} is not tracked; tracked: {list(self.stats)}.")
        if fqn not in self.shapes:
            raise KeyError(f"parameter {fqn!r} is not tracked.")
        if stat == "time_weighted":
            if self.snapshots == 0:
                raise RuntimeError("time_weighted needs at least one snapshot (one finished epoch) before pruning.")
        elif self.steps == 0:
            raise RuntimeError(f"no optimizer step has been folded into {stat!r} yet (skipped: {self.skipped}).")
        return self.statistics[stat].value(fqn)

    def nbytes(self) -> int:
        """Bytes held by the state tensors."""
        return sum(s.nbytes() for s in self.statistics.values())

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers; restored with `load_state_dict`."""
        return dump(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a `state_dict`, checking that it was made for the same parameters and statistics.

        Also takes the flat form ``ImportanceTracking`` checkpoints (``tensors`` named ``stat/fqn`` and
        ``ringI/fqn``).

        Raises:
            ValueError: if the statistics, parameter names or shapes differ from this tracker's.
        """
        load(self, state)

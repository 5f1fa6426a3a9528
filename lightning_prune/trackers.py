"""Running statistics per parameter, keyed by the parameter's dotted name (``fqn``).

Statistics (each kept only if asked for, so memory is one state tensor per statistic per tracked weight):

==================  ===================================================================================
``abs_weight``      exponential moving average of |w|: m_1 = |w_1|, m_n = β·m_{n-1} + (1-β)·|w_n|
``abs_grad``        exponential moving average of |g|, same recursion
``movement``        running sum Σ_n w_n·g_n (movement pruning scores −Σ w·g, Sanh et al. 2020)
``taylor``          running sum Σ_n |w_n·g_n| (first-order Taylor importance, Molchanov et al. 2019)
``time_weighted``   time-weighted average of |w| over snapshots (one per epoch by default), later snapshots
                    weigh more: Σ_i c_i·|w_i| / Σ_i c_i with c_i = √i for snapshot i = 1, 2, ... over the
                    last ``window`` snapshots (all if ``window`` is None) — "Systematic Weight Evaluation
                    for Pruning LLMs", arXiv 2502.17071
``input_norm``      per input feature j of a 2-D weight, EMA over training forward passes of the mean over
                    tokens of x_j² (fed by :meth:`RunningStats.add_inputs`); √ of it scales |w| in the
                    running Wanda score |w_ij|·‖x_j‖ (Sun et al. 2023)
``platon``          PLATON (Zhang et al., ICML 2022): sensitivity I_t = |w_t·g_t|, its EMA
                    Ī_t = β₁·Ī_{t-1} + (1-β₁)·I_t and the EMA of its uncertainty
                    Ū_t = β₂·Ū_{t-1} + (1-β₂)·|I_t − Ī_t|, both from zero; the value is the upper confidence
                    bound score Ī_t·Ū_t. Two state tensors per weight.
==================  ===================================================================================

PLATON's uncertainty uses Ī_t *after* its update with I_t, as the paper's equations write it (the authors'
released code subtracts Ī_{t-1}, the value before the update). Both averages start from zero without bias
correction, as in the paper and its code, so after one step Ī = (1-β₁)·I and Ū = (1-β₂)·β₁·I. The betas are
``platon_betas`` (default :data:`PLATON_BETAS`, the paper's 0.85 and 0.95); ``decay`` is for the other EMAs.

A step whose gradients hold a NaN or an infinity is skipped and counted in ``skipped``; it is never folded
into the statistics. Updates run under ``torch.no_grad()`` with ``torch._foreach_*`` kernels: one fused
pass per statistic, no per-element Python.

Example:
    >>> w = torch.nn.Parameter(torch.ones(2, 2))
    >>> stats = RunningStats({"w": w}, stats=("abs_weight",), decay=0.5)
    >>> w.grad = torch.zeros(2, 2)
    >>> stats.update({"w": w})
    True
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from lightning_prune._compat import (
    foreach_abs,
    foreach_abs_,
    foreach_add_,
    foreach_copy_,
    foreach_lerp_,
    foreach_mul,
    foreach_sub,
)
from lightning_prune.masks import all_finite
from lightning_prune.shards import Layout

__all__ = ["PLATON_BETAS", "STATS", "RunningStats", "snapshot_weights", "stochastic_round"]

STATS = ("abs_weight", "abs_grad", "movement", "taylor", "time_weighted", "input_norm", "platon")
PLATON_BETAS = (0.85, 0.95)  # β₁ of the sensitivity EMA and β₂ of the uncertainty EMA (Zhang et al. 2022)
_PLATON_U = "platon_uncertainty"  # state key of PLATON's second tensor, Ū (the first, Ī, is under "platon")
_WEIGHTINGS: dict[str, Callable[[int], float]] = {
    "sqrt": math.sqrt,
    "linear": float,
    "uniform": lambda i: 1.0,
}


def snapshot_weights(weighting: str | Callable[[int], float]) -> Callable[[int], float]:
    """Resolve a weighting name (``sqrt``, ``linear``, ``uniform``) or callable c(i) for snapshot i >= 1."""
    if callable(weighting):
        return weighting
    if weighting not in _WEIGHTINGS:
        raise ValueError(f"weighting must be one of {sorted(_WEIGHTINGS)} or a callable, got {weighting!r}.")
    return _WEIGHTINGS[weighting]


class RunningStats:
    """Running statistics for a fixed set of named parameters.

    Args:
        params: ``{fqn: parameter}``; only shapes, devices and names are read here.
        stats: which statistics to keep, a subset of :data:`STATS`.
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
            full input width and :meth:`input_scale` returns this process's part.
        platon_betas: (β₁, β₂) of ``platon``'s sensitivity and uncertainty EMAs, each in [0, 1).

    Raises:
        ValueError: for an unknown statistic, a decay or PLATON beta outside [0, 1), ``every`` < 1 or ``window`` < 1.
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
        self.state: dict[str, dict[str, Tensor]] = {}
        two_d = [f for f, p in params.items() if p.dim() == 2]
        self.in_dims = {f: 1 for f in two_d} if in_dims is None else {f: in_dims[f] for f in two_d if f in in_dims}
        self.layouts = dict(layouts or {})
        self.sections = {f: (sections or {}).get(f, 1) for f in self.in_dims}
        full = {f: self.layouts[f].shape if f in self.layouts else tuple(p.shape) for f, p in params.items()}
        self.full_shapes = {f: tuple(full[f]) for f in params}  # of the whole tensors (a shard's may be empty)
        # forward passes folded into input_norm, per fqn, and passes left out (non-finite): tensors, so that the
        # update on every forward pass never waits for the device
        self.inputs_seen = {f: torch.zeros((), dtype=torch.long, device=params[f].device) for f in self.in_dims}
        self.inputs_skipped = torch.zeros((), dtype=torch.long)
        for stat in self.stats:
            if stat == "time_weighted" and window is not None:
                continue  # kept as a ring of snapshots below
            if stat == "input_norm":
                self.state[stat] = {  # (sections, in_features) in float32: a few numbers per layer
                    f: torch.zeros(self.sections[f], full[f][d], device=params[f].device)
                    for f, d in self.in_dims.items()
                }
                continue
            self.state[stat] = {fqn: torch.zeros_like(p, dtype=dtype) for fqn, p in params.items()}
            if stat == "platon":  # Ū beside Ī
                self.state[_PLATON_U] = {fqn: torch.zeros_like(p, dtype=dtype) for fqn, p in params.items()}
        self._generators: dict[torch.device, torch.Generator] = {}  # for stochastic rounding of low-precision state
        self.twa_norm = 0.0  # Σ c_i over the snapshots in the running sum
        self.ring: list[dict[str, Tensor]] = []  # window snapshots of |w|, oldest first
        self.ring_index: list[int] = []  # their snapshot numbers i

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
        needs_grad = any(s in self.state for s in ("abs_grad", "movement", "taylor", "platon"))
        weights = _float32([params[f].detach() for f in self.fqns])  # float32 arithmetic in every precision
        grads_: list[Tensor] = []
        if needs_grad:
            given = grads if grads is not None else {f: params[f].grad for f in self.fqns}
            found = [given.get(f) for f in self.fqns]
            grads_ = _float32([g.detach() if g is not None else torch.zeros_like(w) for g, w in zip(found, weights)])
            if scale is not None:
                grads_ = foreach_mul(grads_, scale)
            if not all_finite(grads_):
                self.skipped += 1
                return False
        first = self.steps == 0
        if "abs_weight" in self.state:
            self._ema_(self.state["abs_weight"], foreach_abs(weights), first)
        if "abs_grad" in self.state:
            self._ema_(self.state["abs_grad"], foreach_abs(grads_), first)
        if "movement" in self.state or "taylor" in self.state or "platon" in self.state:
            prods = foreach_mul(weights, grads_)  # w·g per entry
            if "movement" in self.state:
                self._add_(self.state["movement"], prods)
            if "taylor" in self.state or "platon" in self.state:
                foreach_abs_(prods)
            if "taylor" in self.state:
                self._add_(self.state["taylor"], prods)
            if "platon" in self.state:
                self._platon_(prods)
        self.steps += 1
        return True

    def _platon_(self, sensitivity: list[Tensor]) -> None:
        """Fold I = |w·g| into PLATON's Ī, then |I − Ī| (Ī after its update) into Ū; both EMAs from zero."""
        beta1, beta2 = self.platon_betas
        self._ema_(self.state["platon"], sensitivity, first=False, decay=beta1)
        means = [self.state["platon"][f].float() for f in self.fqns]  # a no-op for float32 state
        uncertainty = foreach_sub([v.float() for v in sensitivity], means)
        foreach_abs_(uncertainty)
        self._ema_(self.state[_PLATON_U], uncertainty, first=False, decay=beta2)

    @torch.no_grad()
    def add_inputs(self, fqn: str, *inputs: Tensor) -> Tensor:
        """Fold one forward pass's inputs ``(..., in_features)`` of the module owning ``fqn`` into ``input_norm``:
        one input, or one per row block of a weight with ``sections`` (query, key, value).

        A pass with a non-finite input changes nothing and is counted in ``inputs_skipped``; the choice is a
        ``torch.where`` on the device, so no call waits for it.

        Returns:
            A bool tensor: whether the pass was folded in.
        """
        state, seen = self.state["input_norm"][fqn], self.inputs_seen[fqn]
        if len(inputs) != state.shape[0]:
            raise ValueError(f"{fqn}: expected {state.shape[0]} inputs (one per row block), got {len(inputs)}.")
        mean_sq = torch.stack(
            [x.detach().reshape(-1, x.shape[-1]).float().square().mean(0).to(state.device) for x in inputs]
        )  # (sections, in)
        ok = torch.isfinite(mean_sq).all()  # a non-finite input makes its feature's mean non-finite
        new = torch.where(seen == 0, mean_sq, torch.lerp(state, mean_sq, 1.0 - self.decay))
        state.copy_(torch.where(ok, new, state))
        seen += ok
        self.inputs_skipped = self.inputs_skipped.to(ok.device) + ~ok
        return ok

    def input_scale(self, fqn: str) -> Tensor:
        """``sqrt(input_norm)`` shaped to broadcast against the (local) weight: a row of feature norms per output
        row block, or a column of them for ``Conv1D``.

        Raises:
            RuntimeError: if no forward pass of the weight's module has been seen (e.g. the ``out_proj`` of
                ``nn.MultiheadAttention``, whose weight is read without calling the module).
        """
        if "input_norm" not in self.stats:
            raise KeyError(f"statistic 'input_norm' is not tracked; tracked: {list(self.stats)}.")
        if fqn not in self.in_dims:
            raise KeyError(
                f"parameter {fqn!r} is not a tracked 2-D weight of a Linear, Conv1D or MultiheadAttention module, "
                "so its inputs are not measured."
            )
        if int(self.inputs_seen[fqn]) == 0:
            raise RuntimeError(
                f"no input of {fqn!r} has been seen: its module never ran forward in training (a weight read "
                "without calling its module, like nn.MultiheadAttention's out_proj, has no inputs to measure); "
                "exclude it or choose a criterion without 'input_norm'."
            )
        norms = self.state["input_norm"][fqn].sqrt()  # (sections, in)
        shape = self.layouts[fqn].shape if fqn in self.layouts else self.shapes[fqn]
        if self.in_dims[fqn] == 1:  # (out, in): each row block reads its own input
            scale = norms.repeat_interleave(shape[0] // norms.shape[0], dim=0)  # (out, in)
        else:  # Conv1D (in, out)
            scale = norms[0][:, None].expand(shape)
        scale = scale.expand(shape)
        return self.layouts[fqn].slice(scale) if fqn in self.layouts else scale

    @torch.no_grad()
    def snapshot(self, params: Mapping[str, Tensor]) -> None:
        """Record |w| as the next snapshot of the time-weighted average (call once per epoch)."""
        if "time_weighted" not in self.stats:
            return
        self.snapshots += 1
        c = self.weight_of(self.snapshots)
        abs_w = foreach_abs([params[f].detach() for f in self.fqns])
        if self.window is None:
            self._add_(self.state["time_weighted"], abs_w, alpha=c)
            self.twa_norm += c
            return
        self.ring.append({f: a.to(self.dtype) for f, a in zip(self.fqns, abs_w)})
        self.ring_index.append(self.snapshots)
        del self.ring[: -self.window], self.ring_index[: -self.window]

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
            return self._time_weighted(fqn)
        if self.steps == 0:
            raise RuntimeError(f"no optimizer step has been folded into {stat!r} yet (skipped: {self.skipped}).")
        if stat == "platon":  # the upper confidence bound score Ī·Ū
            return self.state["platon"][fqn].float() * self.state[_PLATON_U][fqn].float()
        return self.state[stat][fqn].float()

    def _time_weighted(self, fqn: str) -> Tensor:
        if self.snapshots == 0:
            raise RuntimeError("time_weighted needs at least one snapshot (one finished epoch) before pruning.")
        if self.window is None:
            return self.state["time_weighted"][fqn].float() / self.twa_norm
        cs = [self.weight_of(i) for i in self.ring_index]
        total = sum(c * snap[fqn].float() for c, snap in zip(cs, self.ring))
        return total / sum(cs)

    def _ema_(self, state: dict[str, Tensor], values: list[Tensor], first: bool, decay: float | None = None) -> None:
        decay = self.decay if decay is None else decay
        targets = [state[f] for f in self.fqns]
        if self.dtype == torch.float32:
            values = [v.float() for v in values] if values and values[0].dtype != torch.float32 else values
            if first:
                foreach_copy_(targets, values)
            else:
                foreach_lerp_(targets, values, 1.0 - decay)
            return
        for f, t, v in zip(self.fqns, targets, values):  # in float32, rounded to the state's dtype without bias
            new = v.float() if first else torch.lerp(t.float(), v.float(), 1.0 - decay)
            t.copy_(stochastic_round(new, self.dtype, self._generator(t.device, state, f)))

    def _add_(self, state: dict[str, Tensor], values: list[Tensor], alpha: float = 1.0) -> None:
        targets = [state[f] for f in self.fqns]
        if self.dtype == torch.float32:
            values = [v.float() for v in values] if values and values[0].dtype != torch.float32 else values
            foreach_add_(targets, values, alpha=alpha)
            return
        for f, t, v in zip(self.fqns, targets, values):
            new = t.float().add_(v.float(), alpha=alpha)
            t.copy_(stochastic_round(new, self.dtype, self._generator(t.device, state, f)))

    def _generator(self, device: torch.device, state: dict[str, Tensor], fqn: str) -> torch.Generator:
        """The generator that rounds ``fqn``'s entry of ``state`` now, seeded from what is being rounded (statistic,
        fqn, and the step or snapshot count), so the random draws are a function of the run's position: a resumed
        run rounds exactly as an uninterrupted one, and processes holding the same values round them alike."""
        stat = next(name for name, per in self.state.items() if per is state)
        counter = self.snapshots if stat == "time_weighted" else self.calls
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device)
        seed = zlib.crc32(f"{stat}/{fqn}".encode()) + counter * 0x9E3779B1  # a different stream per step
        return self._generators[device].manual_seed(seed % (1 << 63))

    def nbytes(self) -> int:
        """Bytes held by the state tensors."""
        held = [t for per in self.state.values() for t in per.values()] + [t for s in self.ring for t in s.values()]
        return sum(t.numel() * t.element_size() for t in held)

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers; restored with :meth:`load_state_dict`."""
        return {
            "stats": list(self.stats),
            "shapes": {f: list(s) for f, s in self.full_shapes.items()},
            "counters": {"calls": self.calls, "steps": self.steps, "skipped": self.skipped},
            "inputs_seen": {f: int(n) for f, n in self.inputs_seen.items()},
            "inputs_skipped": int(self.inputs_skipped),
            "snapshots": self.snapshots,
            "twa_norm": self.twa_norm,
            "state": {stat: {f: t.clone() for f, t in per.items()} for stat, per in self.state.items()},
            "ring": [{f: t.clone() for f, t in snap.items()} for snap in self.ring],
            "ring_index": list(self.ring_index),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`, checking that it was made for the same parameters and statistics.

        Also takes the flat form ``ImportanceTracking`` checkpoints (``tensors`` named ``stat/fqn`` and
        ``ringI/fqn``).

        Raises:
            ValueError: if the statistics, parameter names or shapes differ from this tracker's.
        """
        if "tensors" in state:
            state = _nested(state)
        shapes = {f: tuple(s) for f, s in state["shapes"].items()}
        mine = self.full_shapes
        if set(shapes) != set(mine):
            missing, extra = sorted(set(mine) - set(shapes)), sorted(set(shapes) - set(mine))
            raise ValueError(
                f"checkpointed statistics are for other parameters (missing: {missing[:5]}, unexpected: {extra[:5]})."
            )
        bad = [f"{f}: {shapes[f]} vs model {mine[f]}" for f in mine if shapes[f] != mine[f]]
        if bad:
            raise ValueError(f"checkpointed statistics do not fit the model's shapes: {bad[:5]}.")
        if set(state["stats"]) != set(self.stats):
            raise ValueError(f"checkpoint tracks statistics {state['stats']}, this tracker {list(self.stats)}.")
        for stat, per in state["state"].items():  # by name: the order the statistics were listed in does not matter
            for f, t in per.items():
                target = self.state[stat][f]
                target.copy_(t.reshape(target.shape) if stat == "input_norm" else t)
        self.ring = [{f: t.to(self.dtype) for f, t in snap.items()} for snap in state["ring"]]
        self.ring_index = list(state["ring_index"])
        counters = state["counters"]
        self.calls, self.steps, self.skipped = counters["calls"], counters["steps"], counters["skipped"]
        for f, n in state.get("inputs_seen", {}).items():
            self.inputs_seen[f].fill_(n)
        self.inputs_skipped = torch.tensor(int(state.get("inputs_skipped", 0)))
        self.snapshots, self.twa_norm = state["snapshots"], state["twa_norm"]


def _nested(state: Mapping[str, Any]) -> dict[str, Any]:
    """A flat ``{"tensors": {"stat/fqn" or "ringI/fqn": tensor}}`` state back in :meth:`RunningStats.state_dict`'s
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


def _float32(tensors: list[Tensor]) -> list[Tensor]:
    """The tensors as float32 (copies only of those in another dtype)."""
    return [t if t.dtype == torch.float32 else t.float() for t in tensors]


@torch.no_grad()
def stochastic_round(x: Tensor, dtype: torch.dtype, generator: torch.Generator | None = None) -> Tensor:
    """Round float32 ``x`` to ``dtype`` up or down at random, with the probability that makes the result
    unbiased (E[round(x)] = x), so running sums and averages kept in 16 bits drift no more than noise.

    bfloat16 keeps the top 16 bits of a float32: adding uniform noise below them and truncating is exactly that
    rounding. Other dtypes pick between the two neighbours with probability proportional to the distance.
    Non-finite entries are rounded to nearest.
    """
    if dtype == torch.float32:
        return x
    x = x.float().contiguous()
    if dtype == torch.bfloat16:
        noise = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device, generator=generator)
        rounded = ((x.view(torch.int32) + noise) & -65536).view(torch.float32)  # low 16 bits zero: exact in bf16
        return torch.where(torch.isfinite(rounded), rounded, x).to(dtype)
    near = x.to(dtype)
    error = x - near.float()
    toward = torch.where(error > 0, float("inf"), float("-inf")).to(dtype)
    other = torch.nextafter(near, toward)  # the neighbour of ``near`` in ``dtype`` on the side of ``x``
    gap = (other.float() - near.float()).abs()
    chance = torch.where(gap > 0, error.abs() / gap, torch.zeros_like(gap))
    draw = torch.rand(x.shape, device=x.device, generator=generator)
    return torch.where(draw < chance, other, near)

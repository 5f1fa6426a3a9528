"""Masks from scores, and masks that hold.

A mask is a ``bool`` tensor shaped like its weight: True keeps the entry, False prunes it. Masks are
computed from importance scores (higher = more important) at a target *sparsity* (the fraction of
zeros), in a ``scope`` (``"global"`` across all selected weights, per ``"layer"``, or per ``"output"`` row of
each weight, as Wanda compares) and a ``pattern``:

- ``"unstructured"``: any entries;
- ``"N:M"`` (e.g. ``"2:4"``): in every group of M consecutive inputs, at most M−N are pruned; a target s
  prunes round(s·M) of each group, capped at M−N;
- ``"row"``: whole output rows (neurons), ranked by their mean score.

Selection is exact and linear in the number of scores: the k-th lowest score is found by a radix select (a
histogram of the top 16 bits of every float32 score, then one of the remaining bits inside the chosen bucket),
tensor by tensor, so no concatenation or sort of all scores is ever made and the extra memory is about one
tensor's worth. Scores are compared as float32 (``-0.0 == 0.0``). Ties are broken by position: in fqn order,
then (for sharded tensors) by rank within the process group, then by flat position in the local tensor. In one
process this is exactly a stable sort over the concatenation of all scores. Entries already pruned should be
given score −inf by the caller so they stay pruned. NaN scores are not allowed: the unstructured selections
raise ``ValueError`` (N:M and row patterns rank a NaN highest, as a sort does).

Sharded tensors: with ``layouts`` (:class:`lightning_prune.shards.Layout` per fqn) every process passes its
local shards; the per-shard histograms and counts (never the scores or masks) are summed over the process
group, and each process gets the masks of its own shards.

Masks can be stored at one bit per entry with :func:`pack_mask` / :func:`unpack_mask`.

Example:
    >>> scores = {"a": torch.tensor([[4.0, 1.0], [3.0, 2.0]])}
    >>> compute_masks(scores, 0.5)["a"]
    tensor([[ True, False],
            [ True, False]])
"""

from __future__ import annotations

import math
import re
import struct
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from lightning_prune._compat import foreach_mul_, foreach_norm
from lightning_prune.shards import Layout, all_reduce_, same_everywhere

SCOPES = ("global", "layer", "output")  # one ranking over all weights, per weight, per output row

__all__ = [
    "SCOPES",
    "all_finite",
    "apply_masks_",
    "clear_",
    "compute_masks",
    "global_masks",
    "layer_masks",
    "nm_masks",
    "output_masks",
    "pack_mask",
    "parse_pattern",
    "row_masks",
    "sparsity_report",
    "unpack_mask",
]

_BINS = 1 << 16  # one radix digit: 16 bits
_HIGH = 1 if sys.byteorder == "little" else 0  # which int16 half of a float32 holds its sign and exponent
_CHUNK = 1 << 16  # entries per chunk when locating the n-th tie in a tensor


def parse_pattern(pattern: str) -> tuple[str, int, int]:
    """``"unstructured"`` → ("unstructured", 0, 0); ``"2:4"`` → ("nm", 2, 4); ``"row"`` → ("row", 0, 0).

    Raises:
        ValueError: for any other pattern, or N:M without 0 < N < M.
    """
    if pattern in ("unstructured", "row"):
        return pattern, 0, 0
    match = re.fullmatch(r"(\d+):(\d+)", pattern)
    if match:
        n, m = int(match[1]), int(match[2])
        if 0 < n < m:
            return "nm", n, m
    raise ValueError(f"pattern must be 'unstructured', 'row' or 'N:M' with 0 < N < M (e.g. '2:4'), got {pattern!r}.")


# ---- layouts -------------------------------------------------------------------------------------------------


def _layouts(scores: Mapping[str, Tensor], layouts: Mapping[str, Layout] | None) -> tuple[dict[str, Layout], Any]:
    """A layout for every fqn (whole and local where none is given) and the process group of the sharded ones."""
    full = {f: Layout(tuple(s.shape), (0,) * s.dim()) for f, s in scores.items()}
    full.update({f: lay for f, lay in (layouts or {}).items() if f in scores})
    return full, same_everywhere(full)


def _full_numel(layout: Layout) -> int:
    return math.prod(layout.shape)


# ---- exact k-th lowest over many (sharded) tensors ------------------------------------------------------------


def _flat(s: Tensor) -> Tensor:
    """The scores as a contiguous flat float32 tensor (no copy when they already are one)."""
    return s.detach().float().contiguous().view(-1)  # (numel,)


def _key(bits: int) -> int:
    """Order-preserving integer of a float32 bit pattern (as unsigned 32 bits); -0.0 and 0.0 share key 0."""
    return -(bits & 0x7FFFFFFF) if bits & 0x80000000 else bits


def _keys(values: Tensor) -> Tensor:
    """Order-preserving int64 keys of float32 values (``_key`` elementwise)."""
    bits = values.view(torch.int32).long()
    return torch.where(bits < 0, -(bits & 0x7FFFFFFF), bits)


def _value(key: int) -> float:
    """The float32 value of a key (inverse of ``_key``)."""
    bits = key if key >= 0 else (-key) | 0x80000000
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def _ordered(raw: Tensor) -> Tensor:
    """A histogram over the top 16 bits of float32 scores, reordered by value: most negative bucket first."""
    return torch.cat([raw[0x8000:].flip(0), raw[:0x8000]])  # (65536,)


def _bucket(o: int) -> tuple[int, int]:
    """(first key, number of keys) of ordered bucket ``o``; the buckets of -0.0 and 0.0 form one range."""
    if o in (0x7FFF, 0x8000):
        return -0xFFFF, 2 * 0xFFFF + 1
    raw = 0xFFFF - o if o < 0x8000 else o - 0x8000
    first_bits = (raw << 16) | 0xFFFF if raw & 0x8000 else raw << 16  # the lowest value in the bucket
    return _key(first_bits), 1 << 16


def _summed(local_part: Tensor, shared_part: Tensor, group: Any, sharded: bool) -> Tensor:
    """``local_part`` plus ``shared_part`` summed over the group (one all-reduce, only when any item is sharded)."""
    if sharded and group is not None:
        all_reduce_(shared_part, group)
    return local_part + shared_part


_NAN_BUCKETS = torch.cat([torch.arange(0x7F81, 0x8000), torch.arange(0xFF81, 0x10000)])  # exponent 255, NaN only


@torch.no_grad()
def _kth_lowest(items: Sequence[tuple[str, Tensor, bool]], k: int, group: Any) -> tuple[float, int]:
    """The k-th lowest score (1 ≤ k ≤ total) over all items and the number of scores strictly below it.

    Args:
        items: ``(fqn, local scores, sharded)``; a sharded item's counts are summed over ``group``, a whole one is
            counted once (the same on every process).
        k: rank of the wanted score among all entries of the full tensors.
        group: the process group of the sharded items (None: single process).

    Raises:
        ValueError: if any score is NaN.
    """
    any_sharded = any(sh for _, _, sh in items)
    dev = items[0][1].device  # counts live with the scores, where the group's backend reduces them
    hist = [torch.zeros(_BINS, dtype=torch.int64, device=dev) for _ in range(2)]  # whole, sharded
    bad = []
    for fqn, s, sh in items:
        top = _flat(s).view(torch.int16)[_HIGH::2].view(torch.uint16).to(torch.int32)  # (numel,) sign+exp+7 bits
        h = torch.bincount(top, minlength=_BINS)  # (65536,) by raw top bits
        if int(h[_NAN_BUCKETS.to(dev)].sum()):
            bad.append(fqn)
        hist[sh].add_(h.to(dev))
        del top
    counts = _ordered(_summed(hist[0], hist[1], group, any_sharded))  # (65536,) by value
    if int(counts[0 : 0xFFFF - 0xFF80].sum()) or int(counts[0x8000 + 0x7F81 :].sum()):
        raise ValueError(f"scores must not be NaN; found NaN in {bad or 'another process'}.")
    cum = counts.cumsum(0)
    o = int(torch.searchsorted(cum, k))  # first bucket where the running count reaches k
    lo_o = 0x7FFF if o in (0x7FFF, 0x8000) else o
    below = int(cum[lo_o - 1]) if lo_o else 0
    first, span = _bucket(o)
    lo_v, hi_v = _value(first), _value(first + span - 1)  # NaN only at the ±inf buckets: they hold ±inf alone
    lo_v = -math.inf if math.isnan(lo_v) else lo_v
    hi_v = math.inf if math.isnan(hi_v) else hi_v
    hist = [torch.zeros(span, dtype=torch.int64, device=dev) for _ in range(2)]
    for _, s, sh in items:
        f = _flat(s)
        inside = f[(f >= lo_v) & (f <= hi_v)]  # (m,) the scores in the chosen bucket
        hist[sh].add_(torch.bincount(_keys(inside) - first, minlength=span).to(dev))
        del f, inside
    counts = _summed(hist[0], hist[1], group, any_sharded)
    cum = counts.cumsum(0)
    q = int(torch.searchsorted(cum, k - below))
    below += int(cum[q - 1]) if q else 0
    return _value(first + q), below


def _tie_end(eq: Tensor, n: int) -> int:
    """Flat position just past the n-th True of ``eq`` (n ≥ 1), counting chunk by chunk."""
    whole = eq.numel() - eq.numel() % _CHUNK
    per_chunk = torch.cat([eq[:whole].view(-1, _CHUNK).sum(1), eq[whole:].sum().view(1)])  # (chunks,)
    cum = per_chunk.cumsum(0)
    c = int(torch.searchsorted(cum, n))
    before = int(cum[c - 1]) if c else 0
    start = c * _CHUNK
    return start + int(eq[start : start + _CHUNK].nonzero()[n - before - 1]) + 1


def _gather(t: Tensor, group: Any) -> Tensor:
    """``t`` from every process of the group, stacked in rank order: (world, *t.shape)."""
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, t, group=group)
    return torch.stack(parts)


@torch.no_grad()
def _prune_lowest(items: Sequence[tuple[str, Tensor, bool]], k: int, group: Any) -> tuple[list[Tensor], list[int]]:
    """Keep masks pruning exactly the k lowest scores over all items, ties by (item, rank, position).

    Returns:
        The local flat keep mask of every item, and the number of entries pruned in each item's full tensor.
    """
    n = len(items)
    if k <= 0:
        return [torch.ones(s.numel(), dtype=torch.bool, device=s.device) for _, s, _ in items], [0] * n
    threshold, below = _kth_lowest(items, k, group)
    keeps, stats = [], torch.zeros(2, n, dtype=torch.int64, device=items[0][1].device)  # local (below, ties)
    for j, (_, s, _) in enumerate(items):
        f = _flat(s)
        keep = f > threshold  # (numel,) ties pruned for now
        ties = int(torch.count_nonzero(f == threshold))
        stats[0, j], stats[1, j] = f.numel() - int(torch.count_nonzero(keep)) - ties, ties
        keeps.append(keep)
        del f
    any_sharded = group is not None and any(sh for _, _, sh in items)
    everyone = (_gather(stats, group) if any_sharded else stats[None]).cpu()  # (world, 2, n)
    stats = stats.cpu()
    me = dist.get_rank(group) if any_sharded else 0
    left, take, pruned = k - below, [0] * n, [0] * n  # ties still to prune, in (item, rank) order
    for j, (_, _, sh) in enumerate(items):
        for r in range(everyone.shape[0]) if sh else [me]:
            t = min(max(left, 0), int(everyone[r, 1, j]))
            left -= t
            pruned[j] += int(everyone[r, 0, j]) + t
            if r == me:
                take[j] = t
    for j, (_, s, _) in enumerate(items):
        if take[j] < int(stats[1, j]):  # some ties of this item stay: keep those past the first take[j]
            eq = _flat(s) == threshold
            if take[j]:
                eq[: _tie_end(eq, take[j])] = False
            keeps[j] |= eq
    return keeps, pruned


@torch.no_grad()
def _counts(items: Sequence[tuple[str, Tensor, bool]], threshold: float, group: Any) -> Tensor:
    """``(2, n)`` int64 on the CPU: per item, entries of its full tensor strictly below ``threshold`` and equal to it
    (one all-reduce for the sharded items)."""
    dev = items[0][1].device
    local_part, shared = (torch.zeros(2, len(items), dtype=torch.int64, device=dev) for _ in range(2))
    for j, (_, s, sh) in enumerate(items):
        f = _flat(s)
        target = shared if sh else local_part
        target[0, j], target[1, j] = torch.count_nonzero(f < threshold), torch.count_nonzero(f == threshold)
    return _summed(local_part, shared, group, any(sh for _, _, sh in items)).cpu()


@torch.no_grad()
def _clamped_threshold(
    items: Sequence[tuple[str, Tensor, bool]], k: int, lo: Sequence[int], hi: Sequence[int], group: Any
) -> float:
    """The lowest score τ with Σ_f clamp(#(s_f ≤ τ), lo_f, hi_f) ≥ k, over the full tensors: the global ranking's
    threshold when every tensor is held within its bounds. Two radix passes as in :func:`_kth_lowest`, each tensor's
    cumulative histogram clamped on its own (one histogram at a time in memory).

    Raises:
        ValueError: if any score is NaN.
    """
    dev = items[0][1].device
    total = torch.zeros(_BINS, dtype=torch.int64, device=dev)
    for (fqn, s, sh), low, high in zip(items, lo, hi):
        top = _flat(s).view(torch.int16)[_HIGH::2].view(torch.uint16).to(torch.int32)  # (numel,)
        hist = torch.bincount(top, minlength=_BINS).to(dev)  # (65536,) by raw top bits
        if sh and group is not None:
            all_reduce_(hist, group)
        if int(hist[_NAN_BUCKETS.to(dev)].sum()):
            raise ValueError(f"scores must not be NaN; found NaN in {fqn}.")
        total += _ordered(hist).cumsum(0).clamp_(low, high)
    o = int(torch.searchsorted(total, k))  # the first bucket where the clamped count reaches k
    first, span = _bucket(o)
    lo_v, hi_v = _value(first), _value(first + span - 1)
    lo_v = -math.inf if math.isnan(lo_v) else lo_v
    hi_v = math.inf if math.isnan(hi_v) else hi_v
    total = torch.zeros(span, dtype=torch.int64, device=dev)
    for (_, s, sh), low, high in zip(items, lo, hi):
        f = _flat(s)
        inside = f[(f >= lo_v) & (f <= hi_v)]  # (m,) the scores in the chosen bucket
        hist = torch.cat([torch.count_nonzero(f < lo_v).view(1), torch.bincount(_keys(inside) - first, minlength=span)])
        if sh and group is not None:
            all_reduce_(hist, group)
        total += hist.cumsum(0)[1:].clamp_(low, high)
        del f, inside
    return _value(first + int(torch.searchsorted(total, k)))


def _bounded_counts(
    items: Sequence[tuple[str, Tensor, bool]], k: int, lo: Sequence[int], hi: Sequence[int], group: Any
) -> list[int]:
    """Entries to prune per item so that exactly ``k`` are pruned in all, each item within ``[lo, hi]``, by one
    global ranking: the lowest ``clamp(#(s ≤ τ), lo, hi)`` of each item at the threshold τ, ties at τ in item order.
    Needs ``sum(lo) <= k <= sum(hi)``."""
    if k <= sum(lo):
        return list(lo)
    threshold = _clamped_threshold(items, k, lo, hi, group)
    below, equal = _counts(items, threshold, group).tolist()
    counts = [min(max(b, low), high) for b, low, high in zip(below, lo, hi)]
    left = k - sum(counts)
    for j, (b, e, low, high) in enumerate(zip(below, equal, lo, hi)):
        more = min(left, min(max(b + e, low), high) - counts[j])
        counts[j] += more
        left -= more
    return counts


def _down(x: float) -> int:
    """⌊x⌋, forgiving float noise just below an integer (0.3 · 10 is 3, not 2)."""
    return math.floor(x + 1e-9)


def _up(x: float) -> int:
    """⌈x⌉, forgiving float noise just above an integer."""
    return math.ceil(x - 1e-9)


def _apportion(sparsity: float, sizes: Sequence[int]) -> list[int]:
    """Entries to prune per part: round(sparsity · total) in all, each part within one entry of sparsity · size
    (the parts with the largest remainders take the extra entry, ties by order)."""
    want = [sparsity * n for n in sizes]
    counts = [min(math.floor(w), n) for w, n in zip(want, sizes)]
    extra = round(sparsity * sum(sizes)) - sum(counts)
    order = sorted(range(len(sizes)), key=lambda j: (counts[j] - want[j], j))  # largest remainder first
    for j in order[:extra] if extra > 0 else order[::-1][:-extra]:  # (float rounding may ask for one less)
        counts[j] += 1 if extra > 0 else -1
    return counts


def _items(scores: Mapping[str, Tensor], layouts: Mapping[str, Layout]) -> list[tuple[str, Tensor, bool]]:
    return [(f, s, layouts[f].sharded) for f, s in scores.items()]


def _each(items: Sequence[tuple[str, Tensor, bool]], counts: Sequence[int], group: Any) -> dict[str, Tensor]:
    """Every item's own ``counts[j]`` lowest entries pruned (ties by rank, then position)."""
    masks = {}
    for item, n in zip(items, counts):
        (keep,), _ = _prune_lowest([item], n, group)
        masks[item[0]] = keep.view(item[1].shape)
    return masks


# ---- unstructured -------------------------------------------------------------------------------------------


@torch.no_grad()
def layer_masks(
    scores: Mapping[str, Tensor], sparsity: float, layouts: Mapping[str, Layout] | None = None
) -> dict[str, Tensor]:
    """Prune each tensor on its own: round(sparsity · total) entries in all, each tensor within one entry of
    sparsity · numel (the tensors with the largest remainders take the extra entry), its lowest-scored ones.

    Args:
        scores: ``{fqn: local scores}``.
        sparsity: fraction of each tensor's entries to prune.
        layouts: ``{fqn: Layout}`` of sharded tensors (default: every tensor whole and local).

    Raises:
        ValueError: if a score is NaN.
    """
    lay, group = _layouts(scores, layouts)
    items = _items(scores, lay)
    return _each(items, _apportion(sparsity, [_full_numel(lay[f]) for f, _, _ in items]), group)


@torch.no_grad()
def global_masks(
    scores: Mapping[str, Tensor],
    sparsity: float,
    max_layer_sparsity: float | None = None,
    layouts: Mapping[str, Layout] | None = None,
    min_layer_sparsity: float | None = None,
) -> dict[str, Tensor]:
    """Prune exactly the round(sparsity · total) lowest-scored entries across all tensors.

    With bounds, every tensor ends within ``[⌊min_layer_sparsity · numel⌋, ⌈max_layer_sparsity · numel⌉]`` pruned
    entries (each bound within one entry of its fraction, rounded away from the target, so any target between the
    floor and the cap can be met exactly) and the total is still exact: the ranking's threshold is the one at which
    the tensors' counts, each clamped to its bounds, add up to the budget (a tensor at its cap or floor takes its
    own lowest entries; the rest follow the global ranking). Entries scored −inf (already pruned, e.g. by another
    writer) always count: a tensor's cap is raised to them, never below.

    Args:
        scores: ``{fqn: local scores}``, −inf for entries already pruned.
        sparsity: fraction of all entries to prune.
        max_layer_sparsity: the most any one tensor may be pruned (None: no cap).
        layouts: ``{fqn: Layout}`` of sharded tensors (default: every tensor whole and local).
        min_layer_sparsity: the least any one tensor is pruned (None: no floor); at most ``sparsity``.

    Raises:
        ValueError: if a score is NaN, the floor exceeds ``sparsity`` or the cap, or no selection within the bounds
            prunes exactly the budget (the message gives the range the bounds allow).
    """
    if min_layer_sparsity is not None and min_layer_sparsity > min(sparsity, max_layer_sparsity or 1.0):
        raise ValueError(
            f"min_layer_sparsity={min_layer_sparsity} must not exceed the sparsity {sparsity} or the cap "
            f"{max_layer_sparsity}: the budget could not reach every floor."
        )
    lay, group = _layouts(scores, layouts)
    items = _items(scores, lay)
    sizes = [_full_numel(lay[f]) for f, _, _ in items]
    budget = round(sparsity * sum(sizes))
    if max_layer_sparsity is None and min_layer_sparsity is None:
        keeps, _ = _prune_lowest(items, budget, group)
        return {f: keep.view(s.shape) for (f, s, _), keep in zip(items, keeps)}
    already = _counts(items, -math.inf, group)[1].tolist()  # entries scored −inf: pruned whatever the cap says
    hi = [n if max_layer_sparsity is None else max(_up(max_layer_sparsity * n), a) for n, a in zip(sizes, already)]
    lo = [0 if min_layer_sparsity is None else min(_down(min_layer_sparsity * n), h) for n, h in zip(sizes, hi)]
    lo = [max(low, a) for low, a in zip(lo, already)]  # what is pruned already stays pruned
    if not sum(lo) <= max(budget, sum(already)) or budget > sum(hi):  # (already above the budget: kept, no more)
        raise ValueError(
            f"cannot prune exactly {budget} of {sum(sizes)} entries (sparsity {sparsity}) with every tensor within "
            f"min_layer_sparsity={min_layer_sparsity} and max_layer_sparsity={max_layer_sparsity}: those bounds and "
            f"the {sum(already)} entries pruned already (by another writer) allow {sum(lo)} to {sum(hi)} pruned "
            "entries. Loosen the bounds (or layer_spread), change the target, or let the other writer prune less."
        )
    return _each(items, _bounded_counts(items, budget, lo, hi, group), group)


@torch.no_grad()
def output_masks(
    scores: Mapping[str, Tensor],
    sparsity: float,
    in_dims: Mapping[str, int],
    layouts: Mapping[str, Layout] | None = None,
) -> dict[str, Tensor]:
    """Prune the lowest-scored inputs of every output (each row of inputs; Wanda's per-output comparison), ties by
    position: round(sparsity · total) entries in all, every row within one entry of sparsity · fan_in (the extra
    entries go to whole tensors by largest remainder, and within a tensor to its first rows). A tensor that is not
    2-D counts as one row.

    Args:
        scores: ``{fqn: local scores}``.
        sparsity: fraction of each output's inputs to prune.
        in_dims: ``{fqn: input dim}`` (1 for ``nn.Linear`` weights, 0 for ``transformers``' ``Conv1D``).
        layouts: ``{fqn: Layout}`` of sharded tensors (default: every tensor whole and local).

    Raises:
        ValueError: if a 2-D tensor is split along its input dim (its rows are not local), or a score is NaN.
    """
    lay, _ = _layouts(scores, layouts)
    shapes = {}  # fqn -> (full rows, fan-in)
    for fqn, s in scores.items():
        if s.dim() != 2:
            shapes[fqn] = (1, _full_numel(lay[fqn]))
            continue
        d = in_dims.get(fqn, 1)
        if lay[fqn].sharded and lay[fqn].dim == d:
            raise ValueError(f"{fqn}: scope 'output' needs whole output rows, but it is split along its input dim {d}.")
        shapes[fqn] = (lay[fqn].shape[1 - d], lay[fqn].shape[d])
    extra = _row_extras(sparsity, shapes)
    masks = {}
    for fqn, s in scores.items():
        d = in_dims.get(fqn, 1) if s.dim() == 2 else 1
        rows = (s.reshape(1, -1) if s.dim() != 2 else s if d == 1 else s.t()).float()  # (out, in)
        if bool(rows.isnan().any()):
            raise ValueError(f"scores must not be NaN; found NaN in {fqn}.")
        first = lay[fqn].offset[1 - d] if s.dim() == 2 and lay[fqn].dim == 1 - d else 0  # global index of row 0
        plus = torch.arange(first, first + rows.shape[0], device=rows.device) < extra[fqn]  # (out,) one more
        q = math.floor(sparsity * shapes[fqn][1])
        ks = q + plus.long()  # (out,) entries to prune per row
        keep = torch.ones_like(rows, dtype=torch.bool)
        if rows.numel() and bool((ks > 0).any()):
            kth = rows.kthvalue(max(q, 1), dim=1, keepdim=True).values  # (out, 1) the k-th lowest of each row
            if bool(plus.any()):
                kth = torch.where(plus[:, None], rows.kthvalue(q + 1, dim=1, keepdim=True).values, kth)
            below = rows < kth
            eq = rows == kth
            need = ks[:, None] - below.sum(1, keepdim=True)  # (out, 1) ties to prune in each row, first by position
            keep = ~(below | (eq & (eq.cumsum(1, dtype=torch.int32) <= need)))
            keep[ks == 0] = True
        masks[fqn] = keep.view(s.shape) if s.dim() != 2 else keep if d == 1 else keep.t().contiguous()
    return masks


def _row_extras(sparsity: float, shapes: Mapping[str, tuple[int, int]]) -> dict[str, int]:
    """Per tensor, how many of its first rows prune one entry more than floor(sparsity · fan_in), so that
    round(sparsity · total) entries are pruned in all (largest remainders first, ties by order)."""
    base = {f: math.floor(sparsity * fan_in) * rows for f, (rows, fan_in) in shapes.items()}
    left = round(sparsity * sum(r * n for r, n in shapes.values())) - sum(base.values())
    order = sorted(shapes, key=lambda f: -(sparsity * shapes[f][1] - math.floor(sparsity * shapes[f][1])))
    extra = {}
    for f in order:
        rows, fan_in = shapes[f]
        extra[f] = min(max(left, 0), rows if math.floor(sparsity * fan_in) < fan_in else 0)
        left -= extra[f]
    return extra


# ---- structured ---------------------------------------------------------------------------------------------


@torch.no_grad()
def nm_masks(
    scores: Mapping[str, Tensor],
    sparsity: float,
    n: int,
    m: int,
    dims: Mapping[str, int],
    layouts: Mapping[str, Layout] | None = None,
) -> dict[str, Tensor]:
    """In every group of ``m`` consecutive entries along each tensor's input dim, prune the lowest
    min(round(sparsity · m), m − n), ties by position.

    Args:
        scores: ``{fqn: local scores}``.
        sparsity: target fraction of each group to prune.
        n: entries kept at least per group.
        m: group size.
        dims: ``{fqn: input dim}`` (1 for ``nn.Linear`` weights, 0 for ``transformers``' ``Conv1D``).
        layouts: ``{fqn: Layout}`` of sharded tensors (default: every tensor whole and local).

    Raises:
        ValueError: if a tensor's input dim is not divisible by ``m``, or it is split along that dim at a size or
            offset that is not a multiple of ``m``.
    """
    lay, _ = _layouts(scores, layouts)
    prune = min(round(sparsity * m), m - n)
    masks = {}
    for fqn, s in scores.items():
        d = dims.get(fqn, s.dim() - 1) % max(s.dim(), 1)
        layout = lay[fqn]
        if layout.shape[d] % m:
            raise ValueError(
                f"{fqn}: input dim {d} has size {layout.shape[d]}, not divisible by M={m} of the N:M pattern."
            )
        if layout.sharded and layout.dim == d and (s.shape[d] % m or layout.offset[d] % m):
            raise ValueError(
                f"{fqn}: split along its input dim {d} at offset {layout.offset[d]} with {s.shape[d]} local "
                f"entries; both must be multiples of M={m} for the N:M pattern."
            )
        moved = s.movedim(d, -1)  # (..., in)
        groups = moved.reshape(-1, m).float()  # (G, m)
        keep = torch.ones_like(groups, dtype=torch.bool)
        keep.scatter_(1, torch.sort(groups, dim=1, stable=True).indices[:, :prune], False)
        masks[fqn] = keep.view(moved.shape).movedim(-1, d)
    return masks


def _row_sums(
    scores: Mapping[str, Tensor], dims: Mapping[str, int], lay: Mapping[str, Layout], group: Any
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Per output row of each full tensor, the mean of its scores that are not −inf (float64; −inf for a row pruned
    whole already) and the number of those entries, the same on every process. Entries scored −inf (already
    pruned, e.g. by another writer) neither rank a row nor count again."""
    sums, shared = {}, []
    for f, s in scores.items():
        d, layout = dims.get(f, 0), lay[f]
        rows = s.movedim(d, 0).flatten(1).double()  # (local out, in)
        live = ~torch.isneginf(rows)
        part = torch.stack([rows.where(live, 0.0).sum(1), live.sum(1).double()])  # (2, local out) sum, count
        full = torch.zeros(2, layout.shape[d], dtype=torch.float64, device=s.device)  # (2, out)
        if layout.sharded and layout.dim == d:
            full[:, layout.offset[d] : layout.offset[d] + part.shape[1]] = part
        else:
            full += part  # whole rows, or partial sums of rows split along an input dim
        sums[f] = full
        if layout.sharded:
            shared.append(f)
    if shared and group is not None:
        flat = torch.cat([sums[f] for f in shared], dim=1)  # one all-reduce for all sharded tensors
        all_reduce_(flat, group)
        for f, part in zip(shared, flat.split([sums[f].shape[1] for f in shared], dim=1)):
            sums[f] = part
    means = {f: (v[0] / v[1]).where(v[1] > 0, -math.inf).cpu() for f, v in sums.items()}
    return means, {f: v[1].cpu() for f, v in sums.items()}


def _lowest_rows(means: Tensor, k: int) -> Tensor:
    """Indices of the k lowest row means, ties by position (rows are few: a stable sort)."""
    return torch.sort(means, stable=True).indices[:k]


@torch.no_grad()
def row_masks(
    scores: Mapping[str, Tensor],
    sparsity: float,
    dims: Mapping[str, int],
    scope: str = "global",
    max_layer_sparsity: float | None = None,
    layouts: Mapping[str, Layout] | None = None,
) -> dict[str, Tensor]:
    """Prune whole output rows, ranked by mean score (ties by fqn order, then row index).

    Per layer: round(sparsity · rows) rows of each tensor. Globally: rows by increasing mean, in one ranking over
    all tensors, while the midpoint of each row's entries stays within round(sparsity · total) entries.
    ``max_layer_sparsity`` caps every tensor at round(cap · numel) pruned entries (whole rows, rounded down): in
    the global scope a tensor that would exceed it is held at its cap (its own lowest rows) and the others share
    the rest of the target by the same ranking, repeatedly until none exceeds its cap.

    Args:
        scores: ``{fqn: local scores}``.
        sparsity: fraction of the entries to prune.
        dims: ``{fqn: output dim}`` (0 for ``nn.Linear`` weights, 1 for ``transformers``' ``Conv1D``).
        scope: ``"global"`` or ``"layer"``.
        max_layer_sparsity: the most any one tensor may be pruned (None: no cap).
        layouts: ``{fqn: Layout}`` of sharded tensors (default: every tensor whole and local).
    """
    lay, group = _layouts(scores, layouts)
    means, live = _row_sums(scores, dims, lay, group)  # {fqn: (out,)} each
    width = {f: _full_numel(lay[f]) // max(r.numel(), 1) for f, r in means.items()}
    cap_rows = {
        f: (round(max_layer_sparsity * _full_numel(lay[f])) // width[f] if width[f] else r.numel())
        if max_layer_sparsity is not None
        else r.numel()
        for f, r in means.items()
    }
    gone = {f: int((r == -math.inf).sum()) for f, r in means.items()}  # rows pruned whole already: always pruned
    cap_rows = {f: max(c, gone[f]) for f, c in cap_rows.items()}
    if scope == "layer":
        pruned_rows = {
            f: _lowest_rows(r, min(max(round(sparsity * r.numel()), gone[f]), cap_rows[f])) for f, r in means.items()
        }
    else:
        # the budget in entries: what is pruned already counts; a row adds only its entries still live
        target = sparsity * sum(_full_numel(lay[f]) for f in scores) - sum(
            width[f] * r.numel() - float(live[f].sum()) for f, r in means.items()
        )
        fixed: dict[str, int] = {}
        while True:
            free = [f for f in means if f not in fixed]
            flat = torch.cat([means[f] for f in free]) if free else torch.empty(0, dtype=torch.float64)
            w = torch.cat([live[f] for f in free]) if free else flat
            order = _lowest_rows(flat, flat.numel())
            cum = w[order].cumsum(0)
            left = target - sum(float(live[f][_lowest_rows(means[f], cap)].sum()) for f, cap in fixed.items())
            k = int((cum - 0.5 * w[order] <= left).sum()) if left > 0 else 0  # rows whose midpoint fits
            k = max(k, sum(gone[f] for f in free))  # rows pruned whole stay pruned
            chosen = torch.zeros(flat.numel(), dtype=torch.bool)
            chosen[order[:k]] = True
            pruned_rows = {
                f: part.nonzero().flatten() for f, part in zip(free, chosen.split([means[f].numel() for f in free]))
            }
            over = [f for f in free if pruned_rows[f].numel() > cap_rows[f]]
            if not over:
                break
            fixed.update({f: cap_rows[f] for f in over})
        pruned_rows.update({f: _lowest_rows(means[f], cap) for f, cap in fixed.items()})
    masks = {}
    for f, s in scores.items():
        d, layout = dims.get(f, 0), lay[f]
        keep = torch.ones_like(s, dtype=torch.bool).movedim(d, 0)  # (local out, ...)
        rows = pruned_rows[f]
        if layout.sharded and layout.dim == d:  # the local rows are [offset, offset + local out) of the full tensor
            rows = rows[(rows >= layout.offset[d]) & (rows < layout.offset[d] + keep.shape[0])] - layout.offset[d]
        keep[rows.to(s.device)] = False
        masks[f] = keep.movedim(0, d)
    return masks


def compute_masks(
    scores: Mapping[str, Tensor],
    sparsity: float,
    scope: str = "global",
    pattern: str = "unstructured",
    max_layer_sparsity: float | None = None,
    in_dims: Mapping[str, int] | None = None,
    layouts: Mapping[str, Layout] | None = None,
    min_layer_sparsity: float | None = None,
) -> dict[str, Tensor]:
    """Masks at ``sparsity`` for the given scope and pattern (see the module docstring).

    Args:
        scores: ``{fqn: local scores}``, higher = more important, −inf for entries already pruned; not NaN.
        sparsity: the fraction of entries to prune.
        scope: one of :data:`SCOPES`.
        pattern: ``"unstructured"``, ``"row"`` or ``"N:M"``.
        max_layer_sparsity: the most any one tensor may be pruned, in the global scope (None: no cap).
        in_dims: ``{fqn: input dim}`` of each weight (default: the last dim); the output dim is the other.
        layouts: ``{fqn: Layout}`` of the tensors sharded over a process group (default: every tensor whole and
            local). Every process then passes its local shards and gets their masks.
        min_layer_sparsity: the least any one tensor is pruned, in the global scope with the unstructured pattern
            (None: no floor).

    Returns:
        ``{fqn: bool keep mask}`` shaped like each local score tensor.

    Raises:
        ValueError: for an unknown scope or pattern, ``"output"`` with a structured pattern, a NaN score (pattern
            ``"unstructured"``), or a sharded tensor whose split the pattern cannot mask locally.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}.")
    kind, n, m = parse_pattern(pattern)
    in_dims = dict(in_dims or {})
    if min_layer_sparsity is not None and (scope != "global" or kind != "unstructured"):
        raise ValueError("min_layer_sparsity bounds layers of the global unstructured ranking only.")
    if scope == "output" and kind != "unstructured":
        raise ValueError("scope 'output' ranks entries within each output; use it with pattern 'unstructured'.")
    if kind == "nm":
        return nm_masks(scores, sparsity, n, m, in_dims, layouts)
    if kind == "row":
        out_dims = {f: (0 if in_dims.get(f, s.dim() - 1) != 0 else 1) for f, s in scores.items()}
        return row_masks(scores, sparsity, out_dims, scope, max_layer_sparsity, layouts)
    if scope == "layer":
        return layer_masks(scores, sparsity, layouts)
    if scope == "output":
        return output_masks(scores, sparsity, {f: in_dims.get(f, s.dim() - 1) for f, s in scores.items()}, layouts)
    return global_masks(scores, sparsity, max_layer_sparsity, layouts, min_layer_sparsity)


# ---- one bit per entry --------------------------------------------------------------------------------------

_BIT = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)  # bit i of a byte: entry 8·j + i


@torch.no_grad()
def pack_mask(mask: Tensor) -> Tensor:
    """A ≥2-D bool mask packed along its last dim into ``uint8`` of shape (..., ceil(last / 8)).

    Packing is per row of the last dim, so a mask sharded along any other dim packs shard by shard into a packed
    tensor sharded the same way. A 1-D mask is returned unchanged (as bool).
    """
    if mask.dim() < 2:
        return mask.bool()
    last = mask.shape[-1]
    pad = -last % 8
    bits = torch.nn.functional.pad(mask.to(torch.uint8), (0, pad))  # (..., 8·ceil(last/8))
    bits = bits.view(*mask.shape[:-1], (last + pad) // 8, 8) * _BIT.to(mask.device)  # (..., ceil(last/8), 8)
    return bits.sum(-1, dtype=torch.uint8)  # distinct bits: the sum is the bitwise or


@torch.no_grad()
def unpack_mask(packed: Tensor, shape: Sequence[int] | torch.Size) -> Tensor:
    """The bool mask of ``shape`` that :func:`pack_mask` packed into ``packed`` (a 1-D mask comes back as is)."""
    shape = tuple(shape)
    if len(shape) < 2:
        return packed.bool().view(shape)
    bits = (packed.unsqueeze(-1) & _BIT.to(packed.device)) != 0  # (..., ceil(last/8), 8)
    return bits.flatten(-2)[..., : shape[-1]].reshape(shape)


# ---- holding masks ------------------------------------------------------------------------------------------

_SAME_WIDTH = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}  # an integer dtype per element size


def _bits(t: Tensor) -> Tensor:
    """``t`` viewed as integers of the same width (same storage), so a multiply by a bool mask clears the pruned
    entries' bits whatever they hold: +0.0 exactly, also over NaN and infinity, and kept entries bit for bit."""
    return t if not t.is_floating_point() else t.view(_SAME_WIDTH[t.element_size()])


@torch.no_grad()
def clear_(tensors: Sequence[Tensor], keeps: Sequence[Tensor]) -> None:
    """Set every entry of each tensor whose ``keep`` is False to exactly +0.0, in place, whatever it held (NaN and
    infinity included), leaving the kept entries bit for bit: one fused multiply of the tensors' integer views by
    the bool masks (``torch._foreach_mul_``), which is also cheaper than a float multiply or ``masked_fill_``."""
    if tensors:
        foreach_mul_([_bits(t) for t in tensors], list(keeps))


@torch.no_grad()
def apply_masks_(tensors: Mapping[str, Tensor | None], pruned: Mapping[str, Tensor]) -> None:
    """Set the pruned entries (``pruned[fqn]`` True) of each tensor to exactly zero, in place (also over NaN).
    ``None`` tensors (no gradient) are skipped. Training holds masks through
    :class:`~lightning_prune.registry.MaskRegistry`; this is for one-off use (export, recipes)."""
    present = [f for f in pruned if tensors[f] is not None]
    clear_([tensors[f] for f in present], [~pruned[f].to(tensors[f].device) for f in present])


@torch.no_grad()
def all_finite(tensors: list[Tensor]) -> bool:
    """Whether every entry of every tensor is finite, with one host sync in the common case.

    The 2-norms of all tensors take one ``_foreach_norm``; only when one is not finite (a NaN or inf entry, or
    finite entries beyond ~1e19 whose squares overflow) is the exact per-tensor check run.
    """
    if not tensors:
        return True
    if bool(torch.isfinite(torch.stack(foreach_norm(tensors, 2))).all()):
        return True
    return all(bool(torch.isfinite(t).all()) for t in tensors)


@torch.no_grad()
def sparsity_report(tensors: Mapping[str, Tensor]) -> tuple[float, dict[str, float]]:
    """Measured sparsity: the fraction of entries that are exactly zero, over all tensors and per tensor."""
    zeros = {f: int((t == 0).sum()) for f, t in tensors.items()}
    total = sum(t.numel() for t in tensors.values())
    per_layer = {f: zeros[f] / tensors[f].numel() for f in tensors}
    return (sum(zeros.values()) / total if total else 0.0), per_layer

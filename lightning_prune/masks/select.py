"""Exact k-th lowest scores and bounded counts over many, possibly sharded, score tensors.

The selections here take *items*, ``(fqn, local scores, sharded)`` in fqn order: a sharded item's counts are summed
over the process group, a whole one is counted once (it is the same on every process).

Selection is exact and linear in the number of scores: the k-th lowest score is found by a radix select (a
histogram of the top 16 bits of every float32 score, then one of the remaining bits inside the chosen bucket),
tensor by tensor, so no concatenation or sort of all scores is ever made and the extra memory is about one
tensor's worth. Scores are compared as float32 (``-0.0 == 0.0``). Ties are broken by position: in item order,
then (for sharded tensors) by rank within the process group, then by flat position in the local tensor. In one
process this is exactly a stable sort over the concatenation of all scores. NaN scores are not allowed: the
selections raise ``ValueError``.

Sharded tensors: with ``layouts`` (`Layout` per fqn) every process passes its local
shards; the per-shard histograms and counts (never the scores or masks) are summed over the process group, and
each process gets the masks of its own shards.

Bounded selection (`_bounded_counts`) keeps every item's count within ``[lo, hi]`` and still prunes exactly
``k`` in all, by one ranking: the threshold is the one at which the items' counts, each clamped to its bounds, add
up to ``k``. `_apportion` splits a count over parts in proportion to their sizes (largest remainder).
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from lightning_prune._shards import Layout, all_reduce_, same_everywhere

Item = tuple[str, Tensor, bool]  # (fqn, local scores, sharded)

_BINS = 1 << 16  # one radix digit: 16 bits
_HIGH = 1 if sys.byteorder == "little" else 0  # which int16 half of a float32 holds its sign and exponent
_CHUNK = 1 << 16  # entries per chunk when locating the n-th tie in a tensor
_NAN_BUCKETS = torch.cat([torch.arange(0x7F81, 0x8000), torch.arange(0xFF81, 0x10000)])  # exponent 255, NaN only


# ---- layouts -------------------------------------------------------------------------------------------------


def _layouts(scores: Mapping[str, Tensor], layouts: Mapping[str, Layout] | None) -> tuple[dict[str, Layout], Any]:
    """A layout for every fqn (whole and local where none is given) and the process group of the sharded ones."""
    full = {f: Layout(tuple(s.shape), (0,) * s.dim()) for f, s in scores.items()}
    full.update({f: lay for f, lay in (layouts or {}).items() if f in scores})
    return full, same_everywhere(full)


def _full_numel(layout: Layout) -> int:
    return math.prod(layout.shape)


def _items(scores: Mapping[str, Tensor], layouts: Mapping[str, Layout]) -> list[Item]:
    return [(f, s, layouts[f].sharded) for f, s in scores.items()]


# ---- float32 keys and radix buckets --------------------------------------------------------------------------


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


def _top_hist(s: Tensor) -> Tensor:
    """How many scores have each value of the top 16 bits (sign, exponent, 7 mantissa bits) of their float32
    pattern, indexed by those raw bits: (65536,) on the scores' device."""
    top = _flat(s).view(torch.int16)[_HIGH::2].view(torch.uint16).to(torch.int32)  # (numel,)
    hist = torch.bincount(top, minlength=_BINS)
    if int(hist[0x7F80]) or int(hist[0xFF80]):  # the ±inf buckets also hold NaNs with only low payload bits set
        hist[0x7FC0] += torch.isnan(s).sum()  # counted in a NaN bucket, so that _has_nan sees them
    return hist


def _has_nan(raw: Tensor) -> bool:
    """Whether a histogram by raw top bits (`_top_hist`) counts any NaN."""
    return bool(int(raw[_NAN_BUCKETS.to(raw.device)].sum()))


def _ordered(raw: Tensor) -> Tensor:
    """A histogram over the top 16 bits of float32 scores, reordered by value: most negative bucket first."""
    return torch.cat([raw[0x8000:].flip(0), raw[:0x8000]])  # (65536,)


def _bucket(o: int) -> tuple[int, int, float, float]:
    """(first key, number of keys, lowest value, highest value) of ordered bucket ``o``. The buckets of -0.0 and 0.0
    form one range; the ±inf buckets hold ±inf alone (their other bit patterns are NaN)."""
    if o in (0x7FFF, 0x8000):
        first, span = -0xFFFF, 2 * 0xFFFF + 1
    else:
        raw = 0xFFFF - o if o < 0x8000 else o - 0x8000
        first, span = _key((raw << 16) | 0xFFFF if raw & 0x8000 else raw << 16), 1 << 16  # the lowest value's key
    lo_v, hi_v = _value(first), _value(first + span - 1)
    return first, span, -math.inf if math.isnan(lo_v) else lo_v, math.inf if math.isnan(hi_v) else hi_v


def _bucket_hist(f: Tensor, bucket: tuple[int, int, float, float]) -> Tensor:
    """How many of the flat scores ``f`` have each key of ``bucket`` (`_bucket`): (span,)."""
    first, span, lo_v, hi_v = bucket
    inside = f[(f >= lo_v) & (f <= hi_v)]  # (m,) the scores in the bucket
    return torch.bincount(_keys(inside) - first, minlength=span)


def _summed(local_part: Tensor, shared_part: Tensor, group: Any, sharded: bool) -> Tensor:
    """``local_part`` plus ``shared_part`` summed over the group (one all-reduce, only when any item is sharded)."""
    if sharded:
        all_reduce_(shared_part, group)
    return local_part + shared_part


# ---- exact k-th lowest ---------------------------------------------------------------------------------------


@torch.no_grad()
def _kth_lowest(items: Sequence[Item], k: int, group: Any) -> tuple[float, int]:
    """The k-th lowest score (1 ≤ k ≤ total) over all items and the number of scores strictly below it.

    Args:
        items: ``(fqn, local scores, sharded)``.
        k: rank of the wanted score among all entries of the full tensors.
        group: the process group of the sharded items (None: single process).

    Raises:
        ValueError: if any score is NaN.
    """
    any_sharded = any(sh for _, _, sh in items)
    dev = items[0][1].device  # counts live with the scores, where the group's backend reduces them
    hist = [torch.zeros(_BINS, dtype=torch.int64, device=dev) for _ in range(2)]  # whole, sharded
    for _, s, sh in items:
        hist[sh].add_(_top_hist(s).to(dev))
    raw = _summed(hist[0], hist[1], group, any_sharded)  # (65536,) by raw top bits
    if _has_nan(raw):
        bad = [fqn for fqn, s, _ in items if _has_nan(_top_hist(s))]
        raise ValueError(f"scores must not be NaN; found NaN in {bad or 'another process'}.")
    cum = _ordered(raw).cumsum(0)  # (65536,) by value
    o = int(torch.searchsorted(cum, k))  # first bucket where the running count reaches k
    lo_o = 0x7FFF if o in (0x7FFF, 0x8000) else o
    below = int(cum[lo_o - 1]) if lo_o else 0
    bucket = _bucket(o)
    hist = [torch.zeros(bucket[1], dtype=torch.int64, device=dev) for _ in range(2)]
    for _, s, sh in items:
        hist[sh].add_(_bucket_hist(_flat(s), bucket).to(dev))
    cum = _summed(hist[0], hist[1], group, any_sharded).cumsum(0)
    q = int(torch.searchsorted(cum, k - below))
    below += int(cum[q - 1]) if q else 0
    return _value(bucket[0] + q), below


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
def _prune_lowest(items: Sequence[Item], k: int, group: Any) -> list[Tensor]:
    """The local flat keep mask of every item, pruning exactly the k lowest scores over all items, ties by (item,
    rank, position)."""
    if k <= 0:
        return [torch.ones(s.numel(), dtype=torch.bool, device=s.device) for _, s, _ in items]
    threshold, below = _kth_lowest(items, k, group)
    keeps, ties = [], torch.zeros(len(items), dtype=torch.int64, device=items[0][1].device)  # local ties
    for j, (_, s, _) in enumerate(items):
        f = _flat(s)
        keeps.append(f > threshold)  # (numel,) ties pruned for now
        ties[j] = int(torch.count_nonzero(f == threshold))
        del f
    any_sharded = any(sh for _, _, sh in items)
    everyone = (_gather(ties, group) if any_sharded else ties[None]).cpu()  # (world, n)
    me = dist.get_rank(group) if any_sharded else 0
    left = k - below  # ties still to prune, in (item, rank) order; at least 1
    for j, (_, s, sh) in enumerate(items):
        take = 0  # this process's ties of item j to prune
        for r in range(everyone.shape[0]) if sh else [me]:
            t = min(left, int(everyone[r, j]))
            left -= t
            if r == me:
                take = t
        if take < int(everyone[me, j]):  # some ties of this item stay: keep those past the first `take`
            eq = _flat(s) == threshold
            if take:
                eq[: _tie_end(eq, take)] = False
            keeps[j] |= eq
    return keeps


def _each(items: Sequence[Item], counts: Sequence[int], group: Any) -> dict[str, Tensor]:
    """Every item's own ``counts[j]`` lowest entries pruned (ties by rank, then position)."""
    return {fqn: _prune_lowest([(fqn, s, sh)], n, group)[0].view(s.shape) for (fqn, s, sh), n in zip(items, counts)}


# ---- bounded counts ------------------------------------------------------------------------------------------


@torch.no_grad()
def _counts(items: Sequence[Item], threshold: float, group: Any) -> Tensor:
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
def _clamped_threshold(items: Sequence[Item], k: int, lo: Sequence[int], hi: Sequence[int], group: Any) -> float:
    """The lowest score τ with Σ_f clamp(#(s_f ≤ τ), lo_f, hi_f) ≥ k, over the full tensors: the global ranking's
    threshold when every tensor is held within its bounds. Two radix passes as in `_kth_lowest`, each tensor's
    cumulative histogram clamped on its own (one histogram at a time in memory).

    Raises:
        ValueError: if any score is NaN.
    """
    dev = items[0][1].device
    total = torch.zeros(_BINS, dtype=torch.int64, device=dev)
    for (fqn, s, sh), low, high in zip(items, lo, hi):
        raw = _top_hist(s).to(dev)  # (65536,) by raw top bits
        if sh:
            all_reduce_(raw, group)
        if _has_nan(raw):
            raise ValueError(f"scores must not be NaN; found NaN in {fqn}.")
        total += _ordered(raw).cumsum(0).clamp_(low, high)
    bucket = _bucket(int(torch.searchsorted(total, k)))  # the first bucket where the clamped count reaches k
    total = torch.zeros(bucket[1], dtype=torch.int64, device=dev)
    for (_, s, sh), low, high in zip(items, lo, hi):
        f = _flat(s)
        hist = torch.cat([torch.count_nonzero(f < bucket[2]).view(1), _bucket_hist(f, bucket)])  # below, then inside
        if sh:
            all_reduce_(hist, group)
        total += hist.cumsum(0)[1:].clamp_(low, high)
        del f
    return _value(bucket[0] + int(torch.searchsorted(total, k)))


def _bounded_counts(items: Sequence[Item], k: int, lo: Sequence[int], hi: Sequence[int], group: Any) -> list[int]:
    """Entries to prune per item so that exactly ``k`` are pruned in all, each item within ``[lo, hi]``, by one
    global ranking: the lowest ``clamp(#(s ≤ τ), lo, hi)`` of each item at the threshold τ, ties at τ in item order.
    Needs ``k <= sum(hi)``; at most ``sum(lo)`` it gives ``lo``."""
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

"""Mask selection: global, per layer, per output, N:M and rows; exact counts, caps, floors and shards."""

import math

import pytest
import torch

from lightning_prune.masks import (
    all_finite,
    apply_masks_,
    compute_masks,
    pack_mask,
    parse_pattern,
    sparsity_report,
    unpack_mask,
)

T, F = True, False


def test_global_mask_ranks_across_layers():
    scores = {"a": torch.tensor([[4.0, 1.0], [3.0, 2.0]]), "b": torch.tensor([[0.5, 5.0, 6.0, 7.0]])}
    masks = compute_masks(scores, 0.5)  # prune 4 lowest of 8: 0.5, 1, 2, 3
    assert masks["a"].tolist() == [[T, F], [F, F]]
    assert masks["b"].tolist() == [[F, T, T, T]]


def test_global_mask_respects_max_layer_sparsity():
    scores = {"a": torch.tensor([[4.0, 1.0], [3.0, 2.0]]), "b": torch.tensor([[0.5, 5.0, 6.0, 7.0]])}
    masks = compute_masks(scores, 0.5, max_layer_sparsity=0.5)  # "a" capped at 2 of 4; "b" gives the rest
    assert masks["a"].tolist() == [[T, F], [T, F]]
    assert masks["b"].tolist() == [[F, F, T, T]]


def test_layer_mask_prunes_each_layer_to_the_target():
    scores = {"a": torch.tensor([[4.0, 1.0], [3.0, 2.0]]), "b": torch.tensor([[0.5, 5.0, 6.0, 7.0]])}
    masks = compute_masks(scores, 0.25, scope="layer")
    assert masks["a"].tolist() == [[T, F], [T, T]]
    assert masks["b"].tolist() == [[F, T, T, T]]


def test_ties_are_broken_by_position():
    masks = compute_masks({"a": torch.ones(1, 6)}, 0.5)
    assert masks["a"].tolist() == [[F, F, F, T, T, T]]


def test_two_four_mask_keeps_two_largest_of_each_group_of_four():
    scores = {"w": torch.tensor([[1.0, 2.0, 3.0, 4.0, 8.0, 7.0, 6.0, 5.0], [9.0, 0.0, 9.0, 0.0, 1.0, 1.0, 2.0, 2.0]])}
    masks = compute_masks(scores, 0.5, pattern="2:4")
    assert masks["w"].tolist() == [[F, F, T, T, T, T, F, F], [T, F, T, F, F, F, T, T]]


def test_n_m_groups_along_dim_zero_for_conv1d_layout():
    scores = {"w": torch.tensor([[1.0], [4.0], [3.0], [2.0]])}  # (in=4, out=1)
    masks = compute_masks(scores, 0.5, pattern="2:4", in_dims={"w": 0})
    assert masks["w"].flatten().tolist() == [F, T, T, F]


def test_n_m_is_capped_at_m_minus_n_and_progressive_below():
    scores = {"w": torch.arange(8.0).view(1, 8)}
    assert compute_masks(scores, 0.25, pattern="2:4")["w"].tolist() == [[F, T, T, T, F, T, T, T]]  # 1:4 of 2:4
    assert compute_masks(scores, 0.9, pattern="2:4")["w"].sum() == 4


def test_n_m_with_indivisible_dim_is_rejected():
    with pytest.raises(ValueError, match="not divisible by M=4"):
        compute_masks({"w": torch.ones(2, 6)}, 0.5, pattern="2:4")


def test_row_mask_prunes_whole_output_rows():
    scores = {"a": torch.tensor([[4.0, 4.0], [1.0, 1.0], [3.0, 3.0]]), "b": torch.tensor([[2.0, 2.0], [9.0, 9.0]])}
    layer = compute_masks(scores, 0.5, scope="layer", pattern="row")
    assert layer["a"].tolist() == [[T, T], [F, F], [F, F]]  # round(1.5) = 2 rows
    assert layer["b"].tolist() == [[F, F], [T, T]]
    glob = compute_masks(scores, 0.4, pattern="row")  # 4 of 10 entries: rows scoring 1 and 2
    assert glob["a"].tolist() == [[T, T], [F, F], [T, T]]
    assert glob["b"].tolist() == [[F, F], [T, T]]


def test_row_mask_for_conv1d_layout_prunes_columns():
    scores = {"w": torch.tensor([[1.0, 5.0], [1.0, 5.0], [1.0, 5.0]])}  # (in=3, out=2)
    masks = compute_masks(scores, 0.5, scope="layer", pattern="row", in_dims={"w": 0})
    assert masks["w"].tolist() == [[F, T], [F, T], [F, T]]


def test_already_pruned_entries_stay_pruned():
    scores = {"a": torch.tensor([float("-inf"), 100.0, 1.0, 2.0])}
    assert compute_masks(scores, 0.5)["a"].tolist() == [F, T, F, T]


def test_exact_counts_at_many_sparsities():
    gen = torch.Generator().manual_seed(0)
    scores = {"a": torch.randn(7, 13, generator=gen), "b": torch.randn(5, 3, generator=gen)}
    for s in [0.1, 0.33, 0.5, 0.9]:
        pruned = sum(int((~m).sum()) for m in compute_masks(scores, s).values())
        assert pruned == round(s * (7 * 13 + 5 * 3))


def test_bad_pattern_and_scope():
    with pytest.raises(ValueError, match="pattern must be"):
        parse_pattern("4:2")
    with pytest.raises(ValueError, match="scope must be"):
        compute_masks({"a": torch.ones(2)}, 0.5, scope="model")


def test_apply_masks_sets_exact_zeros_even_over_nan_and_reports_sparsity():
    t = torch.tensor([float("nan"), 2.0, 3.0, 4.0])
    apply_masks_({"t": t}, {"t": torch.tensor([T, F, T, F])})
    assert t.tolist() == [0.0, 2.0, 0.0, 4.0]
    total, per_layer = sparsity_report({"t": t, "u": torch.ones(4)})
    assert total == 2 / 8 and per_layer == {"t": 0.5, "u": 0.0}


def test_all_finite_is_exact_beyond_the_overflow_of_the_fast_norm():
    assert all_finite([torch.tensor([3e38, 3e38]), torch.ones(2)])  # the 2-norm overflows; the entries are finite
    assert not all_finite([torch.ones(2), torch.tensor([1.0, float("nan")])])
    assert not all_finite([torch.tensor([float("-inf")])])
    assert all_finite([])


def test_output_scope_prunes_each_output_row_on_its_own_in_either_layout():
    s = torch.tensor([[4.0, 1.0, 3.0, 2.0], [0.1, 0.4, 0.3, 0.2]])  # (out, in)
    masks = compute_masks({"lin": s, "conv": s.t().clone()}, 0.5, scope="output", in_dims={"lin": 1, "conv": 0})
    assert masks["lin"].tolist() == [[T, F, T, F], [F, T, T, F]]
    assert torch.equal(masks["conv"], masks["lin"].t())
    with pytest.raises(ValueError, match="use it with pattern 'unstructured'"):
        compute_masks({"lin": s}, 0.5, scope="output", pattern="2:4")


# ---- exactness against a sort-based reference (the selection by a stable sort over all scores) ---------------


def _ref_lowest(flat, k):
    return torch.sort(flat, stable=True).indices[:k]


def _ref_apportion(sparsity, sizes):  # largest remainder: exact total, each part within one entry
    counts = [int(sparsity * n) for n in sizes]
    order = sorted(range(len(sizes)), key=lambda j: -(sparsity * sizes[j] - counts[j]))
    for j in order[: round(sparsity * sum(sizes)) - sum(counts)]:
        counts[j] += 1
    return counts


def _ref_keep_lowest(s, n):
    keep = torch.ones(s.numel(), dtype=torch.bool)
    keep[_ref_lowest(s.flatten().float(), n)] = False
    return keep.view_as(s)


def _ref_layer(scores, sparsity):
    counts = _ref_apportion(sparsity, [s.numel() for s in scores.values()])
    return {f: _ref_keep_lowest(s, n) for (f, s), n in zip(scores.items(), counts)}


def _ref_global(scores, sparsity, cap=None, floor=None):
    """One stable sort over all scores; with bounds, the shortest prefix whose per-tensor counts, each clamped to
    [⌊floor·n⌋, max(⌈cap·n⌉, its −inf entries)], add up to the budget."""
    fqns = list(scores)
    sizes = [scores[f].numel() for f in fqns]
    budget = round(sparsity * sum(sizes))
    flat = torch.cat([scores[f].flatten().float() for f in fqns])
    owner = torch.repeat_interleave(torch.arange(len(fqns)), torch.tensor(sizes))
    order = _ref_lowest(flat, flat.numel())
    if cap is None and floor is None:
        keep = torch.ones(flat.numel(), dtype=torch.bool)
        keep[order[:budget]] = False
        return {f: part.view_as(scores[f]) for f, part in zip(fqns, keep.split(sizes))}
    neg = [int(torch.isneginf(scores[f]).sum()) for f in fqns]
    hi = [n if cap is None else max(math.ceil(cap * n - 1e-9), a) for n, a in zip(sizes, neg)]
    lo = [0 if floor is None else min(math.floor(floor * n + 1e-9), h) for n, h in zip(sizes, hi)]
    lo = [max(low, a) for low, a in zip(lo, neg)]
    counts = [0] * len(fqns)
    clamped = list(lo)
    for i in order.tolist():
        if sum(clamped) >= budget:
            break
        j = int(owner[i])
        counts[j] += 1
        clamped[j] = min(max(counts[j], lo[j]), hi[j])
    return {f: _ref_keep_lowest(scores[f], n) for f, n in zip(fqns, clamped)}


def _ref_output(scores, sparsity):  # (out, in) tensors; the extra entries to whole tensors by largest remainder
    masks, rows = {}, {f: s.shape[0] for f, s in scores.items()}
    fan = {f: s.shape[1] for f, s in scores.items()}
    left = round(sparsity * sum(s.numel() for s in scores.values())) - sum(
        int(sparsity * fan[f]) * rows[f] for f in scores
    )
    for f in sorted(scores, key=lambda f: -(sparsity * fan[f] - int(sparsity * fan[f]))):
        extra = min(left, rows[f])
        left -= extra
        order = torch.argsort(scores[f].float(), dim=1, stable=True)
        keep = torch.ones_like(scores[f], dtype=torch.bool)
        for r in range(rows[f]):
            keep[r, order[r, : int(sparsity * fan[f]) + (r < extra)]] = False
        masks[f] = keep
    return {f: masks[f] for f in scores}


def _ref_nm(scores, sparsity, n, m):  # groups along the last dim
    prune = min(round(sparsity * m), m - n)
    masks = {}
    for f, s in scores.items():
        groups = s.reshape(-1, m).float()
        keep = torch.ones_like(groups, dtype=torch.bool)
        keep.scatter_(1, torch.sort(groups, dim=1, stable=True).indices[:, :prune], False)
        masks[f] = keep.view_as(s)
    return masks


def _ref_row(scores, sparsity, scope, cap=None):  # (out, in) tensors; rows by the mean of their live entries
    live = {f: (~torch.isneginf(s)).sum(1).double() for f, s in scores.items()}  # entries not pruned already
    rows = {f: torch.where(torch.isneginf(s), 0.0, s.double()).sum(1) / live[f] for f, s in scores.items()}
    rows = {f: torch.where(live[f] > 0, r, -torch.inf) for f, r in rows.items()}
    gone = {f: int((live[f] == 0).sum()) for f in scores}
    cap_rows = {f: (round(cap * s.numel()) // s.shape[1] if cap is not None else s.shape[0]) for f, s in scores.items()}
    cap_rows = {f: max(c, gone[f]) for f, c in cap_rows.items()}
    if scope == "layer":
        pruned = {
            f: _ref_lowest(r, min(max(round(sparsity * r.numel()), gone[f]), cap_rows[f])) for f, r in rows.items()
        }
    else:
        target = sparsity * sum(s.numel() for s in scores.values())
        target -= sum(s.numel() - float(live[f].sum()) for f, s in scores.items())  # pruned already: counted once
        fixed = {}
        while True:
            free = [f for f in rows if f not in fixed]
            flat = torch.cat([rows[f] for f in free] + [torch.empty(0, dtype=torch.float64)])
            w = torch.cat([live[f] for f in free] + [flat[:0]])
            order = _ref_lowest(flat, flat.numel())
            cum = w[order].cumsum(0)
            left = target - sum(float(live[f][_ref_lowest(rows[f], c)].sum()) for f, c in fixed.items())
            k = int((cum - 0.5 * w[order] <= left).sum()) if left > 0 else 0
            k = max(k, sum(gone[f] for f in free))
            chosen = torch.zeros(flat.numel(), dtype=torch.bool)
            chosen[order[:k]] = True
            pruned = {f: p.nonzero().flatten() for f, p in zip(free, chosen.split([rows[f].numel() for f in free]))}
            over = [f for f in free if pruned[f].numel() > cap_rows[f]]
            if not over:
                break
            fixed.update({f: cap_rows[f] for f in over})
        pruned.update({f: _ref_lowest(rows[f], c) for f, c in fixed.items()})
    masks = {}
    for f, s in scores.items():
        keep = torch.ones_like(s, dtype=torch.bool)
        keep[pruned[f]] = False
        masks[f] = keep
    return masks


SHAPES = {"q": (24, 16), "mlp": (40, 16), "o": (16, 24), "bias": (40,)}


def _scores(kind, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for f, shape in SHAPES.items():
        if kind == "random":
            s = torch.randn(shape, generator=gen)
        elif kind == "tied":
            s = torch.randint(0, 4, shape, generator=gen).float()
        elif kind == "equal":
            s = torch.ones(shape)
        else:  # "pruned": random with −inf (already pruned) entries, and signed zeros
            s = torch.randn(shape, generator=gen)
            s[torch.rand(shape, generator=gen) < 0.3] = float("-inf")
            s[torch.rand(shape, generator=gen) < 0.1] = 0.0
            s[torch.rand(shape, generator=gen) < 0.1] = -0.0
        out[f] = s
    return out


def _equal(a, b):
    assert a.keys() == b.keys()
    for f in a:
        assert a[f].shape == b[f].shape and torch.equal(a[f], b[f]), f


KINDS = ["random", "tied", "equal", "pruned"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cap", [None, 0.5])
def test_global_equals_the_stable_sort_with_exact_counts(kind, cap):
    scores = _scores(kind)
    total = sum(s.numel() for s in scores.values())
    neg = {f: int(torch.isneginf(t).sum()) for f, t in scores.items()}
    for s in [0.0, 0.1, 0.33, 0.5, 0.6, 0.9, 1.0]:
        if cap is not None and round(s * total) > sum(
            max(math.ceil(cap * t.numel()), neg[f]) for f, t in scores.items()
        ):
            with pytest.raises(ValueError, match="cannot prune exactly"):
                compute_masks(scores, s, max_layer_sparsity=cap)
            continue
        masks = compute_masks(scores, s, max_layer_sparsity=cap)
        _equal(masks, _ref_global(scores, s, cap))
        union = sum(int((~m | torch.isneginf(scores[f])).sum()) for f, m in masks.items())
        assert union == max(round(s * total), sum(neg.values()))  # exact, or what was pruned already
        if cap is not None:  # the cap counts what was pruned already (−inf) once, never below it
            assert all(int((~m).sum()) <= max(math.ceil(cap * m.numel()), neg[f]) for f, m in masks.items())


@pytest.mark.parametrize("kind", KINDS)
def test_bounded_global_selection_is_exact_whenever_the_floors_leave_room(kind):
    scores = _scores(kind)
    total = sum(s.numel() for s in scores.values())
    for target, spread in [(0.5, 0.1), (0.3, 0.05), (0.7, 0.2), (0.5, 0.0), (0.33, 0.001)]:
        floor, cap = max(0.0, target - spread), min(1.0, target + spread)
        neg = {f: int(torch.isneginf(t).sum()) for f, t in scores.items()}
        least = sum(max(math.floor(floor * t.numel() + 1e-9), neg[f]) for f, t in scores.items())
        if least > round(target * total):  # what was pruned already plus the floors exceed the target
            with pytest.raises(ValueError, match="pruned already"):
                compute_masks(scores, target, max_layer_sparsity=cap, min_layer_sparsity=floor)
            continue
        masks = compute_masks(scores, target, max_layer_sparsity=cap, min_layer_sparsity=floor)
        _equal(masks, _ref_global(scores, target, cap, floor))
        assert sum(int((~m).sum()) for m in masks.values()) == round(target * total)
        neg = {f: int(torch.isneginf(t).sum()) for f, t in scores.items()}
        for f, m in masks.items():  # each within one entry of target ± spread (−inf entries counted, never undone)
            assert floor * m.numel() - 1 < int((~m).sum()) < max(cap * m.numel() + 1, neg[f] + 1), f


@pytest.mark.parametrize("kind", KINDS)
def test_layer_output_and_nm_equal_the_stable_sort(kind):
    scores = _scores(kind)
    two_d = {f: s for f, s in scores.items() if s.dim() == 2}
    for s in [0.1, 0.5, 0.75]:
        masks = compute_masks(scores, s, scope="layer")
        _equal(masks, _ref_layer(scores, s))
        assert all(abs(int((~m).sum()) - s * m.numel()) < 1 for m in masks.values())  # each within one entry
        assert sum(int((~m).sum()) for m in masks.values()) == round(s * sum(m.numel() for m in masks.values()))
        output = compute_masks(two_d, s, scope="output")
        _equal(output, _ref_output(two_d, s))
        assert sum(int((~m).sum()) for m in output.values()) == round(s * sum(m.numel() for m in two_d.values()))
        _equal(compute_masks(two_d, s, pattern="2:4"), _ref_nm(two_d, s, 2, 4))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cap", [None, 0.5])
def test_row_pattern_equals_the_reference_and_honours_the_cap(kind, cap):
    scores = {f: s for f, s in _scores(kind).items() if s.dim() == 2}
    for scope in ["global", "layer"]:
        for s in [0.2, 0.4, 0.7]:
            masks = compute_masks(scores, s, scope=scope, pattern="row", max_layer_sparsity=cap)
            _equal(masks, _ref_row(scores, s, scope, cap))
            if cap is not None:  # whole rows pruned already count once, never below
                gone = {f: int(torch.isneginf(t).all(1).sum()) * t.shape[1] for f, t in scores.items()}
                assert all(int((~m).sum()) <= max(round(cap * m.numel()), gone[f]) for f, m in masks.items())


def test_rows_are_ranked_by_their_live_entries_not_by_another_writers_zeros():
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(6, 8, generator=gen) + torch.arange(6.0)[:, None]  # row i scores about i + 0.5
    scores[:, :4] = float("-inf")  # half of every row's inputs pruned by another writer (removed neurons)
    scores = scores[[3, 0, 5, 1, 4, 2]]  # the low rows are not first by position
    masks = compute_masks({"w": scores}, 0.75, pattern="row")  # 24 pruned already; 12 more = 3 rows of 4 live
    assert int((~masks["w"] | torch.isneginf(scores)).sum()) == 36  # with the other writer's zeros, counted once
    assert masks["w"].all(1).tolist() == [True, False, True, False, True, False]  # rows 0, 1, 2 by score


def test_row_cap_keeps_a_layer_from_being_pruned_whole():
    scores = {"low": torch.zeros(4, 8), "high": torch.ones(4, 8)}
    free = compute_masks(scores, 0.5, pattern="row")
    assert not free["low"].any()  # the bug the cap prevents: one layer 100 % pruned
    capped = compute_masks(scores, 0.5, pattern="row", max_layer_sparsity=0.5)
    assert int((~capped["low"]).sum()) == 16 and int((~capped["high"]).sum()) == 16


def test_nan_scores_are_rejected():
    with pytest.raises(ValueError, match="NaN in \\['b'\\]"):
        compute_masks({"a": torch.ones(4), "b": torch.tensor([1.0, float("nan")])}, 0.5)
    quiet = torch.tensor([0x7F800001], dtype=torch.int32).view(torch.float32)  # a NaN with only low payload bits
    assert torch.isnan(quiet).all()
    with pytest.raises(ValueError, match="NaN in \\['c'\\]"):
        compute_masks({"c": torch.cat([torch.tensor([1.0, 2.0, 3.0]), quiet])}, 0.5)
    with pytest.raises(ValueError, match="NaN"):
        compute_masks({"c": torch.cat([torch.tensor([1.0, 2.0, 3.0]), quiet])}, 0.5, max_layer_sparsity=0.75)


def test_masks_of_large_tensors_match_at_chunk_boundaries():
    gen = torch.Generator().manual_seed(1)
    scores = {"a": torch.randint(0, 3, (300, 700), generator=gen).float(), "b": torch.randn(50_000, generator=gen)}
    _equal(compute_masks(scores, 0.3), _ref_global(scores, 0.3))


@pytest.mark.parametrize("shape", [(5, 13), (3, 16), (2, 4, 9), (7,), (0, 32), (0,)])
def test_pack_unpack_round_trip(shape):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(0)) < 0.5
    packed = pack_mask(mask)
    if len(shape) >= 2:
        assert packed.dtype == torch.uint8 and packed.shape == (*shape[:-1], -(-shape[-1] // 8))
        if shape[0] >= 2:
            assert torch.equal(torch.cat([pack_mask(part) for part in mask.chunk(2)]), packed)  # shard by shard
    else:
        assert packed.dtype == torch.bool
    assert torch.equal(unpack_mask(packed, shape), mask)


def test_shards_over_two_processes_give_the_one_process_masks(tmp_path):
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    script = Path(__file__).parent / "masks_shard_run.py"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path), str(rank)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    try:
        results = [proc.communicate(timeout=120) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    for proc, (_, err) in zip(procs, results):
        assert proc.returncode == 0, err[-3000:]
    for rank in range(2):
        assert (tmp_path / f"ok{rank}").read_text().strip() == "ok"


def test_a_floor_per_layer_moves_the_budget_to_layers_the_ranking_would_spare():
    scores = {"a": torch.arange(10.0), "b": torch.arange(100.0, 110.0)}  # the ranking prunes a first
    plain = compute_masks(scores, 0.5)
    assert int((~plain["a"]).sum()) == 10 and int((~plain["b"]).sum()) == 0
    floored = compute_masks(scores, 0.5, min_layer_sparsity=0.3)
    assert int((~floored["b"]).sum()) == 3 and int((~floored["a"]).sum()) == 7  # b at its floor, a takes the rest
    assert floored["b"][:3].tolist() == [False] * 3  # b's own lowest entries
    bounded = compute_masks(scores, 0.5, max_layer_sparsity=0.6, min_layer_sparsity=0.4)
    assert int((~bounded["a"]).sum()) == 6 and int((~bounded["b"]).sum()) == 4
    with pytest.raises(ValueError, match="must not exceed the sparsity"):
        compute_masks(scores, 0.5, min_layer_sparsity=0.6)
    with pytest.raises(ValueError, match="global unstructured"):
        compute_masks(scores, 0.5, scope="layer", min_layer_sparsity=0.1)

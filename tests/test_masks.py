import math

import pytest
import torch

from lightning_prune.masks import all_finite, apply_masks_, compute_masks, mask_factors, parse_pattern, sparsity_report

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


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_fast_multiply_path_gives_exact_zeros_over_non_finite_entries(bad):
    t = torch.tensor([bad, 2.0, 3.0, bad])
    u = torch.tensor([[1.0, -1.0], [5.0, 6.0]], dtype=torch.bfloat16)
    pruned = {"t": torch.tensor([T, F, T, F]), "u": torch.tensor([[F, T], [T, F]])}
    factors = mask_factors(pruned, {"t": t, "u": u})
    assert factors["u"].dtype == torch.bfloat16 and factors["t"].tolist() == [0.0, 1.0, 0.0, 1.0]
    apply_masks_({"t": t, "u": u, "v": None}, {**pruned, "v": torch.tensor([T])}, {**factors, "v": None})
    assert t[:3].tolist() == [0.0, 2.0, 0.0] and not math.isfinite(t[3])  # pruned: exact zero; kept: untouched
    assert u.float().tolist() == [[1.0, 0.0], [0.0, 6.0]]


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

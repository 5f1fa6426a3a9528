import math

import pytest
import torch

from lightning_prune.mutual_information import (
    activation_taylor,
    correlation_neighbours,
    gaussian_gram,
    joint_renyi_entropy,
    mean_abs_activation,
    mutual_information,
    neuron_entropy,
    pairwise_mutual_information,
    redundant_neurons,
    renyi_entropy,
    silverman_sigma,
    weight_norm_scores,
)

# Hand-made Gram matrices over N = 3 samples: A groups samples {0, 1} | {2}, B groups {0} | {1, 2}.
K_A = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
K_B = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 1.0, 1.0]])


def test_entropy_of_hand_made_gram_matrix():
    a = K_A / 3  # eigenvalues 2/3, 1/3, 0
    assert renyi_entropy(a, 2.0).item() == pytest.approx(math.log2(9 / 5), abs=1e-6)  # -log2(4/9 + 1/9)
    assert renyi_entropy(a, 1.0).item() == pytest.approx(math.log2(3) - 2 / 3, abs=1e-6)  # -Σ λ log2 λ
    assert renyi_entropy(a, 3.0).item() == pytest.approx(math.log2(3) / 2, abs=1e-6)  # -½ log2(8/27 + 1/27)


def test_joint_entropy_and_mutual_information_of_hand_made_gram_matrices():
    a, b = K_A / 3, K_B / 3
    # K_A ∘ K_B = I, so the joint matrix is I/3 with entropy log2 3.
    assert joint_renyi_entropy(a, b, 2.0).item() == pytest.approx(math.log2(3), abs=1e-6)
    mi = renyi_entropy(a) + renyi_entropy(b) - joint_renyi_entropy(a, b)
    assert mi.item() == pytest.approx(2 * math.log2(9 / 5) - math.log2(3), abs=1e-6)  # log2(27/25)
    # K_A ∘ K_A = K_A, so I(a; a) = S(A) exactly.
    assert (2 * renyi_entropy(a) - joint_renyi_entropy(a, a)).item() == pytest.approx(math.log2(9 / 5), abs=1e-6)


def test_frobenius_shortcut_equals_eigenvalues_for_alpha_2():
    x = torch.randn(3, 40)
    a = gaussian_gram(x) / 40
    lam = torch.linalg.eigvalsh(a.double()).clamp_min(0)
    assert torch.allclose(renyi_entropy(a, 2.0).double(), -torch.log2(lam.square().sum(-1)), atol=1e-4)


def test_neuron_with_itself_gives_its_entropy_on_separated_values():
    torch.manual_seed(0)
    bits = torch.randint(0, 2, (200,)).float()  # two well-separated values: K is (almost exactly) 0/1 blocks
    entropy = neuron_entropy(bits[:, None])[0]
    p = bits.mean().item()
    assert entropy.item() == pytest.approx(-math.log2(p * p + (1 - p) ** 2), abs=1e-4)  # λ = p, 1-p
    assert mutual_information(bits, bits).item() == pytest.approx(entropy.item(), abs=1e-4)


def test_self_information_is_maximal():
    torch.manual_seed(0)
    x = torch.randn(300)
    others = [torch.randn(300), 0.9 * x + 0.1 * torch.randn(300), x.square()]
    self_mi = mutual_information(x, x)
    assert self_mi <= neuron_entropy(x[:, None])[0] + 1e-5  # I(a; a) <= S(a)
    for y in others:
        assert mutual_information(x, y) < self_mi


def test_independent_neurons_give_near_zero():
    torch.manual_seed(0)
    x, y = torch.randn(512), torch.randn(512)
    mi = mutual_information(x, y).item()
    assert abs(mi) < 0.1
    assert abs(mi) < 0.05 * mutual_information(x, x).item()


def test_invariant_to_scaling_a_neuron():
    torch.manual_seed(0)
    x = torch.randn(128)
    y = x + 0.5 * torch.randn(128)
    ref = mutual_information(x, y)
    assert torch.allclose(mutual_information(1000.0 * x, -0.01 * y + 3.0), ref, atol=1e-4)
    assert torch.allclose(silverman_sigma(5.0 * x), 5.0 * silverman_sigma(x))
    assert silverman_sigma(x).item() == pytest.approx((4 / 3) ** 0.2 * x.std().item() * 128**-0.2, rel=1e-5)


@pytest.mark.parametrize("alpha", [2.0, 3.0])
def test_pairwise_matches_single_pairs(alpha):
    torch.manual_seed(0)
    acts = torch.randn(50, 5)
    acts[:, 1] = acts[:, 0] + 0.1 * acts[:, 1]
    full = pairwise_mutual_information(acts, alpha=alpha, chunk=2)  # (5, 5)
    pairs = torch.tensor([[0, 1], [2, 4], [3, 3]])
    some = pairwise_mutual_information(acts, pairs, alpha=alpha, chunk=2)
    for (i, j), value in zip(pairs.tolist(), some, strict=True):
        expected = mutual_information(acts[:, i], acts[:, j], alpha)
        assert value.item() == pytest.approx(expected.item(), abs=1e-3)
        assert full[i, j].item() == pytest.approx(expected.item(), abs=1e-3)
    assert torch.allclose(full, full.t(), atol=1e-4)


def test_correlation_neighbours_are_unique_ordered_pairs():
    torch.manual_seed(0)
    acts = torch.randn(100, 6)
    acts[:, 5] = -2.0 * acts[:, 2]
    pairs = correlation_neighbours(acts, k=1)
    assert (pairs[:, 0] < pairs[:, 1]).all()
    assert len(torch.unique(pairs, dim=0)) == len(pairs)
    assert [2, 5] in pairs.tolist()


def test_redundant_neurons_removes_one_of_each_duplicate_pair():
    torch.manual_seed(0)
    base = torch.randn(400, 8)
    acts = torch.cat([base, 0.5 * base[:, :4]], dim=1)  # neurons 8..11 duplicate 0..3 at half the size
    keep = redundant_neurons(acts, n_remove=4, k=2)
    assert keep.tolist() == [True] * 8 + [False] * 4  # the smaller copy of each pair goes


def test_redundant_neurons_fills_up_by_importance():
    acts = torch.randn(100, 6)
    importance = torch.tensor([5.0, 1.0, 4.0, 0.5, 3.0, 2.0])
    keep = redundant_neurons(acts, n_remove=2, threshold=1.5, importance=importance)  # nothing is that redundant
    assert keep.tolist() == [True, False, True, False, True, True]


def test_redundant_neurons_rejects_bad_counts():
    with pytest.raises(ValueError, match="n_remove must be in"):
        redundant_neurons(torch.randn(10, 4), n_remove=4)
    with pytest.raises(ValueError, match="alpha must be a positive"):
        renyi_entropy(torch.eye(2) / 2, alpha=0.0)


def test_simple_scores_on_hand_values():
    acts = torch.tensor([[1.0, -2.0], [-3.0, 0.0]])
    grads = torch.tensor([[2.0, 1.0], [1.0, 5.0]])
    assert mean_abs_activation(acts).tolist() == [2.0, 1.0]
    assert activation_taylor(acts, grads).tolist() == [2.5, 1.0]  # mean(|2|, |-3|), mean(|-2|, |0|)
    w_in = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    w_out = torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    assert weight_norm_scores(w_in, w_out).tolist() == [5.0, 2.0]
    with pytest.raises(ValueError, match="same shape"):
        activation_taylor(acts, grads[:1])


def test_kernel_width_scales_silverman_and_rejects_non_positive():
    from lightning_prune.mutual_information import _pairs_and_entropy, silverman_sigma

    acts = torch.randn(64, 6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(redundant_neurons(acts, 2), redundant_neurons(acts, 2, kernel_width=1.0))
    pairs = torch.tensor([[0, 1], [2, 3]])
    wide = _pairs_and_entropy(acts, pairs, 2.0, 64, kernel_width=3.0)[1]
    xt = acts.t()
    by_hand = torch.stack([renyi_entropy(gaussian_gram(x, 3.0 * silverman_sigma(x)) / 64) for x in xt])
    torch.testing.assert_close(wide, by_hand)
    with pytest.raises(ValueError, match="kernel_width"):
        redundant_neurons(acts, 2, kernel_width=0.0)

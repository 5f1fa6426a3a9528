"""Neuron scores for structured pruning: matrix-based Rényi mutual information and simpler criteria.

Matrix-based Rényi α-order entropy (Sanchez Giraldo, Rao & Principe, "Measures of Entropy from Data Using
Infinitely Divisible Kernels", 2015), as used for neuron redundancy in "Large Language Model Pruning"
(arXiv 2406.00030). For one neuron with N activation samples x_1..x_N:

1. Gaussian Gram matrix ``K_ij = exp(-(x_i - x_j)² / (2σ²))``, normalised ``A = K / tr(K)`` (= K / N).
2. Entropy ``S_α(A) = 1/(1-α) · log2(Σ_i λ_i(A)^α)`` in bits; α → 1 gives von Neumann ``-Σ λ log2 λ``.
3. Joint entropy of two neurons: ``S_α(A, B) = S_α(A∘B / tr(A∘B))`` (Hadamard product).
4. Mutual information ``I(a; b) = S(A) + S(B) - S(A, B)`` <= min(S(A), S(B)) (the joint entropy is at least
   each marginal one). It is about 0 for independent neurons but not guaranteed >= 0: on skewed activations
   (e.g. after GELU) a pair can score slightly below 0. ``I(a; a) = 2·S(A) - S(A∘A)`` <= S(A), with equality
   exactly when K∘K = K (well-separated discrete activations); continuous activations give I(a; a) < S(A).

α = 2 is the fast default: ``Σ λ² = ||A||_F²`` needs no eigendecomposition, so for all pairs
``Σ_ij K_a² K_b²`` is a dot product of the flattened squared Gram matrices; other α use ``eigvalsh`` in
batches.

Kernel width (Silverman's rule of thumb for a Gaussian kernel in d = 1 dimension):
``σ = γ · N^(-1/(4+d))`` with ``γ = (4/(d+2))^(1/(d+4)) · std(x) ≈ 1.06 · std(x)``. Because σ scales with the
activation's standard deviation, every quantity here is invariant to rescaling a neuron (x → c·x, c != 0).

Shapes: activations are ``(N, n)`` = (samples, neurons), as collected by forward hooks.

Examples:
    >>> acts = torch.randn(64, 16)
    >>> keep = redundant_neurons(acts, n_remove=4)
    >>> int(keep.sum())
    12
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "activation_taylor",
    "correlation_neighbours",
    "gaussian_gram",
    "joint_renyi_entropy",
    "mean_abs_activation",
    "mutual_information",
    "neuron_entropy",
    "pairwise_mutual_information",
    "redundant_neurons",
    "renyi_entropy",
    "silverman_sigma",
    "weight_norm_scores",
]

_EPS = 1e-12


def silverman_sigma(x: Tensor, d: int = 1) -> Tensor:
    """Kernel width by Silverman's rule, σ = (4/(d+2))^(1/(d+4)) · std(x) · N^(-1/(4+d)).

    Args:
        x: ``(..., N)`` samples of each variable along the last dimension.
        d: dimension of one sample (1 for a single neuron).

    Returns:
        ``(...)`` widths, clamped away from zero so a constant neuron gets an all-ones Gram matrix.
    """
    n = x.shape[-1]
    gamma = (4.0 / (d + 2)) ** (1.0 / (d + 4)) * x.float().std(dim=-1, unbiased=True)
    return (gamma * n ** (-1.0 / (4 + d))).clamp_min(_EPS)


def gaussian_gram(x: Tensor, sigma: Tensor | None = None) -> Tensor:
    """Gaussian Gram matrices ``K_ij = exp(-(x_i - x_j)² / (2σ²))`` (unnormalised, diagonal = 1).

    Args:
        x: ``(..., N)`` samples.
        sigma: ``(...)`` widths; Silverman's rule when None.

    Returns:
        ``(..., N, N)`` float32 Gram matrices.
    """
    x = x.float()
    sigma = silverman_sigma(x) if sigma is None else sigma.float()
    diff = x.unsqueeze(-1) - x.unsqueeze(-2)  # (..., N, N)
    return torch.exp(-diff.square() / (2.0 * sigma[..., None, None].square()))


def _check_alpha(alpha: float) -> float:
    if not (isinstance(alpha, (int, float)) and alpha > 0):
        raise ValueError(f"alpha must be a positive number (2 is the fast default), got {alpha!r}.")
    return float(alpha)


def renyi_entropy(a: Tensor, alpha: float = 2.0) -> Tensor:
    """Matrix-based Rényi α-entropy in bits of Gram matrices normalised to unit trace.

    Args:
        a: ``(..., N, N)`` symmetric positive semi-definite matrices with trace 1.
        alpha: order α > 0; α = 2 uses the Frobenius norm, α = 1 the von Neumann limit, others ``eigvalsh``.

    Raises:
        ValueError: if ``alpha <= 0``.
    """
    alpha = _check_alpha(alpha)
    if alpha == 2.0:
        return -torch.log2(a.square().sum(dim=(-2, -1)).clamp_min(_EPS))
    lam = torch.linalg.eigvalsh(a.double()).clamp_min(0.0)  # (..., N)
    if alpha == 1.0:
        return -(lam * torch.log2(lam.clamp_min(_EPS))).sum(-1).float()
    return (torch.log2(lam.pow(alpha).sum(-1).clamp_min(_EPS)) / (1.0 - alpha)).float()


def joint_renyi_entropy(a: Tensor, b: Tensor, alpha: float = 2.0) -> Tensor:
    """Joint entropy ``S_α(A∘B / tr(A∘B))`` in bits of two unit-trace Gram matrices ``(..., N, N)``."""
    ab = a * b
    return renyi_entropy(ab / ab.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None], alpha)


def mutual_information(x: Tensor, y: Tensor, alpha: float = 2.0) -> Tensor:
    """Matrix-based Rényi mutual information in bits between paired samples ``x, y`` of shape ``(..., N)``."""
    a, b = gaussian_gram(x), gaussian_gram(y)
    a = a / x.shape[-1]  # tr(K) = N
    b = b / y.shape[-1]
    return renyi_entropy(a, alpha) + renyi_entropy(b, alpha) - joint_renyi_entropy(a, b, alpha)


def _squared_gram_upper(x: Tensor, kernel_width: float = 1.0) -> Tensor:
    """``(n, N)`` samples → ``(n, N(N-1)/2)`` strict upper triangle of K² (the diagonal of K is all ones)."""
    n_samples = x.shape[-1]
    iu = torch.triu_indices(n_samples, n_samples, offset=1, device=x.device)
    return gaussian_gram(x, kernel_width * silverman_sigma(x)).square()[:, iu[0], iu[1]]


def _frobenius_terms(xt: Tensor, chunk: int, kernel_width: float = 1.0) -> Tensor:
    """``(n, N)`` → ``(n, N(N-1)/2)`` upper-triangle K² for all neurons, built ``chunk`` neurons at a time."""
    return torch.cat([_squared_gram_upper(xt[i : i + chunk], kernel_width) for i in range(0, xt.shape[0], chunk)])


def neuron_entropy(acts: Tensor, alpha: float = 2.0, chunk: int = 64) -> Tensor:
    """Entropy ``S_α`` in bits of every neuron.

    Args:
        acts: ``(N, n)`` activations, N samples of n neurons.
        alpha: Rényi order (α = 2 fast path).
        chunk: neurons per batch of Gram matrices (memory ``chunk · N² · 4`` bytes).
    """
    alpha = _check_alpha(alpha)
    xt = acts.t().float()  # (n, N)
    n_samples = xt.shape[1]
    out = []
    for i in range(0, xt.shape[0], chunk):
        k = gaussian_gram(xt[i : i + chunk])  # (c, N, N)
        out.append(renyi_entropy(k / n_samples, alpha))
    return torch.cat(out)


def pairwise_mutual_information(
    acts: Tensor, pairs: Tensor | None = None, alpha: float = 2.0, chunk: int = 64
) -> Tensor:
    """Mutual information in bits between pairs of neurons, batched.

    For α = 2, ``I(a; b) = log2(N² · Σ K_a²K_b² / (Σ K_a² · Σ K_b²))``: the squared Gram matrices are built
    once per neuron and each pair costs one dot product (all pairs: one matrix product per chunk).

    Args:
        acts: ``(N, n)`` activations.
        pairs: ``(P, 2)`` neuron indices; None for all pairs.
        alpha: Rényi order.
        chunk: neurons (or pairs, for α != 2) per batch.

    Returns:
        ``(P,)`` values for the given pairs, or the symmetric ``(n, n)`` matrix (diagonal = I(a; a)).
    """
    alpha = _check_alpha(alpha)
    n = acts.shape[1]
    if pairs is None and alpha == 2.0:
        xt = acts.t().float()  # (n, N)
        n_samples = xt.shape[1]
        g = _frobenius_terms(xt, chunk)  # (n, M), M = N(N-1)/2
        fa = n_samples + 2.0 * g.sum(-1)  # (n,) Σ_ij K_a²
        fab = torch.cat([n_samples + 2.0 * g[i : i + chunk] @ g.t() for i in range(0, n, chunk)])  # (n, n)
        return torch.log2(n_samples**2 * fab / (fa[:, None] * fa[None, :]))
    if pairs is None:
        pairs = torch.cartesian_prod(torch.arange(n), torch.arange(n))
        return _pairs_and_entropy(acts, pairs, alpha, chunk)[0].view(n, n)
    return _pairs_and_entropy(acts, pairs, alpha, chunk)[0]


def _pairs_and_entropy(
    acts: Tensor, pairs: Tensor, alpha: float, chunk: int, kernel_width: float = 1.0
) -> tuple[Tensor, Tensor]:
    """``(I(a; b) per pair (P,), S(a) per neuron (n,))`` in bits; Gram widths ``kernel_width`` × Silverman's."""
    xt = acts.t().float()  # (n, N)
    n_samples = xt.shape[1]
    if alpha == 2.0:
        g = _frobenius_terms(xt, chunk, kernel_width)  # (n, M)
        fa = n_samples + 2.0 * g.sum(-1)  # (n,)
        fab = torch.cat(
            [n_samples + 2.0 * (g[p[:, 0]] * g[p[:, 1]]).sum(-1) for p in pairs.split(max(chunk, 1) * 16)]
        )  # (P,)
        mi = torch.log2(n_samples**2 * fab / (fa[pairs[:, 0]] * fa[pairs[:, 1]]))
        return mi, -torch.log2(fa / n_samples**2)
    sigma = kernel_width * silverman_sigma(xt)  # (n,)
    ent = torch.cat(
        [
            renyi_entropy(gaussian_gram(xt[i : i + chunk], sigma[i : i + chunk]) / n_samples, alpha)
            for i in range(0, xt.shape[0], chunk)
        ]
    )  # (n,)
    joint = []
    for p in pairs.split(chunk):
        a = gaussian_gram(xt[p[:, 0]], sigma[p[:, 0]]) / n_samples  # (c, N, N)
        b = gaussian_gram(xt[p[:, 1]], sigma[p[:, 1]]) / n_samples
        joint.append(joint_renyi_entropy(a, b, alpha))
    return ent[pairs[:, 0]] + ent[pairs[:, 1]] - torch.cat(joint), ent


def correlation_neighbours(acts: Tensor, k: int, chunk: int = 1024) -> Tensor:
    """Candidate pairs: each neuron with its ``k`` most |Pearson|-correlated neurons, deduplicated.

    Restricting the mutual-information pass to these pairs makes it O(n·k) instead of O(n²).

    Args:
        acts: ``(N, n)`` activations.
        k: neighbours per neuron (clipped to n - 1).
        chunk: rows of the correlation matrix computed at once.

    Returns:
        ``(P, 2)`` long tensor of pairs ``i < j``, sorted.
    """
    n = acts.shape[1]
    k = min(int(k), n - 1)
    if k <= 0:
        return torch.empty(0, 2, dtype=torch.long)
    z = acts.float() - acts.float().mean(0)
    z = z / z.norm(dim=0).clamp_min(_EPS)  # (N, n) unit columns
    found = []
    for i in range(0, n, chunk):
        corr = (z[:, i : i + chunk].t() @ z).abs()  # (c, n)
        rows = torch.arange(i, min(i + chunk, n), device=z.device)
        corr[torch.arange(len(rows)), rows] = -1.0  # never pair a neuron with itself
        nbr = corr.topk(k, dim=1).indices  # (c, k)
        found.append(torch.stack([rows[:, None].expand_as(nbr), nbr], -1).reshape(-1, 2))
    pairs = torch.cat(found).sort(dim=1).values
    return torch.unique(pairs, dim=0).cpu()


def redundant_neurons(
    acts: Tensor,
    n_remove: int,
    threshold: float = 0.0,
    k: int = 8,
    alpha: float = 2.0,
    max_samples: int = 256,
    importance: Tensor | None = None,
    seed: int = 0,
    kernel_width: float = 1.0,
) -> Tensor:
    """Keep mask after removing ``n_remove`` neurons, one of each most-redundant pair first.

    Steps: (1) subsample at most ``max_samples`` rows; (2) candidate pairs from `correlation_neighbours`;
    (3) normalised mutual information ``I(a; b) / min(S(a), S(b))`` in [0, 1] per pair; (4) greedy over pairs
    in decreasing order while above ``threshold``: if neither neuron of the pair is removed yet, remove the one
    with the lower ``importance`` (ties: the higher index), until ``n_remove`` are removed; (5) if the
    redundant pairs run out first, remove the remaining lowest-importance neurons.

    Args:
        acts: ``(N, n)`` activations of one layer's neurons.
        n_remove: how many neurons to remove, 0 <= n_remove < n.
        threshold: normalised MI a pair needs to count as redundant.
        k: correlation neighbours per neuron considered as candidate pairs.
        alpha: Rényi order.
        max_samples: samples kept for the N×N Gram matrices (a fixed random subset, ``seed``).
        importance: ``(n,)`` tie-break and fill-up score, higher = keep; mean |activation| when None.
        seed: seed of the sample subset.
        kernel_width: Gram widths as a multiple of Silverman's rule (smaller: only near-identical activations
            count as similar; larger: the kernel tends to a quadratic one, nearer linear correlation).

    Returns:
        ``(n,)`` bool mask, True = keep, with exactly ``n - n_remove`` True.

    Raises:
        ValueError: if ``n_remove`` is out of range or ``acts`` is not 2-D.
    """
    if acts.dim() != 2:
        raise ValueError(f"acts must be (samples, neurons), got shape {tuple(acts.shape)}.")
    n = acts.shape[1]
    if not 0 <= n_remove < n:
        raise ValueError(f"n_remove must be in [0, {n}) for {n} neurons (at least one kept), got {n_remove}.")
    if acts.shape[0] > max_samples:
        gen = torch.Generator().manual_seed(seed)
        acts = acts[torch.randperm(acts.shape[0], generator=gen)[:max_samples].to(acts.device)]
    importance = (mean_abs_activation(acts) if importance is None else importance.float()).cpu()
    keep = torch.ones(n, dtype=torch.bool)  # the greedy loop runs on the CPU
    if n_remove == 0:
        return keep.to(acts.device)
    pairs = correlation_neighbours(acts, k)
    if not kernel_width > 0:
        raise ValueError(f"kernel_width must be a positive multiple of Silverman's width, got {kernel_width!r}.")
    mi, ent = _pairs_and_entropy(acts, pairs.to(acts.device), _check_alpha(alpha), 64, kernel_width)  # (P,), (n,)
    nmi = (mi / torch.minimum(ent[pairs[:, 0]], ent[pairs[:, 1]]).clamp_min(_EPS)).cpu()
    removed = 0
    for idx in torch.argsort(nmi, descending=True, stable=True).tolist():
        if removed == n_remove or nmi[idx] < threshold:
            break
        i, j = pairs[idx].tolist()
        if keep[i] and keep[j]:
            keep[i if importance[i] < importance[j] else j] = False
            removed += 1
    if removed < n_remove:
        order = torch.argsort(torch.where(keep, importance, math.inf), stable=True)
        keep[order[: n_remove - removed]] = False
    return keep.to(acts.device)


def mean_abs_activation(acts: Tensor) -> Tensor:
    """Mean |activation| per neuron: ``(N, n)`` → ``(n,)``."""
    return acts.float().abs().mean(0)


def activation_taylor(acts: Tensor, grads: Tensor) -> Tensor:
    """First-order Taylor score per neuron, the mean over samples of ``|a · ∂L/∂a|`` (Molchanov et al. 2017).

    Args:
        acts: ``(N, n)`` activations.
        grads: ``(N, n)`` gradients of the loss with respect to those activations.

    Raises:
        ValueError: if the shapes differ.
    """
    if acts.shape != grads.shape:
        raise ValueError(f"acts and grads must have the same shape, got {tuple(acts.shape)} and {tuple(grads.shape)}.")
    return (acts.float() * grads.float()).abs().mean(0)


def weight_norm_scores(w_in: Tensor, w_out: Tensor) -> Tensor:
    """Weight-norm score per neuron: ‖incoming weights‖₂ · ‖outgoing weights‖₂.

    Args:
        w_in: ``(n, d_in)`` one row per neuron (several input projections, e.g. gate and up, concatenated).
        w_out: ``(n, d_out)`` the output projection's weights leaving each neuron.

    Raises:
        ValueError: if the neuron counts differ.
    """
    if w_in.shape[0] != w_out.shape[0]:
        raise ValueError(f"w_in and w_out need one row per neuron, got {w_in.shape[0]} and {w_out.shape[0]} rows.")
    return w_in.float().norm(dim=1) * w_out.float().norm(dim=1)

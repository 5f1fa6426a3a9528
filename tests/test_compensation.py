"""Neurons redundant given the kept set, and refitting the kept neurons' outgoing weights."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from lightning_prune.compensation import conditional_redundancy, outgoing_weights, refit_outputs


def _residual_variance(acts: torch.Tensor, i: int, others: list[int]) -> float:
    """Variance of acts[:, i] left after least squares on the other columns and a constant (by hand)."""
    x = torch.cat([acts[:, others].double(), torch.ones(acts.shape[0], 1, dtype=torch.float64)], 1)
    y = acts[:, i].double()
    coef = torch.linalg.lstsq(x, y[:, None]).solution
    return float((y - (x @ coef).squeeze(1)).square().sum() / (acts.shape[0] - 1))


@pytest.mark.parametrize("weighted", [False, True])
def test_removal_order_matches_regressions_by_hand(weighted):
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(400, 4, generator=gen)
    mix = torch.randn(4, 7, generator=gen)
    acts = base @ mix + 0.3 * torch.randn(400, 7, generator=gen)  # correlated neurons
    w_out = torch.randn(7, 3, generator=gen) if weighted else None
    keep = conditional_redundancy(acts, 4, w_out, ridge=0.0)
    kept, removed = list(range(7)), []
    for _ in range(4):  # greedy by hand: the cheapest neuron given the others still kept
        scores = {}
        for i in kept:
            r = _residual_variance(acts, i, [j for j in kept if j != i])
            var = float(acts[:, i].double().var())
            scores[i] = float(w_out[i].double().square().sum()) * r if weighted else r / var
        worst = min(scores, key=scores.get)
        kept.remove(worst)
        removed.append(worst)
    assert sorted(removed) == sorted((~keep).nonzero().squeeze(1).tolist())
    assert int(keep.sum()) == 3


def test_duplicate_goes_and_silent_output_goes_first():
    gen = torch.Generator().manual_seed(1)
    acts = torch.randn(300, 5, generator=gen)
    acts[:, 3] = 2.0 * acts[:, 1] + 0.5  # a scaled copy: fully predictable from the kept set
    keep = conditional_redundancy(acts, 1)
    assert not (keep[1] and keep[3]) and int(keep.sum()) == 4
    w_out = torch.ones(5, 2)
    w_out[4] = 0.0  # its activation is informative but reaches nothing
    assert not conditional_redundancy(acts[:, [0, 2, 4]], 1, w_out[[0, 2, 4]])[2]


@pytest.mark.parametrize("dead", [0.0, 3.0])  # never active, or a constant
def test_a_neuron_whose_activation_never_varies_goes_first_without_outgoing_weights(dead):
    gen = torch.Generator().manual_seed(3)
    acts = torch.randn(400, 6, generator=gen)
    acts[:, 2] = dead  # carries nothing a bias cannot (the live neurons are independent: none predicts another)
    keep = conditional_redundancy(acts, 1)
    assert keep.tolist() == [True, True, False, True, True, True]
    assert not conditional_redundancy(acts, 2)[2]


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_refit_reproduces_output_when_removed_neuron_is_predictable(kind):
    gen = torch.Generator().manual_seed(2)
    acts = torch.randn(256, 6, generator=gen)
    acts[:, 5] = acts[:, 0] - 0.5 * acts[:, 2] + 1.0  # affine in kept neurons
    module = torch.nn.Linear(6, 4) if kind == "linear" else Conv1D(4, 6)
    torch.nn.init.normal_(module.weight, generator=gen)
    torch.nn.init.normal_(module.bias, generator=gen)
    before = module(acts)
    keep = torch.tensor([True] * 5 + [False])
    refit_outputs(module, acts, keep, ridge=0.0)
    outgoing_weights(module).data[5] = 0.0  # removed
    assert torch.allclose(module(acts), before, atol=1e-4)


def test_bias_only_keeps_the_mean_output():
    gen = torch.Generator().manual_seed(3)
    acts = torch.randn(200, 4, generator=gen) + 2.0
    module = torch.nn.Linear(4, 3)
    before = module(acts).mean(0)
    keep = torch.tensor([True, False, True, False])
    refit_outputs(module, acts, keep, bias_only=True)
    after = torch.nn.functional.linear(acts[:, keep], module.weight[:, keep], module.bias).mean(0)
    assert torch.allclose(after, before, atol=1e-5)


def test_clear_errors():
    acts = torch.randn(50, 4)
    with pytest.raises(ValueError, match="n_remove"):
        conditional_redundancy(acts, 4)
    with pytest.raises(ValueError, match="one row per neuron"):
        conditional_redundancy(acts, 1, torch.ones(3, 2))
    bad = acts.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        conditional_redundancy(bad, 1)
    with pytest.raises(ValueError, match="bias_only"):
        refit_outputs(torch.nn.Linear(4, 2, bias=False), acts, torch.tensor([True, False, True, True]), bias_only=True)
    with pytest.raises(ValueError, match="must match"):
        refit_outputs(torch.nn.Linear(4, 2), acts, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="every neuron"):
        refit_outputs(torch.nn.Linear(4, 2), acts, torch.zeros(4, dtype=torch.bool))


def test_refit_ffn_keeps_all_when_nothing_removed_and_lowers_block_error():
    from lightning_prune.calibration import collect_activations
    from lightning_prune.compensation import refit_ffn_
    from lightning_prune.lm import gpt2
    from lightning_prune.neurons import calibrated_neuron_masks
    from lightning_prune.structured import ffn_output_modules, mask_neurons_

    torch.manual_seed(0)
    model = gpt2(32, 2, 16, 2, 16).eval()
    batches = [torch.randint(0, 32, (4, 16), generator=torch.Generator().manual_seed(i)) for i in range(4)]
    with torch.no_grad():
        before = model(batches[0]).logits
    refit_ffn_(model, batches, [torch.ones(64, dtype=torch.bool)] * 2)
    with torch.no_grad():
        torch.testing.assert_close(model(batches[0]).logits, before, atol=1e-4, rtol=1e-4)

    masks = calibrated_neuron_masks(model, batches, 0.5, "redundancy")
    assert [int(m.sum()) for m in masks] == [32, 32]
    modules = ffn_output_modules(model)
    acts = collect_activations(modules, model, batches)
    plain = [m(a * k).detach() for m, a, k in zip(modules.values(), acts.values(), masks, strict=True)]
    target = [m(a).detach() for m, a in zip(modules.values(), acts.values(), strict=True)]
    refit_ffn_(model, batches, masks)
    mask_neurons_(model, masks)
    refitted = [m(a * k).detach() for m, a, k in zip(modules.values(), acts.values(), masks, strict=True)]
    for y, p, r in zip(target, plain, refitted, strict=True):
        assert (r - y).norm() < (p - y).norm()
    with pytest.raises(ValueError, match="one keep mask per"):
        refit_ffn_(model, batches, masks[:1])


_SHARDED = """
import os, torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor
from lightning_prune.compensation import conditional_redundancy, refit_outputs
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["PORT"])
dist.init_process_group("gloo", rank=0, world_size=1)
mesh = init_device_mesh("cpu", (1,))
lin = torch.nn.Linear(8, 4)
lin.weight = torch.nn.Parameter(distribute_tensor(lin.weight.detach(), mesh, [Shard(0)]))
acts, keep = torch.randn(64, 8), torch.arange(8) < 4
for call in (lambda: refit_outputs(lin, acts, keep), lambda: conditional_redundancy(acts, 2, lin.weight.t())):
    try:
        call()
    except ValueError as e:
        assert "sharded" in str(e), e
    else:
        raise SystemExit("no error on a sharded weight")
dist.destroy_process_group()
print("ok")
"""


def test_sharded_weights_are_refused_not_refitted_shard_by_shard():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "PORT": port, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _SHARDED], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]

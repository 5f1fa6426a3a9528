import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from lightning_prune.calibration import (
    InputNormStats,
    collect_activations,
    collect_input_norms,
    collect_taylor,
    forward_hooks,
    linear_modules,
    wanda_mask,
    wanda_masks,
)


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


class Boom(nn.Module):
    """A linear layer followed by a failure, to check hooks are removed on an exception."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.lin(x)
        raise RuntimeError("boom")


def test_forward_hooks_removed_after_use():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    seen = []
    with forward_hooks({"0": model[0], "2": model[2]}, lambda n, m, i, o: seen.append(n)) as handles:
        assert len(handles) == 2 and _hook_count(model) == 2
        model(torch.randn(1, 3))
    assert seen == ["0", "2"]
    assert _hook_count(model) == 0
    acts = collect_activations({"2": model[2]}, model, [torch.randn(5, 3)])
    assert acts["2"].shape == (5, 4)
    assert _hook_count(model) == 0


def test_forward_hooks_removed_on_exception():
    model = Boom()
    with pytest.raises(RuntimeError, match="boom"):
        collect_activations({"lin": model.lin}, model, [torch.randn(2, 3)])
    assert _hook_count(model) == 0
    with pytest.raises(RuntimeError, match="boom"):
        collect_input_norms({"lin": model.lin}, model, [torch.randn(2, 3)])
    assert _hook_count(model) == 0
    with pytest.raises(ValueError, match="which must be"):
        collect_activations({"lin": model.lin}, model, [], which="weights")


def test_collect_activations_flattens_tokens_and_caps():
    lin = nn.Linear(3, 2)
    x = torch.randn(2, 5, 3)  # (B, T, C)
    acts = collect_activations({"lin": lin}, lin, [x, x], which="output", max_tokens=12)
    assert acts["lin"].shape == (12, 2)
    assert torch.allclose(acts["lin"][:10], lin(x).reshape(10, 2).detach())


def test_input_norm_stats_against_hand_computed_value():
    stats = InputNormStats(3)
    stats.add_batch(torch.tensor([[1.0, 2.0, 0.0], [3.0, -1.0, 2.0]]))
    stats.add_batch(torch.tensor([[[0.0, 2.0, -2.0]]]))  # (B, T, C): one more token
    # Σ x² per feature: 1+9+0 = 10, 4+1+4 = 9, 0+4+4 = 8; 3 tokens.
    assert stats.sq_sum.tolist() == [10.0, 9.0, 8.0]
    assert stats.count == 3
    assert torch.allclose(stats.norm(), torch.tensor([10.0, 9.0, 8.0]).sqrt())
    assert torch.allclose(stats.rms(), (torch.tensor([10.0, 9.0, 8.0]) / 3).sqrt())

    restored = InputNormStats(3)
    restored.load_state_dict(stats.state_dict())
    restored.add_batch(torch.tensor([[1.0, 0.0, 1.0]]))
    assert restored.sq_sum.tolist() == [11.0, 9.0, 9.0] and restored.count == 4
    assert stats.sq_sum.tolist() == [10.0, 9.0, 8.0]  # the state was copied, not shared
    with pytest.raises(ValueError, match="features"):
        InputNormStats(2).load_state_dict(stats.state_dict())
    with pytest.raises(ValueError, match="expected inputs with 3 features"):
        stats.add_batch(torch.ones(2, 4))


def test_wanda_mask_exact_on_hand_set_weight():
    weight = torch.tensor([[1.0, -4.0, 2.0, 0.5], [3.0, 1.0, -1.0, 2.0]])
    norms = torch.tensor([1.0, 0.25, 2.0, 4.0])
    # scores row 0: 1, 1, 4, 2 (tie: the lower index goes first); row 1: 3, 0.25, 2, 8
    mask = wanda_mask(weight, norms, 0.5)
    assert mask.tolist() == [[False, False, True, True], [True, False, False, True]]
    assert wanda_mask(weight, norms, 0.25).tolist() == [[False, True, True, True], [True, False, True, True]]
    with pytest.raises(ValueError, match="sparsity must be"):
        wanda_mask(weight, norms, 1.0)


def test_wanda_masks_one_shot_matches_hand_norms():
    lin = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -4.0, 2.0, 0.5], [3.0, 1.0, -1.0, 2.0]]))
    model = nn.Sequential(lin)
    x = torch.tensor([[1.0, 0.25, 2.0, 4.0]])  # one token: ‖X_j‖ = |x_j|
    masks = wanda_masks(model, [x], 0.5)
    assert masks["0.weight"].tolist() == [[False, False, True, True], [True, False, False, True]]


def test_wanda_masks_on_gpt2_conv1d_layout():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=16)).eval()
    masks = wanda_masks(model, [torch.randint(0, 32, (2, 8))], 0.5)
    assert "lm_head.weight" not in masks and set(masks) == {f"{n}.weight" for n in linear_modules(model)}
    fc = masks["transformer.h.0.mlp.c_fc.weight"]
    assert fc.shape == model.transformer.h[0].mlp.c_fc.weight.shape  # (in, out) like the Conv1D weight
    assert (fc.sum(0) == 8).all()  # each output keeps half of its 16 inputs


def test_collect_taylor_matches_autograd():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    batches = [torch.randn(5, 3), torch.randn(2, 3)]
    scores = collect_taylor({"2": model[2]}, lambda b: model(b).square().sum(), batches)
    total = torch.zeros(4)
    for b in batches:
        a = model[1](model[0](b)).detach().requires_grad_(True)
        (g,) = torch.autograd.grad(model[2](a).square().sum(), a)
        total += (a * g).abs().sum(0)
    assert torch.allclose(scores["2"], total / 7, atol=1e-6)
    assert _hook_count(model) == 0

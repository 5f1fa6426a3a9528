"""MaskRegistry: the union of every writer's masks, held through optimizer steps and enforced exactly on demand."""

import pytest
import torch
from torch import nn

from lightning_prune._registry import MaskRegistry, registry_of

T, F = True, False


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))


def test_the_union_of_writers_prunes_what_any_writer_prunes_and_forgetting_one_frees_its_entries():
    model = _model()
    registry = registry_of(model)
    assert registry is registry_of(model) and registry is not registry_of(_model())  # one per model object
    registry.resolve(model)
    registry.write("a", {"0.weight": torch.tensor([[T, F], [T, T]])})
    assert registry.nbytes() == 4  # one writer: its mask is the union, one byte per entry, no copy
    registry.write("b", {"0.weight": torch.tensor([[T, T], [F, T]]), "1.weight": torch.tensor([[F, T]])})
    assert registry.keep["0.weight"].tolist() == [[T, F], [F, T]]
    assert registry.pruned_count(["0.weight", "1.weight"]) == 3
    registry.forget("b")
    assert registry.keep["0.weight"].tolist() == [[T, F], [T, T]] and "1.weight" not in registry.keep


def test_masks_that_do_not_fit_are_rejected():
    model = _model()
    registry = MaskRegistry()
    registry.resolve(model)
    with pytest.raises(ValueError, match="which the model lacks"):
        registry.write("a", {"2.weight": torch.ones(1, 2, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"shaped \(2, 1\), its parameter here \(2, 2\)"):
        registry.write("a", {"0.weight": torch.ones(2, 1, dtype=torch.bool)})


def test_held_through_momentum_and_weight_decay_and_enforced_exactly_over_nan():
    model = _model()
    registry = MaskRegistry()
    registry.resolve(model)
    keep = torch.tensor([[T, F], [F, T]])
    registry.write("a", {"0.weight": keep})
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    registry.attach([opt])
    registry.attach([opt])  # the same optimizers: no second set of hooks
    assert len(registry._handles) == 2
    registry.enforce_([opt])
    w = model[0].weight
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 2)).sum().backward()
        opt.step()
        assert torch.all(w[~keep] == 0) and torch.all(w[keep] != 0)
        assert torch.all(opt.state[w]["momentum_buffer"][~keep] == 0)  # gradients were masked before the step
    shadow = {"0.weight": torch.full((2, 2), float("nan"))}
    with torch.no_grad():
        w.fill_(float("nan"))
    registry.enforce_([opt], [shadow])
    assert torch.all(w[~keep] == 0) and shadow["0.weight"][~keep].tolist() == [0.0, 0.0]
    registry.detach()
    assert not registry._handles and not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks


def test_gradients_are_masked_once_per_backward():
    model = _model()
    registry = MaskRegistry()
    registry.resolve(model)
    keep = torch.tensor([[T, F], [F, T]])
    registry.write("a", {"0.weight": keep})
    model(torch.randn(4, 2)).sum().backward()
    grad = model[0].weight.grad
    registry.mask_grads_()  # as the callbacks do before clipping
    version = grad._version
    registry.mask_grads_()  # as the step pre-hook does: nothing left to do
    assert grad._version == version and torch.all(grad[~keep] == 0)
    model(torch.randn(4, 2)).sum().backward()  # accumulates into the same tensor
    assert torch.any(grad[~keep] != 0)
    registry.mask_grads_()
    assert torch.all(grad[~keep] == 0)


def test_masks_of_a_reshaped_parameter_are_dropped_with_a_warning_not_an_error():
    model = _model()
    registry = MaskRegistry()
    registry.resolve(model)
    registry.write("a", {"0.weight": torch.tensor([[T, F], [T, T]]), "1.weight": torch.tensor([[F, T]])})
    model[0] = nn.Linear(2, 3)  # replaced with another shape (as a structured shrink would without the registry)
    with pytest.warns(UserWarning, match=r"\['0\.weight'\] no longer fit"):
        registry.resolve(model)
    assert set(registry.keep) == {"1.weight"} and "0.weight" not in registry.writers["a"]


def test_a_cut_follows_the_shrink_of_a_parameter():
    model = _model()
    registry = MaskRegistry()
    registry.resolve(model)
    registry.write("a", {"0.weight": torch.tensor([[T, F], [F, T]])})
    registry.cut_("0.weight", 0, torch.tensor([False, True]))  # row 0 removed
    assert registry.keep["0.weight"].tolist() == [[F, T]] and registry.writers["a"]["0.weight"].shape == (1, 2)

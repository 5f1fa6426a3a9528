"""The pure core of structured pruning to a size: targets, the size model against real shrinks, the allocation on
hand-made scores, the unit statistics against closed forms, and the exact shrink of masked hidden features."""

import copy
from dataclasses import replace

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

from lightning_prune.structured import SizeModel, SizeTarget, Units, allocate, shrink_units_, shrinkable
from lightning_prune.structured import stats as S
from lightning_prune.structured.allocate import fewest_units
from lightning_prune.structured.config import config_accepts
from lightning_prune.structured.cuts import mask_hidden_


def gpt2(**kw):
    cfg = dict(n_layer=2, n_embd=8, n_head=2, n_inner=8, vocab_size=16, n_positions=8, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(GPT2Config(**{**cfg, **kw}))


def llama(**kw):
    cfg = dict(num_hidden_layers=2, hidden_size=32, intermediate_size=16, num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(LlamaConfig(**{**cfg, "vocab_size": 32, "max_position_embeddings": 16, **kw}))


def mixtral():
    cfg = dict(num_hidden_layers=2, hidden_size=16, intermediate_size=8, num_attention_heads=4, num_key_value_heads=2)
    return MixtralForCausalLM(
        MixtralConfig(**cfg, vocab_size=32, max_position_embeddings=16, num_local_experts=4, num_experts_per_tok=2)
    )


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_size_targets_resolve_and_refuse_bad_values():
    assert SizeTarget(params=400).goal(1000, 9) == 400.0
    assert SizeTarget(keep=0.25).goal(1000, 9) == 250.0
    assert SizeTarget(flops=0.5, seq=8).goal(1000, 9) == 4.5 and SizeTarget(flops=0.5).metric == "flops"
    assert SizeTarget.of(0.5) == SizeTarget(keep=0.5) and SizeTarget.of(7) == SizeTarget(params=7)
    with pytest.raises(ValueError, match="exactly one of params"):
        SizeTarget(params=10, keep=0.5)
    with pytest.raises(ValueError, match="exactly one of params"):
        SizeTarget()
    with pytest.raises(ValueError, match=r"fraction of the dense model to keep, in \(0, 1\), got 1.5"):
        SizeTarget(keep=1.5)
    with pytest.raises(ValueError, match="not below the model's 1,000"):
        SizeTarget(params=1000).goal(1000, 9)
    with pytest.raises(ValueError, match="a SizeTarget, a float"):
        SizeTarget.of("half")


@pytest.mark.parametrize("build", [gpt2, llama, mixtral])
def test_the_size_model_counts_what_the_shrink_leaves(build):
    torch.manual_seed(0)
    model = build()
    size = SizeModel.from_model(model, seq=8)
    assert size.params(size.full) == n_params(model)
    dims = shrinkable(model)
    units = Units.full(model, dims)
    for d in dims:  # remove a few units of every dimension, the same count per block, whole groups
        masks = [getattr(units, d)] if d in ("layers", "hidden") else getattr(units, d)
        for m in masks:
            m[: 2 if d == "heads" else max(1, m.numel() // 4)] = False
    small = shrink_units_(copy.deepcopy(model), units, masked=False)
    counts = size.counts(units)
    assert size.params(counts) == n_params(small)
    if build is llama:  # FLOPs per token by hand: 2 per weight entry of every Linear, 4·seq·heads·head_dim per block
        linear = sum(m.weight.numel() for m in small.modules() if isinstance(m, torch.nn.Linear))
        blocks = small.config.num_hidden_layers
        attention = 4 * 8 * small.config.num_attention_heads * small.config.head_dim * blocks
        assert size.flops(counts) == 2 * linear + attention


def test_allocation_removes_lowest_importance_per_parameter_across_dimensions():
    model = gpt2()  # per block: 464 parameters; one neuron in every block owns 2 × (8 + 1 + 8) = 34
    size, units = SizeModel.from_model(model), Units.full(model, ("neurons", "layers"))
    full = size.params(size.full)
    neurons = [torch.arange(8.0), torch.arange(8.0) + 0.5]
    # neuron j: (j + j + 0.5) / 34 per parameter; a block: 100 / 464
    out = allocate(size, units, {"neurons": neurons, "layers": torch.tensor([100.0, 100.0])}, full - 68)
    assert [m.tolist() for m in out.neurons] == [[False, False] + [True] * 6] * 2 and out.layers.all()
    assert units.neurons[0].all()  # the input is not changed
    out = allocate(size, units, {"neurons": neurons, "layers": torch.tensor([1e-3, 5.0])}, full - 464)
    assert out.layers.tolist() == [False, True] and all(m.all() for m in out.neurons)
    # planned toward the final goal: the cheap block goes first even when a neuron would reach the stop
    early = {"neurons": neurons, "layers": torch.tensor([1e-3, 5.0])}
    assert allocate(size, units, early, full - 464, stop_at=full - 34).layers.tolist() == [False, True]
    # removed units stay removed: a second allocation starts from the first
    again = allocate(size, out, {"neurons": neurons, "layers": torch.tensor([9.0, 9.0])}, full - 464 - 17)
    assert again.layers.tolist() == [False, True] and [int(m.sum()) for m in again.neurons] == [7, 7]
    # shares: block 0 holds 0.1 / 2 of the layer importance for half of the layer parameters (ratio 0.1); every
    # neuron 1/8 for 1/8 (ratio 1)
    shares = {"neurons": [torch.ones(8), torch.ones(8)], "layers": torch.tensor([0.1, 1.9])}
    out = allocate(size, units, shares, full - 464, comparable=False)
    assert out.layers.tolist() == [False, True] and all(m.all() for m in out.neurons)


def test_allocation_lands_within_tolerance_or_closest():
    model = gpt2()
    size, units = SizeModel.from_model(model), Units.full(model, ("layers",))
    full, scores = size.params(size.full), {"layers": torch.tensor([2.0, 1.0])}
    closer = allocate(size, units, scores, full - 0.6 * 464)  # 0.4·464 past the goal beats 0.6·464 above it
    assert closer.layers.tolist() == [True, False]
    assert allocate(size, units, scores, full - 0.4 * 464).layers.all()  # 0.6·464 past it does not beat 0.4·464


def test_allocation_takes_the_steps_the_config_accepts():
    model = llama()  # 4 heads: hidden_size must stay a multiple of the head count
    size, units = SizeModel.from_model(model), Units.full(model, ("hidden",))
    scores = {"hidden": torch.arange(32.0).flip(0)}  # feature 31 is the least important
    one = size.params(size.full) - size.params(replace(size.full, hidden=31))  # the parameters of one feature
    out = allocate(size, units, scores, size.params(size.full) - 3 * one, accepts=config_accepts(model))  # 31 refused
    assert (~out.hidden).nonzero().flatten().tolist() == [28, 29, 30, 31]
    floor = fewest_units(SizeModel.from_model(model), Units.full(model, ("heads", "layers")), config_accepts(model))
    assert [int(m.sum()) for m in floor.heads] == [2, 2] and int(floor.layers.sum()) == 1


def test_unit_statistics_against_closed_forms():
    stats = S.UnitStats({"heads": [2], "layers": [1]}, decay=0.5)
    out = torch.tensor([[3.0, 4.0, 0.0, 1.0], [0.0, 0.0, 6.0, 8.0]])  # 2 tokens, 2 heads of 2 features
    stats.add("heads", 0, S.head_activation(out, 2))  # norms: token 1 (5, 1), token 2 (0, 10)
    assert stats.values["heads"][0].tolist() == [2.5, 5.5]
    stats.add("heads", 0, torch.tensor([0.5, 1.5]))
    assert stats.values["heads"][0].tolist() == [1.5, 3.5]  # 0.5·old + 0.5·new
    grad = torch.tensor([[1.0, -1.0, 2.0, 0.0], [1.0, 1.0, 0.5, -1.0]])
    # gate gradients, Σ over tokens and the head's features: head 0 (3 - 4) + (0 + 0); head 1 (0 + 0) + (3 - 8)
    assert S.head_taylor(out, grad, 2).tolist() == [-1.0, -5.0]
    x, y = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    assert S.layer_activation(x, y).tolist() == [1.0]  # orthogonal: 1 - cos = 1
    assert S.layer_taylor(y - x, torch.tensor([[3.0, 1.0]])).tolist() == [-1.0]  # (-1)·3 + 2·1
    w, g, idx = (
        torch.tensor([[0.5, 0.5], [1.0, 0.0]]),
        torch.tensor([[2.0, -4.0], [1.0, 1.0]]),
        torch.tensor([[0, 2], [2, 1]]),
    )
    assert S.expert_taylor(w, g, idx, 3).tolist() == [1.0, 0.0, -1.0]  # expert 2: 0.5·(-4) + 1·1
    assert S.neuron_taylor(torch.tensor([[2.0, -1.0]]), torch.tensor([[-3.0, 1.0]])).tolist() == [-6.0, -1.0]
    stats.add("layers", 0, torch.tensor([float("nan")]))
    assert int(stats.skipped) == 1 and stats.ready() == ["heads"]


def test_staged_gate_gradients_commit_as_half_tokens_times_their_square():
    stats = S.UnitStats({"hidden": [2], "layers": [1]}, decay=0.5, fisher=True)
    stats.stage("hidden", 0, torch.tensor([1.0, -2.0]), tokens=3)  # one norm's part of the pass
    stats.stage("hidden", 0, torch.tensor([1.0, 1.0]), tokens=3)  # another norm's: G = (2, -1)
    assert stats.values["hidden"][0].tolist() == [0.0, 0.0] and stats.ready() == []  # nothing until the commit
    stats.commit()
    assert stats.values["hidden"][0].tolist() == [6.0, 1.5]  # ½·3·(4, 1)
    stats.stage("hidden", 0, torch.tensor([0.0, 1.0]), tokens=2)
    stats.stage("layers", 0, torch.tensor([3.0]))  # tokens 0: committed as it is
    state = stats.state_dict()  # commits the staged pass first
    assert stats.values["hidden"][0].tolist() == [3.0, 1.25]  # 0.5·(6, 1.5) + 0.5·½·2·(0, 1)
    assert stats.values["layers"][0].tolist() == [3.0] and state["values"]["hidden"][0].tolist() == [3.0, 1.25]


def test_a_masked_hidden_feature_shrinks_to_the_same_outputs():
    torch.manual_seed(0)
    model = llama().eval()
    units = Units.full(model, ("hidden",))
    units.hidden[[1, 5, 9, 30]] = False
    ids = torch.randint(0, 32, (2, 8))
    with torch.no_grad():
        mask_hidden_(model, units.hidden)
        masked = model(input_ids=ids).logits
        small = shrink_units_(model, units)
        assert small.config.hidden_size == 28
        torch.testing.assert_close(small(input_ids=ids).logits, masked, atol=1e-4, rtol=1e-4)


def test_units_combine_and_report_what_was_removed_where():
    model = gpt2()
    a, b = Units.full(model, ("neurons", "layers")), Units.full(model, ("neurons",))
    a.layers[1] = False
    a.neurons[0][3] = b.neurons[0][5] = b.neurons[1][5] = False
    both = a & b
    assert (~both.neurons[0]).nonzero().flatten().tolist() == [3, 5] and both.layers.tolist() == [True, False]
    report = both.report()
    assert report["layers"] == {"total": 2, "kept": 1, "removed": 1, "removed_indices": [1]}
    assert report["neurons"]["kept_per_layer"] == [6, 7] and report["neurons"]["removed_per_layer"][0] == [3, 5]


def test_the_registry_carries_published_units_to_the_export_until_the_writer_is_forgotten():
    from lightning_prune._registry import registry_of
    from lightning_prune.callbacks.export import published_units

    model = gpt2()
    registry = registry_of(model)
    registry.publish("a", {"prefix": "model", "layers": torch.tensor([True, False])})
    registry.publish("b", {"prefix": "model", "neurons": [torch.ones(8, dtype=torch.bool)] * 2})
    registry.publish("c", {"prefix": "teacher", "layers": torch.tensor([False, True])})
    with pytest.raises(ValueError, match="units need a 'prefix' and only the dimensions"):
        registry.publish("a", {"layers": torch.tensor([True, True])})
    with pytest.raises(ValueError, match="got \\['prefix', 'width'\\]"):
        registry.publish("a", {"prefix": "", "width": torch.tensor([True])})
    found = published_units(registry.units, "model")  # writers a and b, combined; c's model is elsewhere
    assert list(found) == [""] and found[""].layers.tolist() == [True, False] and found[""].neurons[0].all()
    assert list(published_units(registry.units, "")) == ["model", "teacher"]
    registry.forget("a")
    assert set(registry.units) == {"b", "c"} and published_units(registry.units, "model")[""].layers is None


def test_a_flops_target_is_allocated_per_flop_and_reached_within_tolerance():
    torch.manual_seed(0)
    model = llama(intermediate_size=64)
    size = SizeModel.from_model(model, seq=16)
    target = SizeTarget(flops=0.6, seq=16)
    goal = target.goal(size.params(size.full), size.flops(size.full))
    units = Units.full(model, shrinkable(model))
    scores = {
        "neurons": [torch.rand(64) for _ in range(2)],
        "heads": [torch.rand(4) for _ in range(2)],
        "layers": torch.rand(2),
        "hidden": torch.rand(32),
    }
    out = allocate(size, units, scores, goal, target.metric, accepts=config_accepts(model))
    flops = size.flops(size.counts(out))
    assert goal * 0.99 <= flops <= goal
    small = shrink_units_(copy.deepcopy(model), out, masked=False)
    linear = sum(m.weight.numel() for m in small.modules() if isinstance(m, torch.nn.Linear))
    attention = 4 * 16 * small.config.num_attention_heads * small.config.head_dim * small.config.num_hidden_layers
    assert flops == 2 * linear + attention

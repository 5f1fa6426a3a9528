"""Importance in units of the loss: the Taylor statistic of every dimension against gate gradients from autograd on a
tiny model, the measured candidate removals (equal sizes, exact restore, the loss on held inputs), and the
allocation taking the dimension whose removal was measured to cost the least loss per parameter."""

import lightning.pytorch as pl
import pytest
import torch
from helpers import trainer
from test_structure import _loader
from test_structure_core import gpt2, llama

from lightning_prune import AtSteps, SizeTarget, StructuredPruning
from lightning_prune.callbacks import structure as structure_module
from lightning_prune.lm import CausalLM
from lightning_prune.structured import SizeModel, Units, allocate
from lightning_prune.structured.ablation import HeldInputs, chunk_size, lm_loss, probes, rates, zeroed
from lightning_prune.structured.layout import block_layouts, blocks_of
from lightning_prune.structured.observe import hidden_norms, observe, stat_sizes
from lightning_prune.structured.stats import UnitStats

DIMS = ("neurons", "heads", "layers", "hidden")


def _gate_gradients(model, ids):
    """∂L/∂s of a gate s = 1 on every unit's output, by autograd: per neuron and head of every block, per block
    (its output x + s·(y − x)), per residual feature (one gate on that feature in every norm's output)."""
    layouts = block_layouts(model)
    gates = {
        "neurons": [torch.ones(lay.n_neurons, requires_grad=True) for lay in layouts],
        "heads": [torch.ones(lay.n_heads, requires_grad=True) for lay in layouts],
        "layers": [torch.ones(1, requires_grad=True) for _ in layouts],
        "hidden": [torch.ones(model.config.hidden_size, requires_grad=True)],
    }
    handles = []
    for lay, s_n, s_h in zip(layouts, gates["neurons"], gates["heads"]):
        handles.append(model.get_submodule(lay.ffn_out).register_forward_pre_hook(lambda m, a, s=s_n: (a[0] * s,)))
        split = lambda a, s=s_h, h=lay.n_heads: ((a[0].unflatten(-1, (h, -1)) * s[:, None]).flatten(-2),)  # noqa: E731
        handles.append(model.get_submodule(lay.attn_out).register_forward_pre_hook(lambda m, a, f=split: f(a)))
    for block, s_l in zip(blocks_of(model), gates["layers"]):
        handles.append(block.register_forward_hook(lambda m, a, out, s=s_l: a[0] + s * (out - a[0])))
    for name in hidden_norms(model):
        handles.append(model.get_submodule(name).register_forward_hook(lambda m, a, out: out * gates["hidden"][0]))
    model(input_ids=ids, labels=ids).loss.backward()
    for h in handles:
        h.remove()
    return {d: [s.grad.clone() for s in v] for d, v in gates.items()}


def test_taylor_statistics_are_half_tokens_times_the_squared_gate_gradient_in_every_dimension():
    torch.manual_seed(0)
    model = llama()
    ids = torch.randint(0, 32, (2, 8))  # 16 tokens
    expected = {d: [0.5 * 16 * g.square() for g in v] for d, v in _gate_gradients(model, ids).items()}
    model.zero_grad()
    stats = UnitStats(stat_sizes(model, DIMS), decay=0.5, fisher=True)
    handles = observe(model, stats, DIMS, "taylor")
    model(input_ids=ids, labels=ids).loss.backward()
    model(input_ids=ids, labels=ids).loss.backward()  # the second pass commits the first
    for h in handles:
        h.remove()
    for d in DIMS:
        for got, want in zip(stats.values[d], expected[d], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-9)
    assert all(v.abs().sum() > 0 for v in expected["neurons"] + expected["layers"])
    stats.commit()  # the second pass, the same batch: the average stays
    torch.testing.assert_close(stats.values["hidden"][0], expected["hidden"][0], rtol=1e-4, atol=1e-9)


def test_probes_are_equal_removals_and_every_block_alone():
    model = gpt2(n_inner=32)  # per block 872 parameters; a neuron in every block 2 × (8 + 1 + 8) = 34
    size, units = SizeModel.from_model(model), Units.full(model, ("neurons", "layers"))
    full = size.params(size.full)
    scores = {"neurons": [torch.arange(32.0), torch.arange(32.0)], "layers": torch.ones(2)}
    assert chunk_size(size, units, full - 1000, full - 50) == 872  # the largest smallest step: a block
    assert chunk_size(size, units, full - 300, full - 50) == 300  # at most what is left
    assert chunk_size(size, units, full - 1200, full - 900) == 900  # at least the event's share
    plan = probes(size, units, scores, full - 1000, full - 50)
    assert [(p.dim, p.block) for p in plan] == [("neurons", None), ("layers", 0), ("layers", 1)]
    neurons = plan[0]  # 26 neurons (884) land within 1 % of 872; 25 (850) would not reach it
    assert (
        neurons.cost == 884
        and [(~m).nonzero().flatten().tolist() for m in neurons.units.neurons] == [list(range(26))] * 2
    )
    assert plan[1].cost == plan[2].cost == 872 and plan[1].units.layers.tolist() == [False, True]
    dim_rates, layer_losses = rates(plan, [8.84, 0.872, float("nan")], units)
    assert dim_rates == {"neurons": pytest.approx(0.01)} and layer_losses.tolist() == [0.872, float("inf")]


def test_the_allocation_takes_the_dimension_with_the_lowest_measured_loss_per_parameter():
    model = gpt2()
    size, units = SizeModel.from_model(model), Units.full(model, ("neurons", "layers"))
    full = size.params(size.full)
    scores = {"neurons": [torch.arange(8.0), torch.arange(8.0)]}
    # a block measured at 0.4 per 464 parameters (0.00086 per parameter) against neurons at 0.001 per parameter
    cheap_block = {**scores, "layers": torch.tensor([0.9, 0.4])}
    out = allocate(size, units, cheap_block, full - 464, rates={"neurons": 0.001}, stop_at=full - 34)
    assert out.layers.tolist() == [True, False] and all(m.all() for m in out.neurons)
    # the same block against neurons at 0.0005 per parameter: the event's share comes from the lowest neurons
    out = allocate(size, units, cheap_block, full - 464, rates={"neurons": 0.0005}, stop_at=full - 68)
    assert out.layers.all() and [(~m).nonzero().flatten().tolist() for m in out.neurons] == [[0, 1], [0, 1]]
    with pytest.raises(ValueError, match="give comparable scores"):
        allocate(size, units, cheap_block, full - 464, comparable=False, rates={"neurons": 0.001})
    with pytest.raises(ValueError, match=r"dims \['heads'\] must be among the dimensions in use"):
        allocate(size, units, cheap_block, full - 464, dims=("heads",))


def test_the_loss_is_measured_on_held_inputs_and_masked_entries_are_restored():
    torch.manual_seed(0)
    model = llama()
    held = HeldInputs(2)
    handle = held.hook(model)
    batches = [torch.randint(0, 32, (2, 8)) for _ in range(3)]
    for ids in batches:  # training passes: the last two are held
        model(input_ids=ids, labels=ids)
    with torch.no_grad():
        model(input_ids=batches[0])  # validation: not held
    handle.remove()
    assert len(held) == 2 and torch.equal(held.inputs[0][1]["input_ids"], batches[1])
    with torch.no_grad():
        want = sum(model(input_ids=ids, labels=ids).loss for ids in batches[1:]) / 2
    assert lm_loss(model, held) == pytest.approx(float(want)) and model.training
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[:, 6:] = 0
    padded = HeldInputs(1)
    padded.inputs.append(((), {"input_ids": batches[0], "attention_mask": mask}))
    with torch.no_grad():
        labels = batches[0].masked_fill(mask == 0, -100)
        want = model(input_ids=batches[0], attention_mask=mask, labels=labels).loss
    assert lm_loss(model, padded) == pytest.approx(float(want))  # padding carries no loss
    params = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    units = Units.full(model, ("layers", "hidden"))
    units.layers[1], units.hidden[:4] = False, False
    masks = units.weight_masks(model)
    with zeroed(params, masks):
        assert all(bool((params[n][m] == 0).all()) for n, m in masks.items())
        assert lm_loss(model, held) != pytest.approx(float(want))
    assert all(torch.equal(p, before[n]) for n, p in params.items())  # bit for bit
    state = held.state_dict()
    again = HeldInputs(2)
    again.load_state_dict(state)
    assert lm_loss(model, again) == lm_loss(model, held)
    embeds = HeldInputs(1)
    embeds.inputs.append(((), {"inputs_embeds": torch.zeros(1, 4, 32)}))
    with pytest.raises(ValueError, match="neither labels nor input_ids"):
        lm_loss(model, embeds)
    with pytest.raises(ValueError, match="no training inputs are held yet"):
        lm_loss(model, HeldInputs(1))


def _fake_loss(neuron_cost, block_cost):
    """A loss read from the weights: ``neuron_cost`` per zeroed neuron of every block, ``block_cost`` per zeroed
    block (GPT-2: a neuron is a column of c_fc, a block its attention weights)."""

    def loss(model, held):
        blocks = blocks_of(model)
        zero_blocks = sum(bool((b.attn.c_attn.weight == 0).all()) for b in blocks)
        zero_neurons = sum(int((b.mlp.c_fc.weight == 0).all(0).sum()) for b in blocks if b.attn.c_attn.weight.any())
        return 1.0 + neuron_cost * zero_neurons + block_cost * zero_blocks

    return loss


@pytest.mark.parametrize("block_cost, removes_block", [(0.5, True), (50.0, False)])
def test_structured_pruning_removes_what_was_measured_cheapest_per_parameter(monkeypatch, block_cost, removes_block):
    monkeypatch.setattr(structure_module, "lm_loss", _fake_loss(0.1, block_cost))
    pl.seed_everything(0, verbose=False)
    module = CausalLM(model=gpt2(n_embd=16, n_inner=64, n_positions=16, vocab_size=32), warmup_steps=2)
    size = SizeModel.from_model(module.model)
    block = size.params(size.full) - size.params(size.counts(Units(layers=torch.tensor([True, False]))))
    target = SizeTarget(params=size.params(size.full) - block)
    pruning = StructuredPruning(target, AtSteps({2: 1.0}), dims=("neurons", "layers"), loss_batches=1)
    trainer(max_steps=4, callbacks=[pruning]).fit(module, _loader())
    assert (not bool(pruning.units.layers.all())) == removes_block
    event = pruning.events[0]
    assert event["loss"] == 1.0 and {p["dim"] for p in event["probes"]} == {"neurons", "layers"}
    sizes = {p["dim"]: p["size"] for p in event["probes"]}
    assert abs(sizes["neurons"] - sizes["layers"]) <= 0.05 * sizes["layers"]  # equal removals compared
    assert abs(pruning.measure()["params"] - target.params) <= 0.01 * target.params
    assert len(pruning.report()["event_seconds"]) == 1


def test_loss_batches_is_checked():
    with pytest.raises(ValueError, match="loss_batches is a number of training batches >= 0"):
        StructuredPruning(0.5, AtSteps({2: 1.0}), loss_batches=-1)
    with pytest.raises(ValueError, match="loss_batches is a number of training batches >= 0"):
        StructuredPruning(0.5, AtSteps({2: 1.0}), loss_batches=True)

"""Neuron statistics by hand, neuron masks by criterion, and NeuronPruning during training through export."""

import json

import lightning.pytorch as pl
import pytest
import torch
from helpers import trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from test_resume import StopAfter
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from lightning_prune import AtEpochs, AtSteps, ExportPretrained, NeuronPruning
from lightning_prune.lm import CausalLM
from lightning_prune.neurons import NeuronStats, neuron_masks, neuron_weight_masks
from lightning_prune.structured import block_layouts

CFG = dict(vocab_size=32, n_layer=2, n_embd=16, n_head=2, n_positions=16, n_inner=32, warmup_steps=2)


def _loader(n=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 32, (n, 16), generator=gen)
    return DataLoader([{"input_ids": x, "labels": x} for x in ids], batch_size=4)


def test_running_activation_and_taylor_against_hand_values():
    stats = NeuronStats([2], decay=0.75, samples=3, per_pass=2)
    stats.add_activations(0, torch.tensor([[[1.0, -2.0], [3.0, 0.0]]]))  # (1, 2 tokens, 2 neurons)
    assert stats.activation[0].tolist() == [2.0, 1.0]  # first pass sets the average: mean |a|
    stats.add_activations(0, torch.tensor([[-6.0, 5.0]]))
    assert stats.activation[0].tolist() == pytest.approx([0.75 * 2 + 0.25 * 6, 0.75 * 1 + 0.25 * 5])
    assert stats.filled == [3] and stats.kept_samples(0).shape == (3, 2)
    assert [-6.0, 5.0] in stats.kept_samples(0).tolist()
    stats.add_taylor(0, torch.tensor([[1.0, 2.0], [-3.0, 4.0]]), torch.tensor([[2.0, 0.5], [1.0, -1.0]]))
    assert stats.taylor[0].tolist() == [(2 + 3) / 2, (1 + 4) / 2]
    ring = stats.samples[0].clone()
    assert not stats.add_activations(0, torch.tensor([[float("nan"), 1.0]])) and int(stats.skipped) == 1
    assert stats.activation[0].tolist() == pytest.approx([3.0, 2.0])  # unchanged by the skipped pass
    assert stats.counts["activation"].tolist() == [2] and torch.equal(stats.samples[0], ring)  # nor its ring rows


def test_neuron_stats_state_round_trip_and_shape_check():
    stats = NeuronStats([3, 3], samples=4)
    stats.add_activations(1, torch.randn(5, 3))
    stats.add_taylor(0, torch.randn(5, 3), torch.randn(5, 3))
    again = NeuronStats([3, 3], samples=4)
    again.load_state_dict(stats.state_dict())
    assert torch.equal(again.activation[1], stats.activation[1]) and again.filled == stats.filled
    assert torch.equal(again.taylor[0], stats.taylor[0]) and torch.equal(again.kept_samples(1), stats.kept_samples(1))
    assert all(torch.equal(again.counts[k], stats.counts[k]) for k in stats.counts)
    with pytest.raises(ValueError, match="layers of \\[3, 3\\] neurons, not \\[3, 4\\]"):
        NeuronStats([3, 4], samples=4).load_state_dict(stats.state_dict())


def test_neuron_masks_remove_lowest_and_keep_earlier_removals():
    model = CausalLM(**CFG).model
    stats = NeuronStats([32, 32], decay=0.0)  # decay 0: the average is the last pass
    for i in range(2):
        stats.add_activations(i, torch.arange(32.0)[None].repeat(2, 1))  # neuron j has mean |a| = j
    first = neuron_masks(model, stats, "activation", 0.25)
    assert [int((~m).sum()) for m in first] == [8, 8] and not first[0][:8].any() and first[0][8:].all()
    stats.add_activations(0, torch.arange(32.0).flip(0)[None])  # now neuron j has 31 - j: the high ones are lowest
    second = neuron_masks(model, stats, "activation", 0.5, current=first)
    removed = (~second[0]).nonzero().flatten().tolist()
    assert removed == [*range(8), *range(24, 32)]  # the earlier 8 stay removed, the 8 now lowest join them
    with pytest.raises(ValueError, match="unknown neuron criterion 'l2'"):
        neuron_masks(model, stats, "l2", 0.5)
    with pytest.raises(ValueError, match="no taylor statistics"):
        neuron_masks(model, stats, "taylor", 0.5)


def test_weight_masks_of_a_removed_neuron_cover_its_row_bias_and_column():
    model = CausalLM(**CFG).model
    keep = [torch.ones(32, dtype=torch.bool) for _ in range(2)]
    keep[1][5] = False
    pruned = neuron_weight_masks(model, keep)
    lay = block_layouts(model)[1]
    c_fc, c_proj = pruned[f"{lay.ffn_in[0]}.weight"], pruned[f"{lay.ffn_out}.weight"]  # Conv1D: (in, out)
    assert c_fc.shape == (16, 32) and c_fc[:, 5].all() and int(c_fc.sum()) == 16
    assert c_proj.shape == (32, 16) and c_proj[5].all() and int(c_proj.sum()) == 16
    assert pruned[f"{lay.ffn_in[0]}.bias"].nonzero().flatten().tolist() == [5]
    assert not pruned["transformer.h.0.mlp.c_fc.weight"].any()


@pytest.mark.parametrize("criterion", ["activation", "taylor", "weight_norm", "mutual_information"])
def test_training_removes_neurons_holds_them_and_exports_a_smaller_model(tmp_path, criterion):
    pl.seed_everything(0, verbose=False)
    module = CausalLM(**CFG)
    pruning = NeuronPruning(AtSteps({3: 0.25, 6: 0.5}), criterion, samples=64)
    t = trainer(max_steps=10, callbacks=[pruning, ExportPretrained(str(tmp_path / "out"))])
    t.fit(module, _loader())
    assert pruning.removed() == 0.5 and [e["step"] for e in pruning.events] == [3, 6]
    for lay, keep in zip(block_layouts(module.model), pruning.masks):
        assert int(keep.sum()) == 16
        c_fc = module.model.get_submodule(lay.ffn_in[0])
        c_proj = module.model.get_submodule(lay.ffn_out)
        assert (c_fc.weight[:, ~keep] == 0).all() and (c_fc.bias[~keep] == 0).all()
        assert (c_proj.weight[~keep] == 0).all() and (c_fc.weight[:, keep] != 0).any()
        for p in (c_fc.weight, c_proj.weight):  # optimizer state of removed entries is zero too
            state = t.optimizers[0].state[p]
            assert (state["exp_avg"][p == 0] == 0).all()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert reloaded.config.n_inner == 16
    assert reloaded.transformer.h[0].mlp.c_fc.weight.shape == (16, 16)
    ids = torch.randint(0, 32, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, module.model.eval()(input_ids=ids).logits)
    report = json.loads((tmp_path / "out" / "export.json").read_text())
    assert report["parameters"] < report["parameters_before_shrink"] and report["max_logit_difference"] < 1e-4
    hooks = [m._forward_pre_hooks for m in module.model.modules()]
    assert not any(hooks), "forward hooks must be removed after fit"


def test_resume_mid_schedule_gives_the_same_neurons_and_weights(tmp_path):
    def run(folder, stop_after=None, ckpt=None):
        pl.seed_everything(0, verbose=False)  # no dropout: the global RNG is not part of a checkpoint
        config = GPT2Config(n_layer=2, n_embd=16, n_head=2, n_positions=16, n_inner=32, vocab_size=32)
        config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.0
        module = CausalLM(model=GPT2LMHeadModel(config), warmup_steps=2)
        pruning = NeuronPruning(AtEpochs({1: 0.25, 3: 0.5}), "mutual_information", samples=32)
        saver = ModelCheckpoint(dirpath=folder, save_last=True, save_top_k=0)
        extra = [StopAfter(stop_after)] if stop_after is not None else []
        t = trainer(max_epochs=4, callbacks=[pruning, saver, *extra], enable_checkpointing=True)
        t.fit(module, _loader(16), ckpt_path=ckpt)
        return module, pruning

    full, full_pruning = run(tmp_path / "a")
    _, stopped = run(tmp_path / "b", stop_after=1)
    assert stopped.removed() == 0.25
    resumed, resumed_pruning = run(tmp_path / "c", ckpt=tmp_path / "b" / "last.ckpt")
    assert resumed_pruning.events == full_pruning.events
    assert all(torch.equal(a, b) for a, b in zip(full_pruning.masks, resumed_pruning.masks))
    for (n, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=n)


def test_bad_input_is_rejected_at_setup():
    with pytest.raises(ValueError, match="unknown neuron criterion"):
        NeuronPruning({1: 0.5}, "entropy")
    with pytest.raises(ValueError, match="removes every neuron"):
        trainer(max_steps=4, callbacks=[NeuronPruning(AtSteps({1: 0.99}))]).fit(CausalLM(**CFG), _loader())
    with pytest.raises(ValueError, match=r"at step 9, but the run has only steps 0\.\.3 \(max_steps=4\)"):
        trainer(max_steps=4, callbacks=[NeuronPruning(AtSteps({9: 0.5}))]).fit(CausalLM(**CFG), _loader())
    with pytest.raises(ValueError, match="at step 9"):  # an epoch-bounded run of 8 steps
        trainer(max_epochs=1, callbacks=[NeuronPruning(AtSteps({9: 0.5}))]).fit(CausalLM(**CFG), _loader())


def test_nothing_is_held_before_the_first_removal_and_taylor_reads_no_activations():
    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 1:
                self.held = dict(pruning.registry.writers.get(pruning.state_key, {}))

    pruning, probe = NeuronPruning(AtSteps({3: 0.25}), "taylor"), Probe()
    trainer(max_steps=4, callbacks=[pruning, probe]).fit(CausalLM(**CFG), _loader())
    assert probe.held == {} and pruning.removed() == 0.25
    assert int(pruning.stats.counts["taylor"].sum()) == 2 * 4 and int(pruning.stats.counts["activation"].sum()) == 0


def test_llama_neurons_pruned_during_training_shrink_exactly():
    pl.seed_everything(0, verbose=False)
    config = LlamaConfig(
        num_hidden_layers=2,
        hidden_size=16,
        intermediate_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=32,
        max_position_embeddings=16,
    )
    module = CausalLM(model=LlamaForCausalLM(config), warmup_steps=2)
    pruning = NeuronPruning(AtSteps({2: 0.5}), "taylor")
    trainer(max_steps=4, callbacks=[pruning]).fit(module, _loader())
    ids = torch.randint(0, 32, (2, 16))
    model = module.model.eval()
    with torch.no_grad():
        masked = model(input_ids=ids).logits
        small = pruning.shrink_(model)
        assert small.config.intermediate_size == 16 and small.model.layers[0].mlp.down_proj.in_features == 16
        torch.testing.assert_close(small(input_ids=ids).logits, masked)


@pytest.mark.parametrize("criterion", ["activation", "taylor", "weight_norm", "mutual_information", "redundancy"])
def test_one_shot_masks_from_calibration_batches_shrink_exactly(criterion):
    from lightning_prune.neurons import calibrated_neuron_masks
    from lightning_prune.structured import shrink_

    model = CausalLM(**CFG).model.eval()
    batches = [torch.randint(0, 32, (2, 16), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    masks = calibrated_neuron_masks(model, batches, 0.25, criterion, loss_fn=lambda ids: model(ids, labels=ids).loss)
    assert [int(m.sum()) for m in masks] == [24, 24]
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks for m in model.modules())
    ids = batches[0]
    with torch.no_grad():
        from lightning_prune.structured import mask_neurons_

        mask_neurons_(model, masks)
        masked = model(ids).logits
        torch.testing.assert_close(shrink_(model, neuron_masks=masks)(ids).logits, masked)
    with pytest.raises(ValueError, match="needs loss_fn"):
        calibrated_neuron_masks(model, batches, 0.25, "taylor")


def test_weight_norm_reads_the_running_weights_of_the_tracker():
    from lightning_prune import ImportanceTracking

    model = CausalLM(**CFG).model
    lays = block_layouts(model)
    values = {}
    for lay in lays:  # running |w| of 1 everywhere, except neurons 3 and 7 of every layer, whose inputs are 0
        for name in (*lay.ffn_in, lay.ffn_out):
            values[f"{name}.weight"] = torch.ones_like(model.get_parameter(f"{name}.weight"))
        values[f"{lay.ffn_in[0]}.weight"][:, [3, 7]] = 0.0  # Conv1D (in, out): a neuron is a column
    masks = neuron_masks(model, NeuronStats([32, 32]), "weight_norm", 2 / 32, weights=values)
    assert all((~m).nonzero().flatten().tolist() == [3, 7] for m in masks)

    pl.seed_everything(0, verbose=False)
    module = CausalLM(**CFG)
    pruning = NeuronPruning(AtSteps({3: 0.25}), "weight_norm")
    tracking = ImportanceTracking(stats=("abs_weight",))
    t = trainer(max_steps=4, callbacks=[tracking, pruning])
    t.fit(module, _loader())
    running = pruning._running_weights(t)
    assert running is not None and set(running) == set(values)
    tracked = tracking.stats.value("abs_weight", "model." + lays[0].ffn_out + ".weight")
    assert torch.equal(running[lays[0].ffn_out + ".weight"], tracked)

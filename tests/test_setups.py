"""Setups users bring: regularisers, frozen layers, adapters, shared weights, models under their own attribute names,
checkpoints loaded for validation, resumes of the same instances, several writers with caps — each a defect once."""

import math

import lightning.pytorch as pl
import pytest
import torch
from helpers import TinyLM, token_loader, trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from test_neurons import CFG, _loader
from torch import nn

from lightning_prune import (
    AtEpochs,
    AtSteps,
    ExportPretrained,
    ImportanceTracking,
    NeuronPruning,
    OneShot,
    ScheduledPruning,
)
from lightning_prune._registry import registry_of
from lightning_prune.compensation import conditional_redundancy
from lightning_prune.lm import CausalLM
from lightning_prune.trackers import RunningStats


def _zeros(params, fqns):
    return sum(int((params[f] == 0).sum()) for f in fqns)


class GroupLasso(TinyLM):
    """TinyLM plus a group-lasso term over the output rows of fc1: sqrt(sum w²) has gradient 0/0 = NaN on a row that
    pruning made exactly zero."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        rows = torch.cat([b.fc1.weight for b in self.blocks])  # (2·64, 16)
        return loss + 1e-3 * rows.square().sum(1).sqrt().sum()


def test_a_nan_gradient_on_pruned_entries_never_reaches_the_weights_or_the_loss():
    pl.seed_everything(0, verbose=False)
    model = GroupLasso()
    pruning = ScheduledPruning(AtEpochs({1: 0.5}), pattern="row", parameters=["*.fc1.weight"])
    losses = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer(callbacks=[pruning, Record()], max_epochs=3).fit(model, token_loader())
    assert all(math.isfinite(v) for v in losses)
    params = dict(model.named_parameters())
    assert all(bool(torch.isfinite(p).all()) for p in params.values())  # nothing non-finite introduced
    for f, keep in pruning.masks.items():
        assert torch.all(params[f][~keep] == 0) and (~keep).any()


def _fit_with_checkpoints(tmp_path, model, callbacks, epochs=3):
    save = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    t = trainer(callbacks=[*callbacks, save], max_epochs=epochs, enable_checkpointing=True)
    t.fit(model, token_loader(), val_dataloaders=token_loader(n=16))
    return t


def test_validate_with_an_earlier_checkpoint_after_fit_changes_neither_weights_nor_state(tmp_path):
    pl.seed_everything(0, verbose=False)
    model = TinyLM()
    pruning = ScheduledPruning(AtEpochs({1: 0.3, 2: 0.6}))
    t = _fit_with_checkpoints(tmp_path, model, [pruning])
    masks, sparsity = {f: m.clone() for f, m in pruning.masks.items()}, pruning.sparsity
    early = tmp_path / "epoch=0.ckpt"  # dense: before the first pruning event
    reported = t.validate(model, token_loader(n=16), ckpt_path=early, verbose=False)[0]["val_loss"]
    saved = torch.load(early, weights_only=False)["state_dict"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[name]), name  # the checkpoint's weights, not masked by the end-of-fit masks
    fresh = TinyLM()
    fresh.load_state_dict(saved)
    expected = trainer().validate(fresh, token_loader(n=16), verbose=False)[0]["val_loss"]
    assert reported == pytest.approx(expected, abs=1e-6)
    assert pruning.sparsity == sparsity and all(torch.equal(pruning.masks[f], masks[f]) for f in masks)
    assert pruning._pending is None  # the checkpoint's callback state was not taken either


def test_resuming_the_same_instances_from_an_earlier_checkpoint_equals_a_fresh_resume(tmp_path):
    def callbacks():  # the tracker first: nothing it does may enforce the pruning callback's masks before they resume
        return [ImportanceTracking(stats=("taylor",)), ScheduledPruning(AtEpochs({1: 0.3, 2: 0.6}), "taylor")]

    pl.seed_everything(0, verbose=False)
    model, reused = TinyLM(), callbacks()
    save = ModelCheckpoint(dirpath=tmp_path, filename="{step}", save_top_k=-1, every_n_train_steps=4)
    trainer(callbacks=[*reused, save], max_epochs=3, enable_checkpointing=True).fit(model, token_loader())
    mid = tmp_path / "step=12.ckpt"  # mid-epoch 1: masks at 0.3; the instances now hold 0.6
    runs = []
    for m, cbs in [(model, reused), (TinyLM(), callbacks())]:  # the same instances, then fresh ones
        pl.seed_everything(0, verbose=False)
        t = trainer(callbacks=cbs, max_epochs=3, num_sanity_val_steps=2)
        t.fit(m, token_loader(), val_dataloaders=token_loader(n=16), ckpt_path=mid)
        runs.append((m.state_dict(), cbs[1].masks))
    (weights_a, masks_a), (weights_b, masks_b) = runs
    for name in weights_a:
        assert torch.equal(weights_a[name], weights_b[name]), name
    for f in masks_b:
        assert torch.equal(masks_a[f], masks_b[f]), f


class HalfFrozen(TinyLM):
    def __init__(self):
        super().__init__()
        self.blocks[0].requires_grad_(False)  # a frozen block beside a trained one


def test_frozen_layers_are_left_out_by_default_and_refused_by_gradient_criteria():
    pl.seed_everything(0, verbose=False)
    model = HalfFrozen()
    frozen = {n: p.clone() for n, p in model.named_parameters() if n.startswith("blocks.0.")}
    pruning = ScheduledPruning(AtEpochs({1: 0.5}), criterion="taylor")
    trainer(callbacks=[ImportanceTracking(), pruning], max_epochs=2).fit(model, token_loader())
    assert all(f.startswith("blocks.1.") for f in pruning.masks)
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())  # untouched
    assert _zeros(params, pruning.masks) == round(0.5 * sum(params[f].numel() for f in pruning.masks))
    named = ScheduledPruning(AtEpochs({1: 0.5}), criterion="taylor", parameters=["blocks.*.fc1.weight"])
    with pytest.raises(ValueError, match=r"blocks\.0\.fc1\.weight.*frozen.*'magnitude'"):
        trainer(callbacks=[ImportanceTracking(), named], max_epochs=2).fit(HalfFrozen(), token_loader())
    assert named.sparsity == 0.0 and not named.events  # refused before any training


def test_row_pruning_beside_neuron_pruning_ranks_rows_by_score_not_by_position():
    class LastRowsFirst:
        """Scores that rank the last output rows lowest: pruned by score, the last rows go."""

        def __call__(self, fqn, weight, stats):
            out = torch.arange(weight.shape[1], 0, -1.0) if weight.shape[1] > 1 else torch.ones(1)
            return out.expand(weight.shape).clone()  # Conv1D c_proj is (in, out): rows are columns

    pl.seed_everything(0, verbose=False)
    neurons = NeuronPruning(AtSteps({1: 0.5}), "activation")
    rows = ScheduledPruning(
        AtSteps({2: 0.75}), criterion=LastRowsFirst(), pattern="row", parameters=["*.mlp.c_proj.weight"]
    )
    trainer(max_steps=3, callbacks=[neurons, rows]).fit(CausalLM(**CFG), _loader())
    for f, keep in rows.masks.items():
        pruned_outputs = (~keep).all(0).nonzero().flatten().tolist()  # whole output columns of (in, out)
        assert pruned_outputs == list(range(16 - len(pruned_outputs), 16)), f  # the last ones, by score
        assert len(pruned_outputs) == 8  # half the live entries: 0.75 of all with the neurons' half counted once


@pytest.mark.parametrize("target, bound", [(0.3, {"max_layer_sparsity": 0.4}), (0.45, {"layer_spread": 0.15})])
def test_another_writers_zeros_count_once_with_caps_and_spreads(target, bound):
    pl.seed_everything(0, verbose=False)
    neurons = NeuronPruning(AtSteps({1: 0.5}), "activation")  # half of every feed-forward weight: 25 % of all
    weights = ScheduledPruning(AtSteps({2: target}), criterion="taylor", **bound)
    model = CausalLM(**CFG)
    trainer(max_steps=4, callbacks=[ImportanceTracking(), neurons, weights]).fit(model, _loader())
    params = weights.registry.params
    assert _zeros(params, weights.masks) == round(target * sum(params[f].numel() for f in weights.masks))


def test_floors_that_another_writers_zeros_make_unreachable_are_a_clear_error():
    neurons = NeuronPruning(AtSteps({1: 0.5}), "activation")  # 25 % of all pruned, in the feed-forward weights
    weights = ScheduledPruning(AtSteps({2: 0.3}), criterion="taylor", layer_spread=0.1)  # attention ≥ 20 %: 35 %
    with pytest.raises(ValueError, match=r"1024 entries pruned already.*allow 1432 to"):
        trainer(max_steps=4, callbacks=[ImportanceTracking(), neurons, weights]).fit(CausalLM(**CFG), _loader())


class LayerOrder:
    """Scores by layer: block 0's weights lowest, then block 1's fc2, block 1's fc1 highest — a global ranking that
    wants two layers above the cap and one below the floor."""

    def __call__(self, fqn, weight, stats):
        base = {"blocks.0.fc1.weight": 0.0, "blocks.0.fc2.weight": 5.0, "blocks.1.fc2.weight": 6.0}.get(fqn, 10.0)
        return base + torch.arange(weight.numel(), dtype=torch.float32).view(weight.shape) / weight.numel()


def test_a_layer_spread_reaches_the_target_exactly():
    pl.seed_everything(0, verbose=False)
    pruning = ScheduledPruning(AtEpochs({1: 0.5}), LayerOrder(), layer_spread=0.1, parameters=["*.fc?.weight"])
    model = TinyLM()
    trainer(callbacks=[pruning], max_epochs=2).fit(model, token_loader())
    params = dict(model.named_parameters())
    assert _zeros(params, pruning.masks) == round(0.5 * sum(params[f].numel() for f in pruning.masks))
    for f in pruning.masks:
        assert 0.4 * params[f].numel() - 1 < int((params[f] == 0).sum()) < 0.6 * params[f].numel() + 1, f


def test_an_epoch_schedule_past_a_step_bounded_run_is_refused():
    pruning = ScheduledPruning(AtEpochs({1: 0.3, 3: 0.5}))
    with pytest.raises(ValueError, match=r"epoch 3.*max_steps=12.*--trainer.max_steps 25"):
        trainer(callbacks=[pruning], max_epochs=5, max_steps=12).fit(TinyLM(), token_loader())
    assert not pruning.events


@pytest.mark.parametrize(
    "make",
    [
        lambda: [ScheduledPruning(AtEpochs({1: 0.3, 3: 0.5}))],
        lambda: [NeuronPruning(AtEpochs({3: 0.5}))],
        lambda: [ImportanceTracking(), ScheduledPruning(AtSteps({2: 0.5}), "time_weighted")],
    ],
    ids=["epoch-schedule", "neurons-epoch-schedule", "time-weighted-in-first-epoch"],
)
def test_a_trainer_with_max_steps_alone_knows_its_epochs_at_setup(make):
    # max_steps without max_epochs: Lightning does not load the data for its own estimate; the checks still run
    callbacks = make()
    with pytest.raises(ValueError, match=r"epoch|first epoch"):
        if isinstance(callbacks[-1], NeuronPruning):
            trainer(callbacks=callbacks, max_steps=12).fit(CausalLM(**CFG), _loader(64))
        else:
            trainer(callbacks=callbacks, max_steps=12).fit(TinyLM(), token_loader())
    assert not callbacks[-1].events


def test_row_pattern_on_one_dimensional_parameters_is_refused_before_training():
    pruning = ScheduledPruning(AtEpochs({1: 0.5}), pattern="row", parameters=["*.weight"])
    with pytest.raises(ValueError, match=r"norm\.weight.*not 2-D"):
        trainer(callbacks=[pruning], max_epochs=2).fit(TinyLM(), token_loader())
    assert not pruning.events


class Shared(TinyLM):
    """One parameter used by two Linear layers (the second block's fc1 is the first block's)."""

    def __init__(self):
        super().__init__()
        self.blocks[1].fc1.weight = self.blocks[0].fc1.weight


def test_a_shared_parameter_is_one_entry():
    pl.seed_everything(0, verbose=False)
    model = Shared()
    tracking, pruning = ImportanceTracking(), ScheduledPruning(AtSteps({2: 0.5}), criterion="running_magnitude")
    trainer(callbacks=[tracking, pruning], max_steps=4).fit(model, token_loader())
    assert "blocks.0.fc1.weight" in pruning.masks and "blocks.1.fc1.weight" not in pruning.masks
    assert "blocks.1.fc1.weight" not in tracking.fqns
    params = dict(model.named_parameters())
    assert _zeros(params, pruning.masks) == round(0.5 * sum(params[f].numel() for f in pruning.masks))
    assert torch.all(model.blocks[1].fc1.weight[~pruning.masks["blocks.0.fc1.weight"]] == 0)


def test_a_new_fit_after_a_physical_shrink_keeps_what_was_pruned_and_prunes_the_smaller_model():
    pl.seed_everything(0, verbose=False)
    neurons, model = NeuronPruning(AtSteps({1: 0.5}), "activation"), CausalLM(**CFG)
    first = ScheduledPruning(AtSteps({2: 0.4}))
    trainer(max_steps=3, callbacks=[neurons, first]).fit(model, _loader())
    neurons.shrink_()
    assert model.model.config.n_inner == 16
    registry = registry_of(model)
    params = dict(model.named_parameters())
    for f, keep in registry.keep.items():  # the weight masks were cut as the weights were: still on their zeros
        assert keep.shape == params[f].shape and torch.all(params[f][~keep] == 0), f
    held = registry.pruned_count(registry.keep)
    assert held > 0
    second = ScheduledPruning(AtSteps({1: 0.6}), name="second")  # another writer: the first's zeros count once
    trainer(max_steps=2, callbacks=[second]).fit(model, _loader())
    params = dict(model.named_parameters())
    assert _zeros(params, second.masks) == round(0.6 * sum(params[f].numel() for f in second.masks))
    assert tuple(params["model.transformer.h.0.mlp.c_fc.weight"].shape) == (16, 16)


class UnderNet(pl.LightningModule):
    """A LightningModule that keeps its transformer under ``net``, not ``model``."""

    def __init__(self):
        super().__init__()
        self.net = CausalLM(**CFG).model

    def training_step(self, batch, batch_idx):
        return self.net(input_ids=batch["input_ids"], labels=batch["labels"]).loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def test_the_transformer_may_live_under_any_attribute(tmp_path):
    import json

    pl.seed_everything(0, verbose=False)
    model = UnderNet()
    neurons = NeuronPruning(AtSteps({1: 0.5}), "activation")
    weights = ScheduledPruning(AtSteps({2: 0.6}), criterion="magnitude")
    export = ExportPretrained(str(tmp_path / "out"))
    trainer(max_steps=3, callbacks=[neurons, weights, export]).fit(model, _loader())
    report = json.loads((tmp_path / "out" / "export.json").read_text())
    assert report["max_logit_difference"] < 1e-5
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert reloaded.config.n_inner == 16
    assert report["nonzero"] < report["parameters"]  # the weight masks came along


def test_a_criterion_that_needs_statistics_at_step_zero_is_refused_at_setup():
    pruning = ScheduledPruning(OneShot(0.5), "running_magnitude")
    with pytest.raises(ValueError, match=r"at epoch 0.*OneShot\(0\.5, at=1"):
        trainer(callbacks=[ImportanceTracking(), pruning], max_epochs=2).fit(TinyLM(), token_loader())
    ScheduledPruning(OneShot(0.5), "magnitude")  # needs no statistics: fine at 0


def _bf16_run(tmp_path, stop=None, resume=None):
    from test_resume import StopAfter

    pl.seed_everything(0, verbose=False)
    model = TinyLM()
    tracking = ImportanceTracking(stats=("taylor", "abs_weight"), dtype="bfloat16")
    pruning = ScheduledPruning(AtEpochs({2: 0.5}), criterion="taylor")
    save = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    extra = [StopAfter(stop)] if stop is not None else []
    t = trainer(callbacks=[tracking, pruning, save, *extra], max_epochs=4, enable_checkpointing=True)
    t.fit(model, token_loader(), ckpt_path=resume)
    return tracking, pruning


def test_resume_with_bfloat16_statistics_is_exact(tmp_path):
    tracking_a, pruning_a = _bf16_run(tmp_path / "a")
    _bf16_run(tmp_path / "b", stop=0)
    tracking_b, pruning_b = _bf16_run(tmp_path / "c", resume=tmp_path / "b" / "last.ckpt")
    for stat in ("taylor", "abs_weight"):
        for f in tracking_a.fqns:
            assert torch.equal(tracking_a.stats.state[stat][f], tracking_b.stats.state[stat][f]), (stat, f)
    for f in pruning_a.masks:
        assert torch.equal(pruning_a.masks[f], pruning_b.masks[f]), f


def test_statistics_of_half_precision_weights_are_formed_in_float32():
    w = torch.nn.Parameter(torch.full((4,), 1e-4, dtype=torch.float16))
    w.grad = torch.full((4,), 1e-4, dtype=torch.float16)  # w·g = 1e-8: below float16's smallest subnormal
    assert bool(torch.all(w.detach() * w.grad == 0))
    stats = RunningStats({"w": w}, stats=("taylor", "movement", "platon"))
    stats.update({"w": w})
    expected = float(torch.tensor(1e-4, dtype=torch.float16).float()) ** 2
    assert stats.value("taylor", "w").tolist() == pytest.approx([expected] * 4, rel=1e-6)
    assert stats.value("movement", "w").tolist() == pytest.approx([expected] * 4, rel=1e-6)
    assert stats.state["platon"]["w"].dtype == torch.float32 and float(stats.state["platon"]["w"][0]) > 0


def test_without_outgoing_weights_a_dead_neuron_goes_before_a_live_one():
    gen = torch.Generator().manual_seed(0)
    acts = torch.randn(256, 4, generator=gen)
    acts[:, 1] = 0.0
    assert conditional_redundancy(acts, 1).tolist() == [True, False, True, True]


def test_masks_hold_on_a_model_whose_parameters_were_made_in_configure_model():
    class Late(TinyLM):
        def __init__(self):
            pl.LightningModule.__init__(self)
            self.optimizer, self.lr, self.weight_decay = "adamw", 1e-2, 0.1
            self.embed = None

        def configure_model(self):
            if self.embed is None:
                src = TinyLM()
                self.embed, self.blocks, self.head = src.embed, src.blocks, src.head

    pl.seed_everything(0, verbose=False)
    model = Late()
    pruning = ScheduledPruning(AtSteps({1: 0.5}))
    trainer(callbacks=[pruning], max_steps=3).fit(model, token_loader())
    params = dict(model.named_parameters())
    assert _zeros(params, pruning.masks) == round(0.5 * sum(params[f].numel() for f in pruning.masks))


def test_every_held_tensor_is_cleared_exactly_whatever_it_holds():
    model = nn.Linear(3, 2)
    registry = registry_of(model)
    registry.resolve(model)
    keep = torch.tensor([[True, False, True], [False, True, True]])
    registry.write("w", {"weight": keep})
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    registry.attach([opt])
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, float("nan"), -2.0], [float("inf"), 3.0, -0.0]]))
    model.weight.grad = torch.tensor([[0.5, float("nan"), 1.0], [float("-inf"), 1.0, 2.0]])
    registry.mask_grads_()
    assert torch.equal(model.weight.grad, torch.tensor([[0.5, 0.0, 1.0], [0.0, 1.0, 2.0]]))
    kept = model.weight.detach().clone()
    opt.step()  # AdamW over a NaN weight at a pruned entry: cleared after the step
    assert torch.all(model.weight[~keep] == 0) and bool(torch.isfinite(model.weight).all())
    assert torch.all(opt.state[model.weight]["exp_avg"][~keep] == 0)
    assert bool(torch.isfinite(opt.state[model.weight]["exp_avg_sq"]).all())
    assert not torch.equal(model.weight[keep], kept[keep])  # the kept entries trained


def _lora_model(**lora):
    peft = pytest.importorskip("peft")
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=32,
        max_position_embeddings=16,
    )
    base = LlamaForCausalLM(config)
    lora = {"target_modules": ["q_proj", "v_proj", "down_proj"], **lora}
    return peft.get_peft_model(base, peft.LoraConfig(r=4, **lora))


@pytest.mark.parametrize(
    "lora",
    [{}, {"target_modules": ["q_proj", "v_proj"], "modules_to_save": ["down_proj"]}],
    ids=["lora", "lora-and-a-trained-copy"],
)
def test_lora_adapters_are_never_pruned_and_the_merged_export_is_as_sparse(tmp_path, lora):
    import json

    from transformers import AutoModelForCausalLM

    from lightning_prune.adapters import merged_name

    pl.seed_everything(0, verbose=False)
    lm = CausalLM(model=_lora_model(**lora), lr=1e-2, warmup_steps=1)
    pruning = ScheduledPruning(AtSteps({1: 0.5}), "magnitude")
    export = ExportPretrained(str(tmp_path / "out"))
    trainer(max_steps=4, callbacks=[pruning, export]).fit(lm, _loader())
    assert pruning.masks and not any("lora_" in f for f in pruning.masks)
    assert all(".base_layer." in f or "lora" not in f for f in pruning.masks)
    params = dict(lm.named_parameters())
    assert _zeros(params, pruning.masks) == round(0.5 * sum(params[f].numel() for f in pruning.masks))
    lora_b = [p for f, p in params.items() if "lora_B" in f]
    assert lora_b and all(bool((p != 0).any()) for p in lora_b)  # started at zero, trained, never pruned
    report = json.loads((tmp_path / "out" / "export.json").read_text())
    assert report["max_logit_difference"] < 1e-5
    merged = dict(AutoModelForCausalLM.from_pretrained(tmp_path / "out").named_parameters())
    assert "model.layers.0.self_attn.q_proj.weight" in merged  # a plain transformers model
    assert not any("original_module" in f for f in pruning.masks)  # unused while the trained copy computes
    zeros = 0
    for f, keep in pruning.masks.items():
        name = merged_name(f.removeprefix("model."))
        assert torch.all(merged[name][~keep.cpu()] == 0), name  # the adapters' update did not refill them
        zeros += int((merged[name] == 0).sum())
    assert zeros == round(0.5 * sum(k.numel() for k in pruning.masks.values()))  # the export is exactly as sparse


def test_gradient_criteria_refuse_the_frozen_base_weights_of_an_adapted_model():
    pruning = ScheduledPruning(AtSteps({1: 0.5}), "taylor")
    with pytest.raises(ValueError, match=r"base_layer\.weight.*frozen.*LoRA"):
        trainer(max_steps=2, callbacks=[ImportanceTracking(), pruning]).fit(CausalLM(model=_lora_model()), _loader())


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=32, n_layer=2, n_embd=16, n_head=2, n_positions=16, n_inner=32))


class _TwoModels(pl.LightningModule):
    """A student and a teacher of the same family in one module, the teacher first and frozen unless told."""

    def __init__(self, frozen_teacher=True):
        super().__init__()
        self.teacher, self.net = _gpt2(), _gpt2()
        self.teacher.requires_grad_(not frozen_teacher)


def test_the_model_to_prune_is_the_one_that_trains_or_the_one_named():
    from lightning_prune.callbacks.export import find_pretrained
    from lightning_prune.callbacks.neurons import find_transformer

    module = _TwoModels()
    assert find_transformer(module)[0] == "net" and find_pretrained(module)[0] == "net"  # never the frozen teacher
    both = _TwoModels(frozen_teacher=False)
    with pytest.raises(ValueError, match=r"several.*'teacher', 'net'.*attr="):
        find_transformer(both)
    assert find_transformer(both, "teacher")[1] is both.teacher
    with pytest.raises(ValueError, match="attr='student' names no submodule"):
        find_transformer(both, "student")
    with pytest.raises(ValueError, match="attr='net.transformer.h' names ModuleList, not a transformers model"):
        find_transformer(both, "net.transformer.h")


def test_masks_that_fit_two_places_are_refused_not_placed_by_chance():
    from lightning_prune.callbacks.hold import place_masks

    names = {f"{tower}.0.weight": (4, 4) for tower in ("query_tower", "doc_tower")}
    with pytest.raises(ValueError, match=r"several places \(\['doc_tower', 'query_tower'\]\)"):
        place_masks({"enc.0.weight": torch.ones(4, 4, dtype=torch.bool)}, names)
    assert list(place_masks({"enc.0.weight": torch.ones(4, 4, dtype=torch.bool)}, {"a.0.weight": (4, 4)})) == [
        "a.0.weight"
    ]

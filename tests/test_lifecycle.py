"""One lifecycle for every callback, one mask registry per model: masks hold wherever weights are written, and what
survives a second fit, a resume and ``validate`` is decided the same way everywhere (callbacks/_lifecycle.py)."""

import lightning.pytorch as pl
import pytest
import torch
from helpers import TinyLM, token_loader, trainer
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint, StochasticWeightAveraging
from test_neurons import CFG, _loader

from lightning_prune import AtEpochs, AtSteps, ImportanceTracking, NeuronPruning, ScheduledPruning
from lightning_prune._registry import registry_of
from lightning_prune.lm import CausalLM


def _pruned_entries_are_zero(pruning: ScheduledPruning, tensors: dict[str, torch.Tensor]) -> None:
    assert pruning.masks
    for f, keep in pruning.masks.items():
        assert torch.all(tensors[f][~keep] == 0), f


@pytest.mark.parametrize("averaging", ["ema", "swa"])
def test_weight_averaging_beside_pruning_keeps_every_pruned_entry_zero(averaging):
    pl.seed_everything(0, verbose=False)
    model = TinyLM()
    pruning = ScheduledPruning(AtEpochs({2: 0.5}), criterion="magnitude")  # after the average holds dense weights
    average = (
        EMAWeightAveraging(decay=0.5) if averaging == "ema" else StochasticWeightAveraging(1e-2, swa_epoch_start=1)
    )
    t = trainer(callbacks=[average, pruning], max_epochs=4)  # the averaging callback runs first
    t.fit(model, token_loader(), val_dataloaders=token_loader(n=16))
    weights = dict(model.named_parameters())
    _pruned_entries_are_zero(pruning, weights)  # the averaged weights copied in at the end
    averaged = {n.removeprefix("module."): p for n, p in average._average_model.named_parameters()}
    _pruned_entries_are_zero(pruning, averaged)  # and the averaged copy itself
    total = sum(m.numel() for m in pruning.masks.values())
    assert sum(int((weights[f] == 0).sum()) for f in pruning.masks) >= round(0.5 * total)


def test_neuron_and_weight_pruning_count_zeros_once():
    pl.seed_everything(0, verbose=False)
    neurons = NeuronPruning(AtSteps({2: 0.25}), "activation")
    weights = ScheduledPruning(AtSteps({4: 0.5}), criterion="taylor")
    model = CausalLM(**CFG)
    trainer(max_steps=8, callbacks=[ImportanceTracking(), neurons, weights]).fit(model, _loader())
    params = weights.registry.params
    total = sum(params[f].numel() for f in weights.masks)
    zeros = sum(int((params[f] == 0).sum()) for f in weights.masks)
    assert zeros == round(0.5 * total)  # the neurons' zeros count towards the target
    assert weights.events[-1]["sparsity"] == 0.5
    registry = registry_of(model)
    for f, keep in registry.keep.items():  # the union holds both writers' masks
        assert torch.all(params[f][~keep] == 0), f
    assert set(registry.writers) == {"NeuronPruning", weights.state_key}


def test_a_second_fit_of_the_same_model_keeps_every_callbacks_state():
    pl.seed_everything(0, verbose=False)
    model = CausalLM(**CFG)
    tracking, neurons = ImportanceTracking(stats=("taylor",)), NeuronPruning(AtSteps({2: 0.5}), "activation")
    pruning = ScheduledPruning(AtSteps({3: 0.5}), criterion="taylor")
    trainer(max_steps=4, callbacks=[tracking, neurons, pruning]).fit(model, _loader())
    masks = {f: m.clone() for f, m in pruning.masks.items()}
    removed, events = neurons.removed(), list(pruning.events)
    trainer(max_steps=4, callbacks=[tracking, neurons, pruning]).fit(model, _loader())
    assert tracking.stats.steps == 8  # continued, not restarted
    assert neurons.removed() == removed == 0.5 and neurons.sparsity == 0.5
    assert pruning.events == events and pruning.sparsity == 0.5
    assert all(torch.equal(pruning.masks[f], masks[f]) for f in masks)
    params = dict(model.named_parameters())
    for f, keep in registry_of(model).keep.items():
        assert torch.all(params[f][~keep] == 0), f  # held through the second fit too


def test_a_second_fit_on_a_new_model_starts_afresh():
    pl.seed_everything(0, verbose=False)
    tracking = ImportanceTracking(stats=("taylor",))
    pruning = ScheduledPruning(AtEpochs({1: 0.5}), criterion="taylor")
    first = TinyLM()
    trainer(callbacks=[tracking, pruning], max_epochs=2).fit(first, token_loader())
    old = {f: m.clone() for f, m in pruning.masks.items()}
    second = TinyLM()
    probe = {}

    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 0:
                probe.update(sparsity=pruning.sparsity, masks=dict(pruning.masks), steps=tracking.stats.steps)

    trainer(callbacks=[tracking, pruning, Probe()], max_epochs=2).fit(second, token_loader())
    assert probe == {"sparsity": 0.0, "masks": {}, "steps": 0}  # nothing of the first model carried over
    assert tracking.stats.steps == 16 and pruning.sparsity == 0.5 and len(pruning.events) == 1
    assert any(not torch.equal(pruning.masks[f], old[f]) for f in old)  # its own masks, from its own scores
    assert registry_of(first).keep and all(torch.equal(registry_of(first).keep[f], old[f]) for f in old)


def test_a_reused_tracker_resumes_the_checkpoints_statistics(tmp_path):
    pl.seed_everything(0, verbose=False)
    tracking = ImportanceTracking(stats=("taylor", "abs_weight"))
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer(callbacks=[tracking, ckpt], max_epochs=3, enable_checkpointing=True).fit(TinyLM(), token_loader())
    assert tracking.stats.steps == 24
    trainer(callbacks=[tracking], max_epochs=4).fit(TinyLM(), token_loader(), ckpt_path=tmp_path / "last.ckpt")
    assert tracking.stats.steps == 32  # the checkpoint's 24 steps and one more epoch: not 8, not 24 + 32
    reordered = ImportanceTracking(stats=("abs_weight", "taylor"))  # the same statistics, listed the other way
    trainer(callbacks=[reordered], max_epochs=4).fit(TinyLM(), token_loader(), ckpt_path=tmp_path / "last.ckpt")
    assert reordered.stats.steps == 32


def test_validate_after_fit_changes_nothing_and_masks_hold():
    pl.seed_everything(0, verbose=False)
    model, tracking = TinyLM(), ImportanceTracking(stats=("taylor",))
    pruning = ScheduledPruning(AtEpochs({1: 0.5}), criterion="taylor")
    t = trainer(callbacks=[tracking, pruning], max_epochs=2)
    t.fit(model, token_loader())
    masks, steps = {f: m.clone() for f, m in pruning.masks.items()}, tracking.stats.steps
    t.validate(model, token_loader(n=16))
    assert tracking.stats.steps == steps and pruning.sparsity == 0.5
    assert all(torch.equal(pruning.masks[f], masks[f]) for f in masks)
    _pruned_entries_are_zero(pruning, dict(model.named_parameters()))


class _Rebuilt(TinyLM):
    """Replaces its blocks in ``configure_model``, as models built or sharded there do."""

    def configure_model(self) -> None:
        torch.manual_seed(1)
        self.blocks = torch.nn.ModuleList([type(b)(b.fc1.in_features) for b in self.blocks])


def test_callbacks_prune_the_parameters_configure_model_creates():
    pl.seed_everything(0, verbose=False)
    model = _Rebuilt()
    pruning = ScheduledPruning(AtEpochs({1: 0.5}), criterion="taylor")
    trainer(callbacks=[ImportanceTracking(), pruning], max_epochs=2).fit(model, token_loader())
    trained = dict(model.named_parameters())
    assert all(pruning.registry.params[f] is trained[f] for f in pruning.masks)
    total = sum(m.numel() for m in pruning.masks.values())
    assert sum(int((trained[f] == 0).sum()) for f in pruning.masks) == round(0.5 * total)


@pytest.mark.parametrize("name", ["FSDPStrategy", "DeepSpeedStrategy"])
def test_strategies_with_flat_parameters_are_refused_at_setup(name):
    strategy = type(name, (), {})()  # FSDPStrategy refuses the CPU before setup: its name is what is checked
    fake = type("Trainer", (), {"strategy": strategy, "max_epochs": 2, "max_steps": -1, "callbacks": []})()
    for callback in (ScheduledPruning({1: 0.5}), ImportanceTracking(), NeuronPruning({1: 0.5})):
        with pytest.raises(ValueError, match=f"{name} keeps parameters in flattened buffers.*ModelParallelStrategy"):
            callback.setup(fake, TinyLM(), "fit")

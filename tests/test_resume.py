"""Checkpoint and resume: masks, statistics and schedule position survive a stop mid-schedule."""

import lightning.pytorch as pl
import pytest
import torch
from helpers import TinyLM, token_loader, trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_prune import AtEpochs, ImportanceTracking, ScheduledPruning
from lightning_prune.finetune import masks_from_checkpoint


class StopAfter(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


def _callbacks():
    tracking = ImportanceTracking(stats=("taylor",), window=2)
    pruning = ScheduledPruning(AtEpochs({1: 0.3, 3: 0.6}), criterion="time_weighted")
    return tracking, pruning


def _run(tmp_path, stop_after=None, ckpt_path=None):
    pl.seed_everything(0, verbose=False)
    model = TinyLM()
    tracking, pruning = _callbacks()
    extra = [StopAfter(stop_after)] if stop_after is not None else []
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    t = trainer(callbacks=[tracking, pruning, checkpoint, *extra], max_epochs=5, enable_checkpointing=True)
    t.fit(model, token_loader(), ckpt_path=ckpt_path)
    return model, tracking, pruning


def test_resumed_run_ends_with_the_same_masks_weights_and_statistics(tmp_path):
    model_a, tracking_a, pruning_a = _run(tmp_path / "a")
    _, _, pruning_stopped = _run(tmp_path / "b", stop_after=1)  # stopped after the first pruning event
    assert pruning_stopped.sparsity == 0.3
    model_b, tracking_b, pruning_b = _run(tmp_path / "c", ckpt_path=tmp_path / "b" / "last.ckpt")
    assert pruning_b.events == pruning_a.events
    for f in pruning_a.masks:
        assert torch.equal(pruning_a.masks[f], pruning_b.masks[f]), f
    for (name, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert torch.equal(a, b), name
    assert tracking_b.stats.snapshots == tracking_a.stats.snapshots == 5
    assert tracking_b.stats.ring_index == [4, 5]
    for f in tracking_a.fqns:
        assert torch.equal(tracking_a.stats.value("taylor", f), tracking_b.stats.value("taylor", f))


def test_masks_survive_a_checkpoint_without_regrowth(tmp_path):
    """The resumed run keeps the checkpoint's masks even if its own criterion would choose differently."""
    _run(tmp_path / "b", stop_after=1)
    saved = masks_from_checkpoint(tmp_path / "b" / "last.ckpt")
    pl.seed_everything(0, verbose=False)
    pruning = ScheduledPruning(AtEpochs({1: 0.3, 3: 0.6}), criterion="random")
    t = trainer(callbacks=[pruning], max_epochs=5)
    t.fit(TinyLM(), token_loader(), ckpt_path=tmp_path / "b" / "last.ckpt")
    assert pruning.sparsity == 0.6
    for f, keep in saved.items():
        assert torch.all(pruning._params[f][~keep] == 0), f


def test_checkpoint_from_another_parameter_selection_is_rejected(tmp_path):
    _run(tmp_path / "b", stop_after=1)
    ckpt = tmp_path / "b" / "last.ckpt"
    pruning = ScheduledPruning(AtEpochs({1: 0.3, 3: 0.6}), criterion="time_weighted", parameters=["*.fc1.weight"])
    tracking = ImportanceTracking(stats=("taylor",), window=2)
    with pytest.raises(ValueError, match="masks do not fit this model"):
        trainer(callbacks=[tracking, pruning], max_epochs=5).fit(TinyLM(), token_loader(), ckpt_path=ckpt)
    tracking = ImportanceTracking(stats=("taylor",), window=2, parameters=["*.fc1.weight"])
    pruning = ScheduledPruning(AtEpochs({1: 0.3, 3: 0.6}), criterion="time_weighted", parameters=["*.fc1.weight"])
    with pytest.raises(ValueError, match="checkpointed statistics are for other parameters"):
        trainer(callbacks=[tracking, pruning], max_epochs=5).fit(TinyLM(), token_loader(), ckpt_path=ckpt)

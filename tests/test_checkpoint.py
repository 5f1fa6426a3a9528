"""TargetCheckpoint: checkpoints only of the model pruned to every writer's final target."""

import lightning.pytorch as pl
import torch
from helpers import TinyLM, token_loader, trainer

from lightning_prune import AtEpochs, ScheduledPruning
from lightning_prune.callbacks.checkpoint import TargetCheckpoint


def test_nothing_is_saved_before_the_final_target_and_the_best_after_it(tmp_path):
    pl.seed_everything(0, verbose=False)
    pruning = ScheduledPruning(AtEpochs({1: 0.3, 2: 0.6}))
    best = TargetCheckpoint(dirpath=tmp_path, monitor="val_loss", mode="min", save_top_k=1, filename="{epoch}")
    t = trainer(callbacks=[pruning, best], max_epochs=4, enable_checkpointing=True)
    t.fit(TinyLM(), token_loader(), val_dataloaders=token_loader(n=16))
    saved = sorted(p.name for p in tmp_path.iterdir())
    assert len(saved) == 1 and saved[0] in ("epoch=2.ckpt", "epoch=3.ckpt")  # never epoch 0 or 1
    state = torch.load(tmp_path / saved[0], weights_only=False)
    keep = state["callbacks"][pruning.state_key]
    assert keep["sparsity"] == 0.6


def test_sparsity_is_monitorable_and_in_the_progress_bar(tmp_path):
    pl.seed_everything(0, verbose=False)
    pruning = ScheduledPruning(AtEpochs({1: 0.5}))
    t = trainer(callbacks=[pruning], max_epochs=2)
    t.fit(TinyLM(), token_loader())
    assert float(t.callback_metrics["sparsity/global"]) == 0.5
    assert float(t.callback_metrics["sparsity/target"]) == 0.5
    assert "sparsity/global" in t.progress_bar_metrics  # shown while it trains, one metric (no _step/_epoch)

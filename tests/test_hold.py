"""HoldMasks: masks from a checkpoint or another run held on any LightningModule, through every step."""

import lightning.pytorch as pl
import pytest
import torch
from helpers import TinyLM, token_loader, trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn

from lightning_prune import AtEpochs, HoldMasks, ScheduledPruning
from lightning_prune.callbacks.hold import checkpoint_masks, place_masks


class AfterEveryStep(Callback):
    """Pruned entries exactly zero in the weights and AdamW's moments after every step; the kept ones train."""

    def __init__(self, masks, params):
        self.masks, self.params, self.steps = masks, params, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        state = trainer.optimizers[0].state
        for f, keep in self.masks.items():
            p = self.params[f]
            assert torch.count_nonzero(p.detach()[~keep]) == 0, f
            assert torch.count_nonzero(state[p]["exp_avg"][~keep]) == 0, f
            assert torch.count_nonzero(p.detach()[keep]) == keep.sum()  # the kept ones still train
        self.steps += 1


def test_masks_hold_after_every_step_through_adamw_and_weight_decay():
    torch.manual_seed(0)
    model = TinyLM("adamw", lr=1e-2, weight_decay=0.1)
    fqns = ["blocks.0.fc1.weight", "blocks.1.attn.out_proj.weight"]  # out_proj: read without calling forward
    params = dict(model.named_parameters())
    masks = {
        f: torch.rand(params[f].shape, generator=torch.Generator().manual_seed(i)) > 0.5 for i, f in enumerate(fqns)
    }
    check = AfterEveryStep(masks, params)
    trainer(max_epochs=2, callbacks=[HoldMasks(masks), check]).fit(model, token_loader())
    assert check.steps == 16


class Wrapped(pl.LightningModule):
    """Another LightningModule holding the same network under ``inner``."""

    def __init__(self, net: TinyLM):
        super().__init__()
        self.inner = net

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.inner(x).flatten(0, 1), y.flatten())

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=0.1)


def test_a_pruning_runs_checkpoint_is_held_on_another_module(tmp_path):
    pl.seed_everything(0, verbose=False)
    pruning = ScheduledPruning(AtEpochs({1: 0.5}))
    save = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer(callbacks=[pruning, save], max_epochs=2, enable_checkpointing=True).fit(TinyLM(), token_loader())
    saved = checkpoint_masks(tmp_path / "last.ckpt")
    assert saved.keys() == pruning.masks.keys()
    net = TinyLM()
    net.load_state_dict(torch.load(tmp_path / "last.ckpt", weights_only=False)["state_dict"])
    module = Wrapped(net)
    hold = HoldMasks(checkpoint=tmp_path / "last.ckpt")  # names of TinyLM's, placed under `inner.`
    check = AfterEveryStep({f"inner.{f}": m for f, m in saved.items()}, dict(module.named_parameters()))
    trainer(callbacks=[hold, check], max_epochs=1).fit(module, token_loader())
    assert check.steps == 8 and set(hold.masks) == {f"inner.{f}" for f in saved}


def test_a_resume_holds_the_checkpoints_masks(tmp_path):
    torch.manual_seed(0)
    model = TinyLM()
    masks = {"blocks.0.fc2.weight": torch.rand(16, 64, generator=torch.Generator().manual_seed(0)) > 0.3}
    save = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer(callbacks=[HoldMasks(masks), save], max_epochs=1, enable_checkpointing=True).fit(model, token_loader())
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)["callbacks"]["HoldMasks"]
    assert state["packed"] == ["blocks.0.fc2.weight"]  # one bit per entry in the checkpoint
    resumed, params = TinyLM(), None
    other = {"blocks.0.fc2.weight": torch.ones(16, 64, dtype=torch.bool)}  # replaced by the checkpoint's masks
    hold = HoldMasks(other)
    params = dict(resumed.named_parameters())
    check = AfterEveryStep(masks, params)
    trainer(callbacks=[hold, check], max_epochs=2).fit(resumed, token_loader(), ckpt_path=tmp_path / "last.ckpt")
    assert check.steps == 8 and torch.equal(hold.masks["blocks.0.fc2.weight"], masks["blocks.0.fc2.weight"])


def test_masks_that_fit_no_placement_are_refused():
    names = {"a.0.weight": (2, 2), "a.1.weight": (3, 2)}
    assert set(place_masks({"0.weight": torch.ones(2, 2, dtype=torch.bool)}, names)) == {"a.0.weight"}
    assert set(place_masks({"m.0.weight": torch.ones(2, 2, dtype=torch.bool)}, names)) == {"a.0.weight"}
    with pytest.raises(ValueError, match=r"do not fit.*0\.weight \(3, 3\)"):
        place_masks({"0.weight": torch.ones(3, 3, dtype=torch.bool)}, names)
    with pytest.raises(ValueError, match="needs masks"):
        HoldMasks()
    with pytest.raises(ValueError, match="do not fit"):
        trainer(callbacks=[HoldMasks({"nope.weight": torch.ones(2, dtype=torch.bool)})], max_epochs=1).fit(
            TinyLM(), token_loader()
        )

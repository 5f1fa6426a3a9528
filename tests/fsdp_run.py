"""A pruning run under ``ModelParallelStrategy`` (FSDP2, 2 CPU processes over gloo); used by tests/test_fsdp.py.

The GPT-2 is created and sharded in ``configure_model``, after the callbacks' ``setup``, so the callbacks must find
the parameters that really train. Each process writes the full (gathered, for the test only) masks, weights,
statistics and the scores of every pruning event to ``OUT/MODE.rank{r}.pt``.

Run as ``python tests/fsdp_run.py OUT MODE [single]`` with MODE ``full`` (8 steps), ``first`` (4 steps: one epoch, then
a checkpoint: distributed, or one file with ``single``), ``resume`` (from that checkpoint to step 8) or ``neurons``
(``full`` with half the feed-forward neurons removed at step 1 as well).
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.utils.data import DataLoader, TensorDataset
from transformers import GPT2Config, GPT2LMHeadModel

from lightning_prune import AtSteps, ImportanceTracking, NeuronPruning, ScheduledPruning

VOCAB, BLOCK = 64, 16


class ShardedGPT2(pl.LightningModule):
    """A tiny GPT-2 built in ``configure_model`` and sharded block by block with ``fully_shard``."""

    def __init__(self) -> None:
        super().__init__()
        self.model: GPT2LMHeadModel | None = None
        self.probe: torch.nn.ModuleList | None = None  # a Linear(32, 1): its one row leaves rank 1's shard empty

    def configure_model(self) -> None:
        if self.model is not None:
            return
        from torch.distributed.fsdp import fully_shard

        torch.manual_seed(0)
        config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=BLOCK, n_inner=64)
        config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.0  # no dropout: a resume replays exactly
        self.model = GPT2LMHeadModel(config)
        self.probe = torch.nn.ModuleList([torch.nn.ModuleDict({"out": torch.nn.Linear(32, 1)})])  # a block
        mesh = self.device_mesh["data_parallel"]
        for block in self.model.transformer.h:
            fully_shard(block, mesh=mesh)
        fully_shard(self.model, mesh=mesh)
        fully_shard(self.probe[0]["out"], mesh=mesh)

    def training_step(self, batch: tuple[torch.Tensor], batch_idx: int) -> torch.Tensor:
        (x,) = batch
        out = self.model(input_ids=x, labels=x, output_hidden_states=True)
        return out.loss + 0.01 * self.probe[0]["out"](out.hidden_states[-1]).square().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=0.1)


class RecordingPruning(ScheduledPruning):
    """Keeps the full scores of every pruning event (gathered here for the test; the library never gathers)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.recorded: list[dict[str, torch.Tensor]] = []

    def scores(self, stats):
        scores = super().scores(stats)
        self.recorded.append({f: self.registry.layout(f).wrap(s).full_tensor().cpu() for f, s in scores.items()})
        return scores


class StopAt(pl.Callback):
    """Stops the run after ``step`` optimizer steps, as an interrupted job would."""

    def __init__(self, step: int | None) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.step is not None and trainer.global_step >= self.step:
            trainer.should_stop = True


def loader() -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randint(0, VOCAB, (64, BLOCK), generator=gen)), batch_size=8)


def full(registry, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f: registry.layout(f).wrap(t).full_tensor().cpu() for f, t in tensors.items()}


def run(out: Path, mode: str, distributed: bool = True) -> None:
    pl.seed_everything(0, verbose=False)
    tracking = ImportanceTracking(stats=("taylor",))
    pruning = RecordingPruning(AtSteps({2: 0.3, 6: 0.5}), criterion="taylor")
    neurons = [NeuronPruning(AtSteps({1: 0.5}), "taylor")] if mode == "neurons" else []
    saving = (
        [ModelCheckpoint(dirpath=out, filename="first", every_n_train_steps=4, save_top_k=1)] if mode == "first" else []
    )
    strategy = ModelParallelStrategy(
        data_parallel_size=2, tensor_parallel_size=1, save_distributed_checkpoint=distributed
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_steps=8,
        callbacks=[tracking, *neurons, pruning, StopAt(4 if mode == "first" else None), *saving],
        logger=False,
        enable_checkpointing=bool(saving),
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    module = ShardedGPT2()
    ckpt = out / "first.ckpt"
    trainer.fit(module, loader(), ckpt_path=ckpt if mode == "resume" else None)
    registry = pruning.registry
    params = {f: registry.params[f] for f in pruning.masks}
    state = {
        "masks": full(registry, pruning.masks),
        "weights": {f: p.full_tensor().detach().cpu() for f, p in params.items()},
        "is_dtensor": all(type(p).__name__ == "DTensor" for p in params.values()),
        "local_numel": sum(registry.local(f).numel() for f in params),
        "taylor": full(registry, {f: tracking.stats.value("taylor", f) for f in tracking.fqns}),
        "steps": tracking.stats.steps,
        "scores": pruning.recorded,
        "sparsity": pruning.sparsity,
        "events": pruning.events,
        "removed": neurons[0].removed() if neurons else 0.0,
        "union": full(registry, registry.keep),
        "all_weights": {f: registry.params[f].full_tensor().detach().cpu() for f in registry.keep},
    }
    torch.save(state, out / f"{mode}.rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    run(Path(sys.argv[1]), sys.argv[2], distributed=sys.argv[3:] != ["single"])

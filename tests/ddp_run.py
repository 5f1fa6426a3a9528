"""A pruning run under DDP that saves each process's masks and statistics; used by tests/test_ddp.py.

The criterion scores differently on every process, so equal masks prove they come from one process.

Run as a script (``python tests/ddp_run.py OUT_DIR STRATEGY``) so that plain ``"ddp"`` can relaunch it.
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

import lightning.pytorch as pl
import torch
from helpers import TinyLM, token_loader
from lightning.pytorch.callbacks import Callback

from lightning_prune import AtEpochs, ImportanceTracking, ScheduledPruning


class RankNoise:
    """Scores that differ on every process: only the broadcast from rank 0 can make the masks agree. It asks the
    tracker for ``input_norm`` too, a statistic each process gathers from its own batches."""

    stats = ("taylor", "input_norm")

    def __call__(self, fqn: str, weight: torch.Tensor, stats: object) -> torch.Tensor:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        gen = torch.Generator().manual_seed(1000 * rank + zlib.crc32(fqn.encode()))
        return torch.rand(weight.shape, generator=gen).to(weight.device)


class SaveRankState(Callback):
    def __init__(self, tracking: ImportanceTracking, pruning: ScheduledPruning, out: str) -> None:
        self.tracking, self.pruning, self.out = tracking, pruning, out
        self.input_norms: list[dict[str, torch.Tensor]] = []  # as the pruning events read them

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if len(self.pruning.events) > len(self.input_norms):
            self.input_norms.append({f: t.clone() for f, t in self.tracking.stats.state["input_norm"].items()})

    def on_train_end(self, trainer, pl_module):
        state = {
            "masks": {f: m.cpu() for f, m in self.pruning.masks.items()},
            "taylor": {f: self.tracking.stats.value("taylor", f).cpu() for f in self.tracking.fqns},
            "weights": {f: p.detach().cpu() for f, p in self.pruning._params.items()},
            "steps": self.tracking.stats.steps,
            "input_norms": self.input_norms,
            "own_scores": {f: RankNoise()(f, p, None) for f, p in self.pruning._params.items()},
        }
        torch.save(state, Path(self.out) / f"rank{trainer.global_rank}.pt")


def run(out: str, strategy: str) -> None:
    pl.seed_everything(0, verbose=False)
    torch.manual_seed(trainer_rank_seed())  # under "ddp" each process runs this script: inits differ, DDP syncs them
    tracking = ImportanceTracking()
    pruning = ScheduledPruning(AtEpochs({1: 0.3, 2: 0.6}), criterion=RankNoise())
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_epochs=3,
        callbacks=[tracking, pruning, SaveRankState(tracking, pruning, out)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(TinyLM(), token_loader(n=64))


def trainer_rank_seed() -> int:
    import os

    return int(os.environ.get("LOCAL_RANK", "0"))


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2])

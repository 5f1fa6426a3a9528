"""The prepared GPU check: one script, about 6 minutes on one GPU, that measures what CPUs cannot show.

Sections (each runs even if an earlier one failed; its error is recorded):

- ``event``: exact global selection (``compute_masks``) on CUDA scores of 10 M, 100 M and 300 M entries, beside one
  ``torch.kthvalue`` over the same scores concatenated (the floor), time and peak extra GPU memory;
- ``precision``: a tiny GPT-2 config trained with ``ImportanceTracking`` + ``ScheduledPruning`` under ``bf16-mixed`` and
  ``16-mixed`` with a fused AdamW: measured sparsity equals the target, pruned entries exactly zero; and the tracker's
  |g| under ``16-mixed`` + fused AdamW against ``32-true`` (it must read unscaled gradients);
- ``step``: step-time ratio of tracking + pruning against plain training on GPT-2 small in bf16 autocast
  (``benchmarks.scale_step`` on the GPU);
- ``fsdp``: GPT-2 medium (355 M) under ``ModelParallelStrategy`` (FSDP2) at world size 1: the pruned DTensor
  parameters reach the target and stay zero; time per step and of the pruning event.

On the device machine (its image has torch, lightning and transformers), from the repository root:
``python3 -m benchmarks.gpu_check --out $OUT/gpu_check.json``. Writes the JSON (default
``benchmarks/results/gpu_check.json``) and prints it.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import RESULTS, write_json

__all__ = ["main"]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start, out


def event() -> dict[str, Any]:
    from benchmarks.scale import make_scores
    from lightning_prune.masks import compute_masks

    rows = {}
    for size in (10_000_000, 100_000_000, 300_000_000):
        scores = {f: s.cuda() for f, s in make_scores(size).items()}
        n = sum(s.numel() for s in scores.values())
        compute_masks({f: s[:8] for f, s in list(scores.items())[:2]}, 0.5)  # warm-up
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        seconds, masks = timed(lambda scores=scores: compute_masks(scores, 0.6, "global"))
        extra = torch.cuda.max_memory_allocated() - base
        pruned = sum(int((~m).sum()) for m in masks.values())
        del masks
        flat = torch.cat([s.flatten() for s in scores.values()])
        k = round(0.6 * n)
        floor, _ = timed(lambda flat=flat, k=k: torch.kthvalue(flat, k))
        rows[str(n)] = {
            "compute_masks_s": seconds,
            "kthvalue_floor_s": floor,
            "ratio": seconds / floor,
            "extra_bytes_over_score_bytes": extra / (4 * n),
            "exact": pruned == round(0.6 * n),
        }
        del flat, scores
        torch.cuda.empty_cache()
    return rows


def precision() -> dict[str, Any]:
    import lightning.pytorch as pl

    from benchmarks.harness import GPT2Module, gpt2, random_ids_loader
    from lightning_prune import AtSteps, ImportanceTracking, ScheduledPruning

    class Fused(GPT2Module):
        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=0.1, fused=True)

    out: dict[str, Any] = {}
    for prec in ("bf16-mixed", "16-mixed", "32-true"):
        pl.seed_everything(0, verbose=False)
        tracking = ImportanceTracking(stats=("taylor", "abs_grad"), decay=0.0)
        pruning = ScheduledPruning(AtSteps({4: 0.5}), criterion="taylor")
        trainer = pl.Trainer(
            accelerator="gpu", devices=1, precision=prec, max_steps=8, callbacks=[tracking, pruning], logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        )  # fmt: skip
        model = Fused(gpt2(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16))
        trainer.fit(model, random_ids_loader(64, steps=8, batch=8, seq=16, seed=0))
        params = dict(model.named_parameters())
        total = sum(m.numel() for m in pruning.masks.values())
        zeros = sum(int((params[f] == 0).sum()) for f in pruning.masks)
        held = all(bool(torch.all(params[f][~m] == 0)) for f, m in pruning.masks.items())
        grad = sum(tracking.stats.value("abs_grad", f).sum().item() for f in tracking.fqns)
        out[prec] = {"sparsity": zeros / total, "target": 0.5, "pruned_exactly_zero": held, "sum_abs_grad": grad}
    out["16-mixed_abs_grad_over_32-true"] = out["16-mixed"]["sum_abs_grad"] / out["32-true"]["sum_abs_grad"]
    return out


def step() -> dict[str, Any]:
    from benchmarks.scale_step import run

    args = argparse.Namespace(
        quick=False, layers=12, width=768, device="cuda", bf16=True, batch=16, seq=512, rounds=6, steps=5,
        sparsity=0.5, threads=8,
    )  # fmt: skip
    return run(args)


def fsdp() -> dict[str, Any]:
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import ModelParallelStrategy
    from torch.utils.data import DataLoader, TensorDataset
    from transformers import GPT2Config

    from lightning_prune import AtSteps, ImportanceTracking, ScheduledPruning

    config = GPT2Config(n_layer=24, n_embd=1024, n_head=16, vocab_size=50257, n_positions=1024)
    seconds: dict[str, float] = {}

    class Medium(pl.LightningModule):
        """GPT-2 medium built in ``configure_model`` and sharded block by block with ``fully_shard``."""

        def __init__(self) -> None:
            super().__init__()
            self.model = None

        def configure_model(self) -> None:
            if self.model is not None:
                return
            from torch.distributed.fsdp import fully_shard
            from transformers import GPT2LMHeadModel

            self.model = GPT2LMHeadModel(config)
            mesh = self.device_mesh["data_parallel"]
            for block in self.model.transformer.h:
                fully_shard(block, mesh=mesh)
            fully_shard(self.model, mesh=mesh)

        def training_step(self, batch, batch_idx):
            (x,) = batch
            return self.model(input_ids=x, labels=x).loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=0.1)

    def full(registry, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The full (gathered) tensors of sharded ones."""
        return {f: registry.layout(f).wrap(t).full_tensor().cpu() for f, t in tensors.items()}

    class Timed(ScheduledPruning):
        def prune(self, trainer, target):
            seconds["event"], _ = timed(lambda: super(Timed, self).prune(trainer, target))

    class Clock(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            torch.cuda.synchronize()
            seconds.setdefault("starts", []).append(time.perf_counter())

    ids = torch.randint(0, config.vocab_size, (64, 512))
    pruning = Timed(AtSteps({3: 0.5}), criterion="taylor")
    trainer = pl.Trainer(
        accelerator="gpu", devices=1, strategy=ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1),
        max_steps=8, callbacks=[ImportanceTracking(stats=("taylor",)), pruning, Clock()], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    module = Medium()
    trainer.fit(module, DataLoader(TensorDataset(ids), batch_size=8))
    masks = full(pruning.registry, pruning.masks)
    weights = {f: pruning.registry.params[f].full_tensor() for f in masks}
    total = sum(m.numel() for m in masks.values())
    starts = seconds["starts"]
    return {
        "parameters": sum(p.numel() for p in module.parameters()),
        "sparsity": sum(int((w == 0).sum()) for w in weights.values()) / total,
        "pruned_exactly_zero": all(
            bool(torch.all(weights[f][~m.to(weights[f].device)] == 0)) for f, m in masks.items()
        ),
        "is_dtensor": all(type(pruning.registry.params[f]).__name__ == "DTensor" for f in masks),
        "step_seconds_after_event": (starts[-1] - starts[4]) / (len(starts) - 5),
        "event_seconds": seconds["event"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu_check.json")
    parser.add_argument("--sections", type=str, default="event,precision,step,fsdp")
    args = parser.parse_args()
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    for name in args.sections.split(","):
        start = time.perf_counter()
        try:
            result[name] = globals()[name]()
        except Exception:  # one failing section must not hide the others
            result[name] = {"error": traceback.format_exc()[-3000:]}
        result[name]["wall_seconds"] = time.perf_counter() - start
        write_json(args.out, result, default=str)
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()

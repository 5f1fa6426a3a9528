"""Loss against sparsity: the sweep of "Systematic Weight Evaluation for Pruning LLMs" (arXiv 2502.17071).

The main recipe's model and data (``recipes/main.yaml``, read through the ``lightning-prune`` CLI) are trained
dense **once** with :class:`~lightning_prune.ImportanceTracking`; the checkpoint after ``--dense-epochs`` holds the
weights, the optimizer and the tracker's running statistics. For every target sparsity the run is resumed from
that checkpoint with a fresh ``ScheduledPruning(OneShot(s, at=dense_epochs))`` (criterion ``--criterion``,
global, unstructured), which prunes on the first recovery step from the statistics gathered over the whole dense
run, and trained ``--recovery-epochs`` more with the masks held. Sparsity 0 gets the same recovery epochs, so
every point has seen the same number of steps. The learning-rate schedule of the dense run is planned for
``dense + recovery`` epochs, so every resumed run continues the same warm-up + cosine curve.

Recorded per sparsity: validation loss and perplexity after the recovery, and the validation loss right after
the one-shot prune with no recovery (the same masks, computed from the checkpoint's statistics).

"Loss rises sharply" at the first sparsity s_k (k >= 2) whose slope slope_k = (L_k - L_{k-1}) / (s_k - s_{k-1})
is more than ``SHARP_RATIO`` = 2 times max(slope_{k-1}, ``SHARP_FLOOR`` · L_0), with L_0 the loss at sparsity 0
and ``SHARP_FLOOR`` = 0.05 per unit of sparsity: the slope at least doubles, and the loss climbs by more than 1 % of
L_0 per 10 points. Without the floor, noise on the flat start (slopes near or below 0) would count as sharp.

Run (about 12 minutes on 2 uncontended cores):
    python recipes/sweep.py                                  # 0, 10, ..., 90 %
    python recipes/sweep.py --criterion time_weighted        # the paper's time-weighted |w|
Writes ``runs/sweep/sweep.json`` and ``runs/sweep/sweep.png`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lightning_prune import ImportanceTracking, OneShot, ScheduledPruning, get_criterion
from lightning_prune._selection import select_parameters
from lightning_prune.callbacks.report import format_table
from lightning_prune.cli import cli
from lightning_prune.masks import apply_masks_, compute_masks, sparsity_report
from lightning_prune.trackers import RunningStats

__all__ = ["main", "sharp_rise"]

RECIPE = Path(__file__).resolve().with_name("main.yaml")
SHARP_RATIO = 2.0  # sharp: a slope more than twice the previous one ...
SHARP_FLOOR = 0.05  # ... and more than twice this fraction of the dense loss per unit of sparsity
QUICK = [  # tests: a one-layer model on the small pydoc corpus, a few batches
    "--data.source=pydoc",
    "--data.batch_size=4",
    "--model.init_args.n_layer=1",
    "--model.init_args.n_embd=32",
    "--model.init_args.warmup_steps=2",
    "--trainer.limit_val_batches=2",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[i / 10 for i in range(10)])
    parser.add_argument("--dense-epochs", type=int, default=3, help="dense epochs before the checkpoint")
    parser.add_argument("--recovery-epochs", type=int, default=1, help="epochs after the one-shot prune")
    parser.add_argument("--limit-train-batches", type=int, default=100, help="steps per epoch (main.yaml: 180)")
    parser.add_argument("--criterion", default="running_magnitude", help="a name of lightning_prune.CRITERIA")
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"))
    parser.add_argument("--quick", action="store_true", help="tiny model and data, 2 steps per epoch (tests)")
    args = parser.parse_args(argv)
    if args.quick:
        args.limit_train_batches = 2
        if argv is None or "--sparsities" not in argv:
            args.sparsities = [0.0, 0.5, 0.9]
    if sorted(set(args.sparsities)) != args.sparsities or args.sparsities[0] != 0.0:
        raise SystemExit(f"--sparsities must start at 0 and increase, got {args.sparsities}.")
    get_criterion(args.criterion)  # an unknown name fails here, before any training
    return args


def build(args: argparse.Namespace) -> tuple[pl.LightningModule, pl.LightningDataModule, dict[str, Any], dict]:
    """Model, data, Trainer settings and tracker settings of the main recipe, with this script's overrides."""
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # argv is this script's, not the CLI's
    c = cli(["--config", str(RECIPE), "--trainer.logger=false", *(QUICK if args.quick else [])], run=False)
    trainer_kwargs = c.config.trainer.as_dict()
    for key in ("callbacks", "logger", "max_epochs", "default_root_dir", "enable_checkpointing"):
        trainer_kwargs.pop(key)  # set per run below
    trainer_kwargs.update(
        limit_train_batches=args.limit_train_batches,  # 100, not main.yaml's 180: 11 runs (1300 steps) in ~10 min
        enable_progress_bar=False,  # 11 fits: one line each instead
        enable_model_summary=False,
    )
    if not torch.cuda.is_available():
        trainer_kwargs["precision"] = "32-true"  # bf16 autocast is emulated on AVX2-only CPUs: 8x slower here
    tracking = next(cb for cb in c.trainer.callbacks if isinstance(cb, ImportanceTracking))
    keys = ("decay", "every", "dtype", "window", "weighting")
    tracking_kwargs = {k: getattr(tracking, k) for k in keys}  # main.yaml's tracker settings
    tracking_kwargs["stats"] = get_criterion(args.criterion).stats or None  # kept from the first dense step on
    return copy.deepcopy(c.model), c.datamodule, trainer_kwargs, tracking_kwargs


class StopAfterEpochs(Callback):
    """Stop fitting after ``epochs`` epochs, so the LR schedule can be planned for a longer run."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.should_stop = trainer.should_stop or trainer.current_epoch + 1 >= self.epochs


@torch.no_grad()
def prune_from_checkpoint_(
    model: pl.LightningModule, ckpt: Path, sparsity: float, criterion: str, tracking: dict[str, Any]
) -> float:
    """Load the dense checkpoint into ``model`` and prune it as the sweep's ``ScheduledPruning`` does on its first
    step (same statistics, criterion, global unstructured masks); returns the measured sparsity."""
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    model.load_state_dict(state["state_dict"])
    params = {f: p for f, (_, p) in select_parameters(model).items()}
    saved = state["callbacks"]["ImportanceTracking"]
    stats = RunningStats(params, saved["stats"], window=tracking["window"], weighting=tracking["weighting"])
    stats.load_state_dict(saved)
    crit = get_criterion(criterion)
    masks = compute_masks({f: crit(f, p, stats).float() for f, p in params.items()}, sparsity)
    apply_masks_(params, {f: ~m for f, m in masks.items()})
    return sparsity_report(params)[0]


def sharp_rise(sparsities: list[float], losses: list[float]) -> int | None:
    """Index of the first point whose slope exceeds ``SHARP_RATIO`` × max(previous slope, floor); see the top."""
    floor = SHARP_FLOOR * losses[0]
    slopes = [(losses[k] - losses[k - 1]) / (sparsities[k] - sparsities[k - 1]) for k in range(1, len(losses))]
    for k in range(1, len(slopes)):
        if slopes[k] > SHARP_RATIO * max(slopes[k - 1], floor):
            return k + 1  # slopes[k] ends at point k + 1
    return None


def run_point(
    s: float, args: argparse.Namespace, base: pl.LightningModule, data: pl.LightningDataModule, setup: tuple
) -> dict[str, float]:
    """Resume from the dense checkpoint, prune one-shot to sparsity ``s``, recover; validation figures."""
    kwargs, tracking, ckpt = setup
    oneshot = copy.deepcopy(base)
    measured_oneshot = prune_from_checkpoint_(oneshot, ckpt, s, args.criterion, tracking)
    no_recovery = pl.Trainer(logger=False, default_root_dir=args.out, **kwargs).validate(oneshot, data, verbose=False)
    model = copy.deepcopy(base)
    pruning = ScheduledPruning(OneShot(s, at=args.dense_epochs, unit="epoch"), criterion=args.criterion)
    trainer = pl.Trainer(
        max_epochs=args.dense_epochs + args.recovery_epochs,
        callbacks=[ImportanceTracking(**tracking), pruning],
        logger=False,
        enable_checkpointing=False,
        default_root_dir=args.out,
        **kwargs,
    )
    trainer.fit(model, data, ckpt_path=ckpt)
    params = {f: p.detach() for f, (_, p) in select_parameters(model).items()}
    return {
        "target": s,
        "sparsity": sparsity_report(params)[0],
        "sparsity_one_shot": measured_oneshot,
        "val_loss": float(trainer.callback_metrics["val/loss"]),
        "val_ppl": float(trainer.callback_metrics["val/ppl"]),
        "val_loss_no_recovery": float(no_recovery[0]["val/loss"]),
        "steps": trainer.global_step,
    }


def table(rows: list[dict[str, float]], sharp: int | None, recovery_epochs: int) -> str:
    header = (
        "target",
        "measured sparsity",
        "val loss, no recovery",
        f"val loss, {recovery_epochs} recovery ep.",
        "val ppl",
        "Δ loss vs 0 %",
    )
    out = [header]
    for i, r in enumerate(rows):
        delta = f"{r['val_loss'] - rows[0]['val_loss']:+.4f}" + ("  ← sharp rise" if i == sharp else "")
        out.append(
            (
                f"{r['target']:.0%}",
                f"{r['sparsity']:.2%}",
                f"{r['val_loss_no_recovery']:.4f}",
                f"{r['val_loss']:.4f}",
                f"{r['val_ppl']:.2f}",
                delta,
            )
        )
    return format_table(out)


def plot(rows: list[dict[str, float]], sharp: dict[str, int | None], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["target"] * 100 for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label, color in (
        ("val_loss", "after recovery", "tab:blue"),
        ("val_loss_no_recovery", "no recovery", "tab:gray"),
    ):
        ax.plot(x, [r[key] for r in rows], "o-", color=color, label=label)
        if sharp[key] is not None:
            ax.axvline(x[sharp[key]], color=color, linestyle="--", label=f"sharp rise ({label}): {x[sharp[key]]:.0f} %")
    ax.set_xlabel("sparsity of the block weights (%)")
    ax.set_ylabel("validation loss (nats/byte)")
    ax.set_title(f"sharp rise: slope > {SHARP_RATIO:g} × max(previous slope, {SHARP_FLOOR:g}·L0 per unit sparsity)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the sweep; returns what it writes to ``<out>/sweep.json``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    base, data, kwargs, tracking = build(args)
    total = args.dense_epochs + args.recovery_epochs
    dense = pl.Trainer(
        max_epochs=total,  # the LR schedule spans dense + recovery; StopAfterEpochs ends this part early
        callbacks=[ImportanceTracking(**tracking), StopAfterEpochs(args.dense_epochs)],
        logger=False,
        enable_checkpointing=False,
        default_root_dir=args.out,
        **kwargs,
    )
    dense.fit(copy.deepcopy(base), data)
    ckpt = args.out / "dense.ckpt"
    dense.save_checkpoint(ckpt)
    dense_seconds = time.perf_counter() - started
    print(f"dense: {dense.global_step} steps, val loss {float(dense.callback_metrics['val/loss']):.4f}", flush=True)
    data.seed += 1  # recovery epochs draw a fresh shuffle instead of replaying the dense run's first batches
    rows = []
    for s in args.sparsities:
        rows.append(run_point(s, args, base, data, (kwargs, tracking, ckpt)))
        print(f"{s:.0%}: {json.dumps(rows[-1])}", flush=True)
    xs = [r["target"] for r in rows]
    sharp = {key: sharp_rise(xs, [r[key] for r in rows]) for key in ("val_loss", "val_loss_no_recovery")}
    result = {
        "recipe": str(RECIPE),
        "criterion": args.criterion,
        "dense_epochs": args.dense_epochs,
        "recovery_epochs": args.recovery_epochs,
        "steps_per_epoch": kwargs["limit_train_batches"],
        "dense_val_loss_at_checkpoint": float(dense.callback_metrics["val/loss"]),
        "rows": rows,
        "sharp_rise": {k: (None if i is None else xs[i]) for k, i in sharp.items()},
        "sharp_rule": f"slope_k > {SHARP_RATIO} * max(slope_k-1, {SHARP_FLOOR} * L_0); slope = loss per unit sparsity",
        "conditions": {
            "precision": kwargs["precision"],
            "torch_num_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "load_average_1_5_15min_at_end": os.getloadavg(),
            "torch": torch.__version__,
        },
        "seconds": {"dense": dense_seconds, "total": time.perf_counter() - started},
    }
    (args.out / "sweep.json").write_text(json.dumps(result, indent=2))
    plot(rows, sharp, args.out / "sweep.png")
    print(table(rows, sharp["val_loss"], args.recovery_epochs))
    s = result["sharp_rise"]
    print(f"sharp rise: after recovery at {s['val_loss']}, without recovery at {s['val_loss_no_recovery']}")
    print(f"wrote {args.out / 'sweep.json'}, {args.out / 'sweep.png'} in {result['seconds']['total']:.0f} s")
    return result


if __name__ == "__main__":
    main()

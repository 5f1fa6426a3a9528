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
those of ``benchmarks.quality`` (:mod:`benchmarks.harness`). Every row runs with several seeds: the seed sets the
fine-tuning data order and every random draw of pruning; the pretrained start is the same. Ratios are to the dense
fine-tuning of the same seed; the summary gives their mean, min–max and standard deviation, and calls a difference
between two rows real only when it exceeds the larger of their min–max spreads. The runs are in
:mod:`benchmarks.transfer_runs`, the summary in :mod:`benchmarks.transfer_summary`.

The pretrained checkpoint is built once and cached under ``benchmarks/results/cache/`` (ignored by git), keyed by the
settings that shape it; a cached one is reused. Run: ``python -m benchmarks.transfer`` (sized for about an hour on
one core; ``--workers 2`` runs two single-thread runs side by side), ``python -m benchmarks.transfer --quick``
(seconds, a smoke test). Writes ``benchmarks/results/transfer.json`` and ``transfer.png`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import hashlib
import json
import math
import multiprocessing
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import (
    DISTILL_TEMPERATURE,
    DISTILL_WEIGHT,
    MP_BEST,
    MP_LTH,
    RESULTS,
    facts,
    perplexity,
    quiet,
    reusable,
    write_json,
)
from benchmarks.methods import ONESHOT_MAG, ONESHOT_WANDA
from benchmarks.transfer_runs import (
    QUICK,
    RUN_FIELDS,
    Config,
    data,
    new_model,
    pretrain,
    pretrain_key,
    pruning_points,
    run,
)
from benchmarks.transfer_summary import plot, summarize, table_md
from lightning_prune._selection import select_parameters
from lightning_prune.data import TextDataModule
from lightning_prune.lm import CausalLM

__all__ = ["main", "parse_args", "plan"]

CACHE = RESULTS / "cache"  # pretrained and dense fine-tuned checkpoints, ignored by git


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
    write_json(args.out, result)
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
    rows: list[dict[str, Any]] = reusable(args.out, asdict(cfg), RUN_FIELDS, "runs") if args.reuse else []
    earlier = json.loads(args.out.read_text())["conditions"]["wall_seconds"] if rows else 0.0
    started -= earlier  # wall time of the runs reused, so the total stays the benchmark's
    done = {(r["method"], r["target"], r["seed"]) for r in rows}
    base = {"cfg": {k: v for k, v in asdict(cfg).items() if k != "extra"}, "pretrained": str(pretrained)}
    dense_paths = {s: args.cache / f"dense-ft-{pretrain_key(cfg)}-{hash_cfg(cfg)}-seed{s}.pt" for s in cfg.seeds}

    def write() -> dict[str, Any]:
        result = report(rows, cfg, args, dm, pre_info, before_ft, time.perf_counter() - started)
        write_json(args.out, result)
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
            "model": f"TinyGPT (benchmarks.harness: pre-LN GPT, nn.Linear layers) n_layer={cfg.n_layer} "
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
            **facts("torch", "lightning", "platform", "cpu_count", "load_average_1_5_15min_at_end"),
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

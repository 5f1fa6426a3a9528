"""Structured pruning to half the parameters while fine-tuning a pretrained model on another text.

A small GPT-2 and a small Llama (byte vocabulary, 4 blocks of width 128; Llama with grouped-query attention) are
pretrained on the King James Bible (cached under ``benchmarks/results/cache/``, ignored by git), then fine-tuned on
the standard library's pydoc topics for the same number of steps and tokens in every row:

* ``dense fine-tuning``: no pruning; its result (same seed) is the teacher of every distillation row (Minitron's
  teacher correction: the teacher has seen the new text; its training is extra compute);
* ``ours[ + distillation]: <criterion>``: :class:`~lightning_prune.StructuredPruning` to 50 % of the parameters on a
  cubic ramp (every dimension the config can shrink: GPT-2 neurons and blocks; Llama neurons, key/value groups,
  blocks and hidden features), criterion ``taylor`` or ``activation`` ordering the units within a dimension, the
  dimensions compared by the loss of their next removal measured on the last 4 training batches (the callback's
  default), with or without :class:`~lightning_prune.Distillation` (logits, α = 0.5, T = 2);
* ``ours + distillation: activation, dimensions by shares``: the same without measured losses
  (``loss_batches=0``): dimensions compared by their shares of the activation statistics, the allocation before
  losses were measured — for comparison, not a candidate for the best of ours;
* ``one-shot activation + FT + distillation (Minitron)``: activation importance from calibration batches of the new
  text, the same allocation to 50 %, the model shrunk before fine-tuning with the same distillation;
* ``ours depth-only`` / ``ours width-only``: ours (taylor + distillation) restricted to blocks / to widths (depth
  reaches only whole blocks: its tolerance is wider and its size is reported as measured);
* ``small shape from scratch``: the shape ours (taylor + distillation, seed 0) exported, randomly initialised and
  trained on the same fine-tuning tokens, and, as a second row, pretrained first with the same pretraining tokens.

Every exported model is measured as plain ``transformers`` loads it (parameters, FLOPs per token, validation
perplexity over every held-out token), and the speed of each exported shape against the dense model on the CPU,
timed interleaved (:mod:`benchmarks.structured_speed`); what the callback adds to a training step and costs per
event (:mod:`benchmarks.structured_overhead`); each run's events in short (``decisions``: what was removed and the
loss per million parameters each candidate removal was measured to cost). Seeds set the fine-tuning data order
and all randomness of a run; the pretrained start is the same.

Run: ``nice -n 10 python -m benchmarks.structured`` (about an hour of CPU: two single-thread runs side by side);
``--quick`` (seconds, a smoke test). Writes ``benchmarks/results/structured.json`` and ``structured.png``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import multiprocessing
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import DISTILL_TEMPERATURE, DISTILL_WEIGHT, RESULTS, facts, quiet, write_json
from benchmarks.structured_overhead import measure_overhead
from benchmarks.structured_runs import (
    DENSE,
    METHODS,
    PRETRAIN_FIELDS,
    QUICK,
    SCRATCH,
    SCRATCH_PRE,
    SHAPE_FROM,
    Config,
    pretrain,
    pretrain_key,
    run,
)
from benchmarks.structured_speed import measure_speed
from benchmarks.structured_summary import plot, summarize, table_md

__all__ = ["main", "parse_args"]

CACHE = RESULTS / "cache"


def parse_args(argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of seconds (tiny models, few steps)")
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--families", nargs="+", choices=["gpt2", "llama"])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS))
    parser.add_argument("--workers", type=int, help="runs side by side, one process each")
    parser.add_argument("--cache", type=Path, help="folder of the pretrained checkpoints (default results/cache)")
    parser.add_argument("--out", type=Path, help="JSON path (default results/structured.json; --quick: a temp file)")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--reuse", action="store_true", help="keep the runs already in --out made with these settings")
    args = parser.parse_args(argv)
    cfg = Config(**QUICK) if args.quick else Config()
    tmp = Path(tempfile.gettempdir())
    args.out = args.out or (tmp / "structured_quick.json" if args.quick else RESULTS / "structured.json")
    args.cache = args.cache or (tmp / "structured_quick_cache" if args.quick else CACHE)
    for name in ("seeds", "families", "methods"):
        if getattr(args, name):
            setattr(cfg, name, tuple(getattr(args, name)))
    if args.workers is not None:
        cfg.workers = args.workers
    return cfg, args


def _pretrain_job(job: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in job["cfg"].items()})
    torch.set_num_threads(cfg.threads)
    quiet(all_warnings=True)
    path, info = pretrain(cfg, job["family"], Path(job["cache"]), job.get("shape"))
    return str(path), info


def execute(fn: Any, jobs: list[dict[str, Any]], workers: int, done: Any) -> None:
    """Run ``fn`` on every job (``workers`` at a time, each in a fresh process), calling ``done(job, result)``."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            done(job, fn(job))
        return
    ctx = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(workers, mp_context=ctx, max_tasks_per_child=1) as pool:
        pending = {pool.submit(fn, job): job for job in jobs}
        for fut in futures.as_completed(pending):
            done(pending[fut], fut.result())


def _announce(row: dict[str, Any]) -> None:
    print(
        f"{row['family']:6s} {row['method']:58s} seed {row['seed']}: ppl {row['val_ppl']:.4f}, "
        f"params {row['params']:,}, {row['seconds']:.0f} s",
        flush=True,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg, args = parse_args(argv)
    quiet(all_warnings=True)
    started = time.perf_counter()
    base = {"cfg": asdict(cfg), "cache": str(args.cache)}
    pre: dict[str, Any] = {}

    def pretrained(suffix: str) -> Any:
        return lambda job, result: pre.update({job["family"] + suffix: {"path": result[0], **result[1]}})

    jobs = [{**base, "family": f, "shape": None} for f in cfg.families]
    execute(_pretrain_job, jobs, cfg.workers, pretrained(""))
    rows: list[dict[str, Any]] = []
    if args.reuse and args.out.exists():
        old = json.loads(args.out.read_text())
        if any(old["conditions"]["config"].get(f) != asdict(cfg)[f] for f in (*PRETRAIN_FIELDS, "steps", "target")):
            raise SystemExit(f"--reuse: {args.out} was measured with other settings; drop --reuse or change --out.")
        rows = [r for r in old["runs"] if r["family"] in cfg.families and r["seed"] in cfg.seeds]
    done_keys = {(r["family"], r["method"], r["seed"]) for r in rows}
    teachers = {
        (f, s): args.cache / f"structured-dense-ft-{f}-{pretrain_key(cfg, f, None)}-seed{s}.pt"
        for f in cfg.families
        for s in cfg.seeds
    }

    def write() -> dict[str, Any]:
        result = report(cfg, args, rows, pre, time.perf_counter() - started)
        write_json(args.out, result)
        return result

    def finished(job: dict[str, Any], row: dict[str, Any]) -> None:
        rows.append(row)
        _announce(row)
        write()

    def jobs_for(methods: list[str], extra: Any = None) -> list[dict[str, Any]]:
        out = []
        for f in cfg.families:
            for s in cfg.seeds:
                for m in methods:
                    if m not in cfg.methods or (f, m, s) in done_keys:
                        continue
                    job = {**base, "family": f, "seed": s, "method": m, "pretrained": pre[f]["path"]}
                    job["teacher"] = str(teachers[f, s])
                    out.append({**job, **(extra(f, s, m) if extra else {})})
        return out

    # 1. dense fine-tuning: the teachers; 2. every pruning row; 3. the small shape from scratch
    dense_jobs = jobs_for([DENSE], lambda f, s, m: {"save_to": str(teachers[f, s])})
    execute(run, dense_jobs, cfg.workers, finished)
    missing = [str(p) for p in teachers.values() if not p.exists()]
    if missing and any(m for m in cfg.methods if "distillation" in m or "Minitron" in m):
        raise SystemExit(f"the dense fine-tuned teachers {missing} are missing: run without --reuse.")
    pruned = [m for m in cfg.methods if m not in (DENSE, SCRATCH, SCRATCH_PRE)]
    execute(run, jobs_for(pruned), cfg.workers, finished)
    if SCRATCH in cfg.methods or SCRATCH_PRE in cfg.methods:
        shapes = {}
        for f in cfg.families:
            source = [r for r in rows if r["family"] == f and r["method"] == SHAPE_FROM]
            if not source:
                raise SystemExit(f"the small shape comes from '{SHAPE_FROM}', which did not run for {f}.")
            shapes[f] = min(source, key=lambda r: r["seed"])["shape"]
        if SCRATCH_PRE in cfg.methods:
            small = [{**base, "family": f, "shape": shapes[f]} for f in cfg.families]
            execute(_pretrain_job, small, cfg.workers, pretrained("-small"))
        small_path = lambda f: pre.get(f + "-small", {}).get("path")  # noqa: E731
        extra = lambda f, s, m: {"shape": shapes[f], "small_pretrained": small_path(f)}  # noqa: E731
        execute(run, jobs_for([SCRATCH, SCRATCH_PRE], extra), cfg.workers, finished)
    result = write()
    result["speed"] = measure_speed(cfg, rows)
    result["overhead"] = measure_overhead(cfg, steps=4, repeats=1) if args.quick else measure_overhead(cfg)
    result["summary"] = summarize(rows, cfg)
    write_json(args.out, result)
    if not args.no_plot and plot(result["summary"], args.out.with_suffix(".png")):
        print(f"wrote {args.out.with_suffix('.png')}")
    print(table_md(result["summary"], result["speed"]))
    print(json.dumps({f: d["goals"] for f, d in result["summary"].items()}, indent=1))
    print(f"wrote {args.out} in {time.perf_counter() - started:.0f} s")
    return result


def report(
    cfg: Config, args: argparse.Namespace, rows: list[dict[str, Any]], pre: dict[str, Any], seconds: float
) -> dict[str, Any]:
    """The JSON document: conditions, pretraining, every run and the summary."""
    return {
        "conditions": {
            "models": {f: pre[f]["shape"] for f in cfg.families if f in pre},
            "pretraining": f"{cfg.pretrain_source}, {cfg.pretrain_steps} steps of "
            f"{cfg.pretrain_batch}×{cfg.block_size} bytes, AdamW lr={cfg.pretrain_lr} "
            f"(warm-up {cfg.pretrain_warmup}, then constant), clipping 1.0",
            "finetuning": f"{cfg.finetune_source}, {cfg.steps} steps of {cfg.batch_size}×{cfg.block_size} bytes "
            f"in every row, AdamW lr={cfg.lr} (from scratch: {cfg.pretrain_lr}), warm-up {cfg.warmup_steps} then "
            f"cosine to 10 %, weight decay {cfg.weight_decay}, clipping 1.0, float32",
            "pruning": f"to {cfg.target:.0%} of the parameters (tolerance {cfg.tolerance:.0%}, depth-only "
            f"{cfg.depth_tolerance:.0%}); cubic ramp from step {cfg.prune_start} to {cfg.prune_end}, an event every "
            f"{cfg.prune_every} steps; one-shot: {cfg.calibration_batches} calibration batches",
            "distillation": f"loss = {1 - DISTILL_WEIGHT:g}·LM + {DISTILL_WEIGHT:g}·T²·KL, "
            f"T = {DISTILL_TEMPERATURE:g}, teacher: the dense fine-tuned model of the same seed",
            "config": asdict(cfg),
            "torch_num_threads_per_run": cfg.threads,
            "workers": cfg.workers,
            **facts("cpu", "torch", "lightning", "platform", "cpu_count", "load_average_1_5_15min_at_end"),
            "wall_seconds": seconds,
            "run_cpu_seconds_total": sum(r.get("cpu_seconds", 0.0) for r in rows),
            "pretraining_cpu_seconds_total": sum(
                p.get("cpu_seconds", 0.0) for p in pre.values() if not p.get("from_cache")
            ),
            "quick": args.quick,
        },
        "pretraining": {k: {kk: vv for kk, vv in v.items() if kk != "path"} for k, v in pre.items()},
        "summary": summarize(rows, cfg),
        "runs": rows,
    }


if __name__ == "__main__":
    main()

"""Overhead of the callbacks: step time and memory of plain training vs ImportanceTracking / ScheduledPruning.

A small GPT-2-shaped model (``transformers`` GPT2Config, random weights, random byte-level token ids) is trained
with AdamW in a minimal LightningModule under four configurations:

* ``plain``: no pruning callback;
* ``tracking fp32``: ``ImportanceTracking()`` (abs_weight + abs_grad EMAs, float32 state, updated every step);
* ``tracking bf16``: the same with ``dtype="bfloat16"`` state;
* ``tracking + pruning``: the same tracking plus ``ScheduledPruning(AtSteps({5: 0.5}), "running_magnitude")``,
  so 50% of the tracked weights are masked from step 5 on and the masks are held on every later step.

Step time: the configurations are trained side by side, step by step: each round starts one ``Trainer.fit`` per
configuration (fresh model from the same seed), each in its own thread, and a baton lets exactly one thread run one
optimizer step at a time, in a fixed rotation (rotated between rounds), so machine noise hits all configurations
alike within a few hundred milliseconds. A timing callback placed first in the callback list takes
``time.perf_counter`` in ``on_train_batch_start`` / ``on_train_batch_end``: forward, backward, the callbacks'
``on_before_optimizer_step`` hooks and ``optimizer.step`` (with the mask-holding post-hook); the other threads are
blocked meanwhile. The first ``warmup`` steps of every fit are discarded (they include the pruning event at step
5), so pruning is measured with its masks held. Reported: median per optimizer step, interquartile range, the
ratio of medians to plain, the median (and quartiles) of the paired ratios step k / plain's step k in the same
rotation, and the range of the ratio over rounds. Beside the wall clock, the CPU time of the process over the same
interval (``time.process_time``; only the stepping thread runs) is reported: it does not count time the process
waits while other jobs hold the cores.

Memory:

* tracker state: ``ImportanceTracking.stats.nbytes()`` over the float32 bytes of the tracked weights
  (Σ numel·4); targets ≤ 2× (float32 state) and ≤ 1× (bfloat16 state). The pruning callback's masks
  (``masks`` and their complement as bool, 2 bytes per weight, and the 0/1 factors in the weight's dtype that hold
  them with one multiply, 4 bytes per float32 weight) are reported beside it;
* peak process memory: each configuration is trained again in a fresh subprocess (a process's peak never
  decreases); reported are that process's peak resident set (``VmHWM`` of /proc/self/status: interpreter,
  libraries, model, data and training) and its growth during ``Trainer.fit`` (peak − resident set just before
  ``fit``): gradients, AdamW state, activations, callback state and temporaries. ``ru_maxrss`` is not used: on
  Linux it survives ``exec`` and would report the forking parent's size.

Profile (:mod:`benchmarks.overhead_profile`; always measured and written to the JSON; printed when a configuration
misses the step-time target):
``RunningStats.update`` and its parts (the finiteness check, |w|, |g|, dtype casts, EMA lerps) and the two
mask-holding passes, each timed alone on the same model's tracked weights and gradients, as a share of the plain
step; beside them, candidate replacement ops (same result on finite values) to show what a change would save.

Threads: ``torch.set_num_threads(1)`` by default (``--threads`` to change), in every process. On a 2-core machine
shared with other jobs, two OpenMP threads per process oversubscribe the cores and the spin-waiting makes steps
several times slower and far noisier; one thread keeps the model and the callbacks' ops on the same footing.

Run: ``python -m benchmarks.overhead`` (about 4-5 minutes on 2 cores), ``python -m benchmarks.overhead --quick``
(about 30 s smoke run). Writes ``benchmarks/results/overhead.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from benchmarks.harness import (
    RESULTS,
    ROOT,
    GPT2Module,
    facts,
    gpt2,
    markdown_table,
    quiet,
    random_ids_loader,
    trainer,
    write_json,
)
from benchmarks.lockstep import StepTimer
from benchmarks.lockstep import lockstep_round as lockstep
from benchmarks.overhead_profile import profile_table, profile_update
from lightning_prune import AtSteps, ImportanceTracking, ScheduledPruning

__all__ = ["Shape", "main"]

TARGET_STEP_RATIO = 1.05  # step time with statistics updated every step, relative to plain
TARGET_STATE_RATIO = {"float32": 2.0, "bfloat16": 1.0}  # tracker bytes / float32 bytes of the tracked weights
PRUNE_AT = 5  # optimizer step of the pruning event in the "tracking + pruning" configuration


@dataclass
class Shape:
    n_layer: int = 4  # transformer blocks
    n_embd: int = 128  # model width (one step ≈ 50-200 ms on 2 cores)
    n_head: int = 4  # attention heads
    vocab_size: int = 256  # byte-level vocabulary: keeps embedding and LM head small
    n_positions: int = 128  # context length
    batch: int = 8  # sequences per optimizer step
    seq: int = 128  # tokens per sequence


# ---- the model and the data ----------------------------------------------------------------------------------


def lm(shape: Shape) -> GPT2Module:
    """A GPT-2 of ``shape`` from a config (random weights), trained by AdamW (lr 1e-3)."""
    return GPT2Module(
        gpt2(
            n_layer=shape.n_layer,
            n_embd=shape.n_embd,
            n_head=shape.n_head,
            vocab_size=shape.vocab_size,
            n_positions=shape.n_positions,
        )
    )


def loader(shape: Shape, steps: int, seed: int) -> DataLoader:
    """``steps`` batches of random token ids, (B, T) each."""
    return random_ids_loader(shape.vocab_size, steps, shape.batch, shape.seq, seed)


# ---- configurations ------------------------------------------------------------------------------------------

CONFIGS: dict[str, Callable[[], list[Callback]]] = {
    "plain": lambda: [],
    "tracking fp32": lambda: [ImportanceTracking()],
    "tracking bf16": lambda: [ImportanceTracking(dtype="bfloat16")],
    "tracking + pruning": lambda: [
        ImportanceTracking(stats=("abs_weight", "abs_grad")),  # the same statistics as "tracking fp32"
        ScheduledPruning(AtSteps({PRUNE_AT: 0.5}), criterion="running_magnitude", log_histograms=False),
    ],
}


def fit_once(
    config: str, shape: Shape, steps: int, timer: Callback, seed: int = 0
) -> tuple[list[Callback], GPT2Module]:
    """Train a fresh model (same seed for every config) for ``steps`` optimizer steps under ``config``."""
    torch.manual_seed(seed)
    module, data, callbacks = lm(shape), loader(shape, steps, seed), CONFIGS[config]()
    trainer(max_steps=steps, callbacks=[timer, *callbacks]).fit(module, data)
    return callbacks, module


# ---- step time, interleaved step by step ---------------------------------------------------------------------


def lockstep_round(order: list[str], shape: Shape, steps: int, seed: int) -> dict[str, tuple[StepTimer, dict]]:
    """Train every config in its own thread, the threads taking turns step by step in ``order``; with each config's
    tracker and mask bytes."""

    def fit(name: str, timer: StepTimer) -> dict[str, int]:
        return state_bytes(*fit_once(name, shape, steps, timer, seed))

    return lockstep(order, fit)


def time_interleaved(shape: Shape, rounds: int, steps: int, warmup: int) -> dict[str, Any]:
    """Per-config step seconds after warm-up, paired per-step ratios to plain, and tracker / mask bytes."""
    names = list(CONFIGS)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    cpu_seconds: dict[str, list[float]] = {n: [] for n in names}
    paired: dict[str, list[float]] = {n: [] for n in names}  # step k of a config / step k of plain, same cycle
    per_round: dict[str, list[float]] = {n: [] for n in names}  # median step of each round
    state: dict[str, dict[str, int]] = {}
    lockstep_round(["plain"], shape, warmup, seed=0)  # untimed: first-call costs of the process (lazy init)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate the order every round
        done = lockstep_round(order, shape, steps, seed=r)
        plain = done["plain"][0].seconds[warmup:]
        for name, (timer, st) in done.items():
            kept = timer.seconds[warmup:]
            seconds[name] += kept
            cpu_seconds[name] += timer.cpu_seconds[warmup:]
            paired[name] += [a / b for a, b in zip(kept, plain)]
            per_round[name].append(statistics.median(kept))
            state[name] = st
        print(
            f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {1e3 * per_round[n][-1]:.0f} ms" for n in names), flush=True
        )
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "paired": paired, "per_round": per_round, "state": state}


def state_bytes(callbacks: list[Callback], module: GPT2Module) -> dict[str, int]:
    """Bytes of the tracker state, of the pruning masks and (float32) of the tracked weights."""
    out = {"tracker": 0, "masks": 0, "tracked_weights_fp32": 0, "tracked_numel": 0}
    for cb in callbacks:
        if isinstance(cb, ImportanceTracking) and cb.stats is not None:
            out["tracker"] = cb.stats.nbytes()
            numel = sum(math.prod(s) for s in cb.stats.shapes.values())
            out["tracked_numel"], out["tracked_weights_fp32"] = numel, 4 * numel
        if isinstance(cb, ScheduledPruning):
            out["masks"] = cb.registry.nbytes() if cb.registry is not None else 0  # every mask of the model
    return out


# ---- peak process memory, one fresh subprocess per config ----------------------------------------------------


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc/self/statm)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """Peak resident set of this process's address space (``VmHWM`` of /proc/self/status).

    Not ``ru_maxrss``: on Linux it survives ``exec``, so a subprocess forked from a large parent reports at least
    the parent's resident set.
    """
    line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024  # kB


def memory_child(config: str, shape: Shape, steps: int) -> dict[str, int]:
    """Run in a fresh process: peak RSS of the process and its growth during ``fit`` (all in bytes)."""
    torch.manual_seed(0)
    module, data = lm(shape), loader(shape, steps, 0)
    fit = trainer(max_steps=steps, callbacks=CONFIGS[config]())
    before = rss_bytes()
    fit.fit(module, data)
    peak = peak_rss_bytes()
    return {"peak_rss": peak, "rss_before_fit": before, "fit_growth": peak - before}


def measure_memory(shape: Shape, steps: int, threads: int) -> dict[str, dict[str, int]]:
    """One fresh subprocess per config (a process's peak never decreases), all at once: each reads its own peak."""
    procs = {
        name: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.overhead",
                "--memory-child",
                name,
                "--memory-steps",
                str(steps),
                "--threads",
                str(threads),
                "--shape",
                json.dumps(asdict(shape)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for name in CONFIGS
    }
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"memory subprocess for {name!r} failed:\n{stderr[-2000:]}")
        out[name] = json.loads(stdout.strip().splitlines()[-1])
    return out


# ---- report ----------------------------------------------------------------------------------------------------


def summarize(timing: dict[str, Any], memory: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    seconds, per_round, state = timing["seconds"], timing["per_round"], timing["state"]
    plain = statistics.median(seconds["plain"])
    plain_cpu = statistics.median(timing["cpu_seconds"]["plain"])
    rows = []
    for name, s in seconds.items():
        q1, med, q3 = statistics.quantiles(s, n=4, method="inclusive")
        round_ratios = [a / b for a, b in zip(per_round[name], per_round["plain"])]
        p1, pmed, p3 = statistics.quantiles(timing["paired"][name], n=4, method="inclusive")
        st = state[name]
        weights = st["tracked_weights_fp32"]
        rows.append(
            {
                "config": name,
                "steps_measured": len(s),
                "median_ms": 1e3 * med,
                "q1_ms": 1e3 * q1,
                "q3_ms": 1e3 * q3,
                "iqr_ms": 1e3 * (q3 - q1),
                "ratio_vs_plain": med / plain,
                "ratio_per_round_min_max": [min(round_ratios), max(round_ratios)],
                "ratio_per_round_median": statistics.median(round_ratios),
                "paired_ratio_median": pmed,
                "paired_ratio_q1_q3": [p1, p3],
                "median_cpu_ms": 1e3 * statistics.median(timing["cpu_seconds"][name]),
                "cpu_ratio_vs_plain": statistics.median(timing["cpu_seconds"][name]) / plain_cpu,
                "tracker_bytes": st["tracker"],
                "mask_bytes": st["masks"],
                "tracked_weight_bytes_fp32": weights,
                "tracker_over_weights": st["tracker"] / weights if weights else 0.0,
                "masks_over_weights": st["masks"] / weights if weights else 0.0,
                **({f"memory_{k}": v for k, v in memory.get(name, {}).items()}),
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    mib = 2**20
    header = [
        "config",
        "median step ms",
        "IQR ms (q1–q3)",
        f"ratio vs plain (target ≤ {TARGET_STEP_RATIO})",
        "paired step ratio median (q1–q3)",
        "ratio range over rounds",
        "CPU-time ratio vs plain",
        "tracker bytes / weight bytes (target ≤ 2 fp32, ≤ 1 bf16)",
        "mask bytes / weight bytes",
        "peak RSS MiB",
        "RSS growth in fit MiB",
    ]
    cells = []
    for r in rows:
        lo, hi = r["ratio_per_round_min_max"]
        pq1, pq3 = r["paired_ratio_q1_q3"]
        memory = [f"{r['memory_peak_rss'] / mib:.0f}", f"{r['memory_fit_growth'] / mib:.0f}"]
        cells.append(
            [
                r["config"],
                f"{r['median_ms']:.1f}",
                f"{r['iqr_ms']:.1f} ({r['q1_ms']:.1f}–{r['q3_ms']:.1f})",
                f"{r['ratio_vs_plain']:.3f}",
                f"{r['paired_ratio_median']:.3f} ({pq1:.3f}–{pq3:.3f})",
                f"{lo:.3f}–{hi:.3f}",
                f"{r['cpu_ratio_vs_plain']:.3f}",
                f"{r['tracker_over_weights']:.2f}",
                f"{r['masks_over_weights']:.2f}",
                *(memory if "memory_peak_rss" in r else ["–", "–"]),
            ]
        )
    return markdown_table(header, cells)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~30 s smoke run (1 round, short fits)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads in every process (see above)")
    parser.add_argument("--rounds", type=int, default=None, help="lockstep rounds (default 4, quick 1)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per fit (default 40, quick 14)")
    parser.add_argument("--warmup", type=int, default=6, help="steps discarded at the start of every fit")
    parser.add_argument("--memory-steps", type=int, default=None, help="steps per memory subprocess (10, quick 8)")
    parser.add_argument("--profile-repeats", type=int, default=None, help="repeats per profiled op (30, quick 5)")
    parser.add_argument("--shape", type=str, default=None, help="Shape as JSON, e.g. '{\"n_embd\": 128}'")
    parser.add_argument("--out", type=Path, default=RESULTS / "overhead.json")
    parser.add_argument("--memory-child", type=str, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    defaults = {"rounds": (4, 1), "steps": (40, 14), "memory_steps": (10, 8), "profile_repeats": (30, 5)}
    for k, (full, quick) in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, quick if args.quick else full)
    if args.warmup <= PRUNE_AT or args.steps <= args.warmup:
        raise ValueError(
            f"need {PRUNE_AT} < warmup < steps (pruning event before measuring), got "
            f"warmup={args.warmup}, steps={args.steps}."
        )
    if args.memory_steps <= PRUNE_AT + 1:
        raise ValueError(
            f"need memory-steps > {PRUNE_AT + 1} (steps with masks held after the pruning event at step "
            f"{PRUNE_AT}), got {args.memory_steps}."
        )
    return args


def main() -> None:
    args = parse_args()
    quiet(all_warnings=True)
    torch.set_num_threads(args.threads)
    shape = Shape(**json.loads(args.shape)) if args.shape else Shape()
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, shape, args.memory_steps)))
        return
    started, load_start = time.perf_counter(), os.getloadavg()
    timing = time_interleaved(shape, args.rounds, args.steps, args.warmup)
    memory = measure_memory(shape, args.memory_steps, args.threads)
    torch.manual_seed(0)
    module = lm(shape)
    profile = profile_update(module, torch.randint(0, shape.vocab_size, (shape.batch, shape.seq)), args.profile_repeats)
    rows = summarize(timing, memory)
    plain_ms = rows[0]["median_ms"]
    missed = [r["config"] for r in rows if r["ratio_vs_plain"] > TARGET_STEP_RATIO]
    result = {
        "conditions": {
            "device": "cpu",
            **facts("cpu", "torch_num_threads", "torch", "lightning", "python"),
            "load_average_1_5_15min_start_end": [load_start, os.getloadavg()],
            **facts("platform"),
            "model": {"class": "GPT2LMHeadModel", **asdict(shape)},
            "parameters": sum(p.numel() for p in lm(shape).parameters()),
            "optimizer": "AdamW(lr=1e-3), float32",
            "rounds": args.rounds,
            "steps_per_fit": args.steps,
            "warmup_steps_discarded_per_fit": args.warmup,
            "pruning": f"ScheduledPruning(AtSteps({{{PRUNE_AT}: 0.5}}), 'running_magnitude'), measured after it",
            "timing": "one Trainer.fit per config per round, each in its own thread, the threads taking turns "
            "step by step (order rotated each round); perf_counter from on_train_batch_start to "
            "on_train_batch_end; median and quartiles of all steps after warm-up; ratio = median / plain "
            "median; paired ratio = step k of a config / step k of plain in the same rotation",
            "memory": "tracker: RunningStats.nbytes() / (4 · numel of tracked weights); peak_rss: VmHWM of a "
            "fresh subprocess per config; fit_growth: peak_rss - RSS just before Trainer.fit",
        },
        "targets": {"step_ratio_max": TARGET_STEP_RATIO, "tracker_over_weights_max": TARGET_STATE_RATIO},
        "rows": rows,
        "profile_ms": profile,
        "missed_step_target": missed,
        "raw_step_seconds": timing["seconds"],
        "raw_step_cpu_seconds": timing["cpu_seconds"],
        "seconds": time.perf_counter() - started,
    }
    write_json(args.out, result)
    print(
        f"\n{result['conditions']['cpu']}, torch {torch.__version__}, torch.set_num_threads({args.threads}); "
        f"GPT-2 {shape.n_layer}×{shape.n_embd} ({result['conditions']['parameters'] / 1e6:.2f}M params), "
        f"batch {shape.batch}×{shape.seq}; {args.rounds} rounds × {args.steps} steps, first {args.warmup} of each "
        "fit discarded\n"
    )
    print(table(rows))
    if missed:
        print(
            f"\nmissed the step-time target ≤ {TARGET_STEP_RATIO}: {missed}; where the time goes "
            f"(each part alone, the parts taking turns, median of {args.profile_repeats}):\n"
        )
        print(profile_table(profile, plain_ms))
    print(f"\nwrote {args.out} in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()

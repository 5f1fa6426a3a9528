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

Profile (:mod:`benchmarks.overhead_profile`; always measured and written to the JSON):
``RunningStats.update`` and its parts (the finiteness check, |w|, |g|, dtype casts, EMA lerps) and the two
mask-holding passes, each timed alone on the same model's tracked weights and gradients, as a share of the plain
step; beside them, candidate replacement ops (same result on finite values) to show what a change would save.

Threads: ``torch.set_num_threads(1)`` by default (``--threads`` to change), in every process. On a 2-core machine
shared with other jobs, two OpenMP threads per process oversubscribe the cores and the spin-waiting makes steps
several times slower and far noisier; one thread keeps the model and the callbacks' ops on the same footing.

Run: ``python -m benchmarks.overhead`` (about 4-5 minutes on 2 cores), ``python -m benchmarks.overhead --quick``
(about 30 s smoke run, written to a temp file). Writes ``benchmarks/results/overhead.json``.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from benchmarks.harness import GPT2Module, facts, gpt2, quiet, random_ids_loader, trainer
from benchmarks.harness.runner import Runner, option, parse, pool
from benchmarks.harness.timing import lockstep
from benchmarks.overhead_profile import profile_update
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


@dataclass
class Config:
    threads: int = option(1, help="torch.set_num_threads in every process (see above)")
    rounds: int = option(4, quick=1, help="lockstep rounds")
    steps: int = option(40, quick=14, help="optimizer steps per fit")
    warmup: int = option(6, help="steps discarded at the start of every fit")
    memory_steps: int = option(10, quick=8, help="steps per memory subprocess")
    profile_repeats: int = option(30, quick=5, help="repeats per profiled op")
    shape: str = option("", help="Shape as JSON, e.g. '{\"n_embd\": 128}'")


def lm(shape: Shape) -> GPT2Module:
    """A GPT-2 of ``shape`` from a config (random weights), trained by AdamW (lr 1e-3)."""
    kw = {k: getattr(shape, k) for k in ("n_layer", "n_embd", "n_head", "vocab_size", "n_positions")}
    return GPT2Module(gpt2(**kw))


CONFIGS: dict[str, Callable[[], list[Callback]]] = {
    "plain": lambda: [],
    "tracking fp32": lambda: [ImportanceTracking()],
    "tracking bf16": lambda: [ImportanceTracking(dtype="bfloat16")],
    "tracking + pruning": lambda: [
        ImportanceTracking(stats=("abs_weight", "abs_grad")),  # the same statistics as "tracking fp32"
        ScheduledPruning(AtSteps({PRUNE_AT: 0.5}), criterion="running_magnitude", log_histograms=False),
    ],
}


def fit_once(config: str, shape: Shape, steps: int, timer: Callback, seed: int = 0) -> dict[str, int]:
    """Train a fresh model (same seed for every config) for ``steps`` steps under ``config``; its state bytes."""
    torch.manual_seed(seed)
    module, callbacks = lm(shape), CONFIGS[config]()
    data = random_ids_loader(shape.vocab_size, steps, shape.batch, shape.seq, seed)
    trainer(max_steps=steps, callbacks=[timer, *callbacks]).fit(module, data)
    return state_bytes(callbacks, module)


def time_interleaved(shape: Shape, rounds: int, steps: int, warmup: int) -> dict[str, Any]:
    """Per-config step seconds after warm-up, paired per-step ratios to plain, and tracker / mask bytes."""
    names = list(CONFIGS)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    cpu_seconds: dict[str, list[float]] = {n: [] for n in names}
    paired: dict[str, list[float]] = {n: [] for n in names}  # step k of a config / step k of plain, same cycle
    per_round: dict[str, list[float]] = {n: [] for n in names}  # median step of each round
    state: dict[str, dict[str, int]] = {}
    lockstep(["plain"], lambda n, t: fit_once(n, shape, warmup, t))  # untimed: first-call costs of the process
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate the order every round
        done = lockstep(order, lambda n, t, r=r: fit_once(n, shape, steps, t, seed=r))
        plain = done["plain"][0].seconds[warmup:]
        for name, (timer, st) in done.items():
            kept = timer.seconds[warmup:]
            seconds[name] += kept
            cpu_seconds[name] += timer.cpu_seconds[warmup:]
            paired[name] += [a / b for a, b in zip(kept, plain)]
            per_round[name].append(statistics.median(kept))
            state[name] = st
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {1e3 * per_round[n][-1]:.0f} ms" for n in names))
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


# ---- peak process memory, one fresh process per config ------------------------------------------------------


def _status(key: str) -> int:
    """A size of /proc/self/status in bytes: ``VmHWM`` (the peak resident set; not ``ru_maxrss``, which on Linux
    survives ``exec``), ``VmRSS``."""
    line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith(key + ":"))
    return int(line.split()[1]) * 1024  # kB


def memory_child(job: dict[str, Any]) -> dict[str, int]:
    """In a fresh process: peak RSS of the process and its growth during ``fit`` (all in bytes)."""
    torch.set_num_threads(job["threads"])
    quiet(all_warnings=True)
    shape, steps = Shape(**job["shape"]), job["steps"]
    torch.manual_seed(0)
    module, data = lm(shape), random_ids_loader(shape.vocab_size, steps, shape.batch, shape.seq, 0)
    fit = trainer(max_steps=steps, callbacks=CONFIGS[job["config"]]())
    before = _status("VmRSS")
    fit.fit(module, data)
    peak = _status("VmHWM")
    return {"peak_rss": peak, "rss_before_fit": before, "fit_growth": peak - before}


def measure_memory(shape: Shape, steps: int, threads: int) -> dict[str, dict[str, int]]:
    """One fresh process per config (a process's peak never decreases), all at once: each reads its own peak."""
    jobs = [{"config": n, "shape": asdict(shape), "steps": steps, "threads": threads} for n in CONFIGS]
    return {job["config"]: row for job, row in pool(memory_child, jobs, len(jobs))}


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


def main(argv: list[str] | None = None) -> None:
    cfg, args = parse(Config, argv, __doc__, "overhead")
    if cfg.warmup <= PRUNE_AT or cfg.steps <= cfg.warmup or cfg.memory_steps <= PRUNE_AT + 1:
        raise ValueError(f"need {PRUNE_AT} < warmup < steps (pruning before measuring) and memory-steps > "
                         f"{PRUNE_AT + 1}, got {cfg}.")  # fmt: skip
    quiet(all_warnings=True)
    torch.set_num_threads(cfg.threads)
    shape = Shape(**json.loads(cfg.shape)) if cfg.shape else Shape()
    load_start = os.getloadavg()
    runner = Runner(cfg, args, lambda r: {})
    timing = time_interleaved(shape, cfg.rounds, cfg.steps, cfg.warmup)
    memory = measure_memory(shape, cfg.memory_steps, cfg.threads)
    torch.manual_seed(0)
    ids = torch.randint(0, shape.vocab_size, (shape.batch, shape.seq))
    profile = profile_update(lm(shape), ids, cfg.profile_repeats)
    rows = summarize(timing, memory)
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
            "rounds": cfg.rounds,
            "steps_per_fit": cfg.steps,
            "warmup_steps_discarded_per_fit": cfg.warmup,
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
        "seconds": runner.seconds,
    }
    for r in rows:
        print(f"{r['config']}: step ratio {r['ratio_vs_plain']:.3f}, tracker/weights {r['tracker_over_weights']:.2f}")
    if missed:
        print(f"missed the step-time target ≤ {TARGET_STEP_RATIO}: {missed}; profile in the JSON (profile_ms)")
    runner.finish(result)


if __name__ == "__main__":
    main()

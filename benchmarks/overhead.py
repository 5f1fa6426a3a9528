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

Profile (always measured and written to the JSON; printed when a configuration misses the step-time target):
``RunningStats.update`` and its parts (the finiteness check, |w|, |g|, dtype casts, EMA lerps) and the two
mask-holding passes, each timed alone on the same model's tracked weights and gradients, as a share of the plain
step; beside them, candidate replacement ops (same result on finite values) to show what a change would save.

Threads: ``torch.set_num_threads(1)`` by default (``--threads`` to change), in every process. On a 2-core machine
shared with other jobs, two OpenMP threads per process oversubscribe the cores and the spin-waiting makes steps
several times slower and far noisier; one thread keeps the model and the callbacks' ops on the same footing.

Run: ``python benchmarks/overhead.py`` (about 4-5 minutes on 2 cores), ``python benchmarks/overhead.py --quick``
(about 30 s smoke run). Writes ``benchmarks/results/overhead.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from transformers import GPT2Config, GPT2LMHeadModel
from typing_extensions import override

from lightning_prune import AtSteps, ImportanceTracking, RunningStats, ScheduledPruning, select_parameters
from lightning_prune.masks import apply_masks_
from lightning_prune.registry import registry_of

RESULTS = Path(__file__).resolve().parent / "results"
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


class LM(pl.LightningModule):
    """Minimal causal-LM LightningModule: a GPT-2 from a config, AdamW, no logging."""

    def __init__(self, shape: Shape, lr: float = 1e-3) -> None:
        super().__init__()
        config = GPT2Config(
            n_layer=shape.n_layer,
            n_embd=shape.n_embd,
            n_head=shape.n_head,
            vocab_size=shape.vocab_size,
            n_positions=shape.n_positions,
            bos_token_id=0,
            eos_token_id=0,
        )
        self.model = GPT2LMHeadModel(config)
        self.lr = lr

    @override
    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        (ids,) = batch  # (B, T)
        return self.model(input_ids=ids, labels=ids).loss

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def loader(shape: Shape, steps: int, seed: int) -> DataLoader:
    """``steps`` batches of random token ids, (B, T) each."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, shape.vocab_size, (steps * shape.batch, shape.seq), generator=gen)
    return DataLoader(TensorDataset(ids), batch_size=shape.batch, shuffle=False)


# ---- configurations and the timing callback ------------------------------------------------------------------

CONFIGS: dict[str, Callable[[], list[Callback]]] = {
    "plain": lambda: [],
    "tracking fp32": lambda: [ImportanceTracking()],
    "tracking bf16": lambda: [ImportanceTracking(dtype="bfloat16")],
    "tracking + pruning": lambda: [
        ImportanceTracking(stats=("abs_weight", "abs_grad")),  # the same statistics as "tracking fp32"
        ScheduledPruning(AtSteps({PRUNE_AT: 0.5}), criterion="running_magnitude", log_histograms=False),
    ],
}


class Baton:
    """One timed step at a time, in a fixed rotation over the configs' training threads.

    A thread waits for its turn at the start of a step and hands the turn on at the start of its *next* step (or
    when its training ends), so its untimed work between steps (data loading, loop bookkeeping) never overlaps
    another thread's timed step.
    """

    def __init__(self, order: list[str]) -> None:
        self.order, self.turn, self.broken = order, 0, False
        self.cond = threading.Condition()
        self.ready = threading.Barrier(len(order))  # all set up before the first timed step
        self.done = threading.Barrier(len(order))  # all stepped before anyone tears down

    def wait(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.broken or self.order[self.turn] == name)
            if self.broken:
                raise RuntimeError("another configuration's training thread failed.")

    def hand_on(self, name: str) -> None:
        with self.cond:
            self.turn = (self.order.index(name) + 1) % len(self.order)
            self.cond.notify_all()

    def abort(self) -> None:
        with self.cond:
            self.broken = True
            self.cond.notify_all()
        self.ready.abort()
        self.done.abort()


class StepTimer(Callback):
    """Seconds per training batch (one optimizer step here), from ``on_train_batch_start`` to ``..._end``.

    Put it first in the callback list, so its start hook runs before the other callbacks' and its end hook first.
    """

    def __init__(self, name: str, baton: Baton) -> None:
        self.name, self.baton = name, baton
        self.seconds: list[float] = []  # wall clock (time.perf_counter)
        self.cpu_seconds: list[float] = []  # CPU time of the process (time.process_time); only this thread runs
        self._t0 = self._c0 = 0.0

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        if self.seconds:
            self.baton.hand_on(self.name)
        else:
            self.baton.ready.wait()
        self.baton.wait(self.name)
        self._t0, self._c0 = time.perf_counter(), time.process_time()

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        self.seconds.append(time.perf_counter() - self._t0)
        self.cpu_seconds.append(time.process_time() - self._c0)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.baton.hand_on(self.name)
        self.baton.done.wait()


def fit_once(config: str, shape: Shape, steps: int, timer: Callback, seed: int = 0) -> tuple[list[Callback], LM]:
    """Train a fresh model (same seed for every config) for ``steps`` optimizer steps under ``config``."""
    torch.manual_seed(seed)
    module, data, callbacks = LM(shape), loader(shape, steps, seed), CONFIGS[config]()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        callbacks=[timer, *callbacks],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, data)
    return callbacks, module


# ---- step time, interleaved step by step ---------------------------------------------------------------------


def lockstep_round(order: list[str], shape: Shape, steps: int, seed: int) -> dict[str, tuple[StepTimer, dict]]:
    """Train every config in its own thread, the threads taking turns step by step in ``order``."""
    baton, out, errors = Baton(order), {}, []

    def train(name: str) -> None:
        timer = StepTimer(name, baton)
        try:
            callbacks, module = fit_once(name, shape, steps, timer, seed)
            out[name] = (timer, state_bytes(callbacks, module))
        except BaseException as err:  # re-raised in the main thread below
            errors.append(err)
            baton.abort()

    threads = [threading.Thread(target=train, args=(n,), name=n) for n in order]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


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


def state_bytes(callbacks: list[Callback], module: LM) -> dict[str, int]:
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
    module, data = LM(shape), loader(shape, steps, 0)
    callbacks = CONFIGS[config]()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    before = rss_bytes()
    trainer.fit(module, data)
    peak = peak_rss_bytes()
    return {"peak_rss": peak, "rss_before_fit": before, "fit_growth": peak - before}


def measure_memory(shape: Shape, steps: int, threads: int) -> dict[str, dict[str, int]]:
    """One fresh subprocess per config (a process's peak never decreases), all at once: each reads its own peak."""
    procs = {
        name: subprocess.Popen(
            [
                sys.executable,
                __file__,
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


# ---- profile: RunningStats.update and mask holding alone -----------------------------------------------------

Parts = dict[str, dict[str, Callable[[], object]]]  # group -> part -> callable


def time_round_robin(parts: Parts, repeats: int) -> dict[str, dict[str, float]]:
    """Median milliseconds of every callable; the callables take turns within every repeat, like the configs."""
    flat = [(g, k, fn) for g, per in parts.items() for k, fn in per.items()]
    times: dict[tuple[str, str], list[float]] = {(g, k): [] for g, k, _ in flat}
    for *_, fn in flat:
        fn()  # warm-up
    for _ in range(repeats):
        for g, k, fn in flat:
            t0 = time.perf_counter()
            fn()
            times[g, k].append(time.perf_counter() - t0)
    return {g: {k: 1e3 * statistics.median(times[g, k]) for k in per} for g, per in parts.items()}


def top_ops(fn: Callable[[], object], calls: int, rows: int = 5) -> dict[str, float]:
    """torch.profiler: self CPU milliseconds per call of ``fn`` for its costliest aten ops."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    return {e.key: e.self_cpu_time_total / 1e3 / calls for e in ops}


@torch.no_grad()
def profile_update(shape: Shape, repeats: int) -> dict[str, Any]:
    """Milliseconds of ``RunningStats.update`` and of its parts, and of holding masks, on the tracked weights.

    The parts repeat the ops of ``RunningStats.update`` one at a time (same kernels, same order); all parts and
    candidates take turns within every repeat. ``ops`` is torch.profiler's per-op split of the real calls.
    """
    torch.manual_seed(0)
    module = LM(shape)
    ids = torch.randint(0, shape.vocab_size, (shape.batch, shape.seq))
    with torch.enable_grad():
        module.training_step([ids], 0).backward()
    params = {f: p for f, (_, p) in select_parameters(module).items()}
    grads = {f: p.grad for f, p in params.items()}
    pruned = {f: torch.rand(p.shape) < 0.5 for f, p in params.items()}
    parts: Parts = {str(d).removeprefix("torch."): stats_parts(params, d) for d in (torch.float32, torch.bfloat16)}
    registry = registry_of(module)  # what the callbacks hold the masks with
    registry.resolve(module)
    registry.write("benchmark", {f: ~m for f, m in pruned.items()})
    parts["masks"] = {
        "MaskRegistry: gradients before optimizer.step": registry._mask_grads,
        "MaskRegistry: weights after optimizer.step": registry._mask_weights,
        "for comparison: apply_masks_(weights) (masked_fill_)": lambda: apply_masks_(params, pruned),
    }
    parts["candidates"] = candidate_parts(list(grads.values()), list(pruned.values()))
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    parts["context"] = {"AdamW.step (all parameters)": opt.step}
    out: dict[str, Any] = time_round_robin(parts, repeats)
    out["ops"] = {
        "RunningStats.update float32": top_ops(parts["float32"]["RunningStats.update (total)"], repeats),
        "RunningStats.update bfloat16": top_ops(parts["bfloat16"]["RunningStats.update (total)"], repeats),
        "MaskRegistry (grads + weights)": top_ops(
            lambda: [f() for k, f in parts["masks"].items() if not k.startswith("for comparison")], repeats
        ),
    }
    out["tracked_numel"] = sum(p.numel() for p in params.values())
    return out


def stats_parts(params: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Callable[[], object]]:
    """``RunningStats.update`` (abs_weight + abs_grad, state in ``dtype``) and its parts, as callables."""
    ws, gs = [p.detach() for p in params.values()], [p.grad for p in params.values()]
    stats = RunningStats(params, ("abs_weight", "abs_grad"), dtype=dtype)
    stats.update(params)  # the first update copies; later ones lerp
    state = [torch.zeros_like(w, dtype=dtype) for w in ws]
    abs_w, abs_g = torch._foreach_abs(ws), torch._foreach_abs(gs)
    parts: dict[str, Callable[[], object]] = {
        "RunningStats.update (total)": lambda: stats.update(params),
        "finite check: _foreach_norm(grads, inf) + stack + isfinite + sync": lambda: bool(
            torch.isfinite(torch.stack(torch._foreach_norm(gs, ord=math.inf))).all()
        ),
        "_foreach_abs(weights)": lambda: torch._foreach_abs(ws),
        "_foreach_abs(grads)": lambda: torch._foreach_abs(gs),
        "_foreach_lerp_(state, |w|) incl. cast": lambda: _lerp(state, abs_w, dtype),
        "_foreach_lerp_(state, |g|) incl. cast": lambda: _lerp(state, abs_g, dtype),
    }
    if dtype != torch.float32:
        parts["cast |w| to state dtype (inside the lerp above)"] = lambda: [a.to(dtype) for a in abs_w]
    return parts


def candidate_parts(gs: list[Tensor], pruned: list[Tensor]) -> dict[str, Callable[[], object]]:
    """Replacement ops for the costly parts (same result on finite values), on copies of the same tensors."""
    scratch = [g.clone() for g in gs]
    abs_g = torch._foreach_abs(gs)  # what abs_grad computes anyway
    keep = [(~m).to(g.dtype) for g, m in zip(gs, pruned)]  # 0/1 in the tensor's dtype
    keep_bool = [~m for m in pruned]
    index = [m.view(-1).nonzero().squeeze(1) for m in pruned]  # flat positions of pruned entries
    return {
        "finite check via _foreach_norm(grads, 2) + stack + isfinite + sync": lambda: bool(
            torch.isfinite(torch.stack(torch._foreach_norm(gs))).all()
        ),
        "finite check via _foreach_max(|g|) reusing abs_grad's |g| + sync": lambda: bool(
            torch.isfinite(torch.stack(torch._foreach_max(abs_g))).all()
        ),
        "hold masks (one pass) via _foreach_mul_(tensors, keep in tensor dtype)": lambda: torch._foreach_mul_(
            scratch, keep
        ),
        "hold masks (one pass) via mul_(keep bool) per tensor": lambda: [t.mul_(k) for t, k in zip(scratch, keep_bool)],
        "hold masks (one pass) via index_fill_ of the flat pruned positions": lambda: [
            t.view(-1).index_fill_(0, i, 0) for t, i in zip(scratch, index)
        ],
    }


def _lerp(state: list[Tensor], values: list[Tensor], dtype: torch.dtype) -> None:
    values = [v.to(dtype) for v in values] if values[0].dtype != dtype else values
    torch._foreach_lerp_(state, values, 0.01)


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
    lines = [
        f"| config | median step ms | IQR ms (q1–q3) | ratio vs plain (target ≤ {TARGET_STEP_RATIO}) "
        "| paired step ratio median (q1–q3) | ratio range over rounds | CPU-time ratio vs plain "
        "| tracker bytes / weight bytes (target ≤ 2 fp32, ≤ 1 bf16) | mask bytes / weight bytes | peak RSS MiB "
        "| RSS growth in fit MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["ratio_per_round_min_max"]
        pq1, pq3 = r["paired_ratio_q1_q3"]
        mem = (
            f"{r['memory_peak_rss'] / mib:.0f} | {r['memory_fit_growth'] / mib:.0f}"
            if "memory_peak_rss" in r
            else "– | –"
        )
        lines.append(
            f"| {r['config']} | {r['median_ms']:.1f} | {r['iqr_ms']:.1f} ({r['q1_ms']:.1f}–{r['q3_ms']:.1f}) "
            f"| {r['ratio_vs_plain']:.3f} | {r['paired_ratio_median']:.3f} ({pq1:.3f}–{pq3:.3f}) "
            f"| {lo:.3f}–{hi:.3f} | {r['cpu_ratio_vs_plain']:.3f} "
            f"| {r['tracker_over_weights']:.2f} | {r['masks_over_weights']:.2f} | {mem} |"
        )
    return "\n".join(lines)


def profile_table(profile: dict[str, Any], plain_ms: float) -> str:
    lines = ["| part | ms | % of plain step |", "|---|---|---|"]
    for group, parts in profile.items():
        if group in ("ops", "tracked_numel"):
            continue
        for k, v in parts.items():
            lines.append(f"| {group}: {k} | {v:.2f} | {100 * v / plain_ms:.1f}% |")
    for what, ops in profile["ops"].items():
        split = ", ".join(f"{op} {ms:.2f}" for op, ms in ops.items())
        lines.append(f"| torch.profiler, {what}: self CPU ms per call | {split} | |")
    return "\n".join(lines)


def cpu_model() -> str:
    names = [
        ln.split(":", 1)[1].strip()
        for ln in Path("/proc/cpuinfo").read_text().splitlines()
        if ln.startswith("model name")
    ]
    return f"{names[0]} ({len(names)} logical CPUs visible)" if names else platform.processor()


def quiet() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


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
    quiet()
    torch.set_num_threads(args.threads)
    shape = Shape(**json.loads(args.shape)) if args.shape else Shape()
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, shape, args.memory_steps)))
        return
    started, load_start = time.perf_counter(), os.getloadavg()
    timing = time_interleaved(shape, args.rounds, args.steps, args.warmup)
    memory = measure_memory(shape, args.memory_steps, args.threads)
    profile = profile_update(shape, args.profile_repeats)
    rows = summarize(timing, memory)
    plain_ms = rows[0]["median_ms"]
    missed = [r["config"] for r in rows if r["ratio_vs_plain"] > TARGET_STEP_RATIO]
    result = {
        "conditions": {
            "device": "cpu",
            "cpu": cpu_model(),
            "torch_num_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "lightning": pl.__version__,
            "python": platform.python_version(),
            "load_average_1_5_15min_start_end": [load_start, os.getloadavg()],
            "platform": platform.platform(),
            "model": {"class": "GPT2LMHeadModel", **asdict(shape)},
            "parameters": sum(p.numel() for p in LM(shape).parameters()),
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
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

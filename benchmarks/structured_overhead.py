"""What ``StructuredPruning`` adds to training in the structured benchmark: the time of a training step with its
statistics' hooks (``activation``, ``taylor``) against a step without the callback, and the time of one event with
and without measuring the loss of its candidate removals, on the benchmark's Llama (every dimension) and GPT-2.

Each configuration fits ``steps`` steps of the fine-tuning text (batch and context as in the benchmark, float32,
one thread), in turns, ``repeats`` times; a step's time is from ``on_train_batch_start`` to ``on_train_batch_end``
(forward, backward, optimizer step and every hook), the median over the steps of all repeats. The one event (after
the last step: half of the parameters in one event, every dimension probed) is timed by the callback itself
(``report()["event_seconds"]``: measuring, allocating and writing the masks) and stated also in median steps.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from benchmarks.harness import quiet, seed_all, trainer
from benchmarks.structured_runs import Config, build, data
from lightning_prune import AtSteps, SizeTarget, StructuredPruning
from lightning_prune.lm import CausalLM

__all__ = ["measure_overhead"]

CONFIGS = {  # name: StructuredPruning keyword arguments (None: no callback)
    "no callback": None,
    "activation": {"criterion": "activation"},
    "taylor": {"criterion": "taylor"},
    "activation, no measured loss": {"criterion": "activation", "loss_batches": 0},
}


class StepTimer(Callback):
    """Wall time of every training step, hooks included."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    @override
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._start = time.perf_counter()

    @override
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.times.append(time.perf_counter() - self._start)


def _fit(family: str, cfg: Config, kwargs: dict[str, Any] | None, steps: int) -> tuple[list[float], list[float]]:
    """(step times, event times) of one short fit."""
    seed_all(0)
    module = CausalLM(model=build(family, cfg), lr=cfg.lr, warmup_steps=cfg.warmup_steps)
    timer = StepTimer()
    callbacks: list[Callback] = [timer]
    pruning = None
    if kwargs is not None:  # one event, at the last step: half the parameters removed
        pruning = StructuredPruning(SizeTarget(fraction=cfg.target), AtSteps({steps - 1: 0.5}), **kwargs)
        callbacks.insert(0, pruning)  # before the timer: the event is not in the last step's time
    fit = trainer(max_steps=steps, precision="32-true", gradient_clip_val=1.0, callbacks=callbacks)
    fit.fit(module, datamodule=data(cfg.finetune_source, cfg, cfg.batch_size, 0))
    return timer.times[:-1], pruning.report()["event_seconds"] if pruning is not None else []  # (the last: pruned)


def measure_overhead(cfg: Config, steps: int = 24, repeats: int = 3) -> dict[str, Any]:
    """Per family: median step time of each configuration, its ratio to no callback, and the event time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    quiet(all_warnings=True)
    out: dict[str, Any] = {"steps": steps, "repeats": repeats, "threads": cfg.threads, "families": {}}
    try:
        for family in cfg.families:
            times: dict[str, list[float]] = {k: [] for k in CONFIGS}
            events: dict[str, list[float]] = {k: [] for k in CONFIGS}
            for _ in range(repeats):
                for name, kwargs in CONFIGS.items():
                    step, event = _fit(family, cfg, kwargs, steps)
                    times[name] += step
                    events[name] += event
            base = statistics.median(times["no callback"])
            per: dict[str, Any] = {}
            for name in CONFIGS:
                med = statistics.median(times[name])
                per[name] = {"step_ms": 1e3 * med, "step_ratio": med / base}
                if events[name]:
                    ev = statistics.median(events[name])
                    per[name] |= {"event_s": ev, "event_in_steps": ev / base}
            out["families"][family] = per
    finally:
        torch.set_num_threads(threads)
    return out

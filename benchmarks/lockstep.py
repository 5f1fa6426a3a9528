"""Several Lightning fits in lock-step: one thread per configuration, a baton letting exactly one of them run one
optimizer step at a time in a fixed rotation, so machine noise hits every configuration alike; a timing callback
takes each step's wall-clock and CPU time. Part of ``benchmarks.overhead``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

__all__ = ["Baton", "StepTimer", "lockstep_round"]

T = TypeVar("T")


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


def lockstep_round(order: list[str], fit: Callable[[str, StepTimer], T]) -> dict[str, tuple[StepTimer, T]]:
    """Run ``fit(name, timer)`` for every name in its own thread, the threads taking turns step by step in ``order``
    (``fit`` must put ``timer`` first among its Trainer's callbacks); ``{name: (timer, what fit returned)}``."""
    baton, out, errors = Baton(order), {}, []

    def train(name: str) -> None:
        timer = StepTimer(name, baton)
        try:
            out[name] = (timer, fit(name, timer))
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

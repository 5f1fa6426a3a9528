"""The one interleaved timer of the benchmarks: configurations take turns within every round (the order rotated
between rounds where asked), so drift in the machine's load falls on all alike, and each is compared with a plain
configuration measured side by side. :func:`take_turns` times callables (forward passes, ops, whole fits);
:func:`lockstep` takes turns step by step between Lightning fits in threads (a baton lets one step run at a time),
each step timed by :class:`StepTimer`."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from lightning.pytorch.callbacks import Callback
from typing_extensions import override

__all__ = ["StepTimer", "lockstep", "median_ratios", "take_turns"]

T = TypeVar("T")


def take_turns(
    configs: dict[str, Callable[[], T]],
    rounds: int,
    warmup: int = 0,
    rotate: int = 0,
    sync: Callable[[], Any] = lambda: None,
) -> tuple[dict[str, list[float]], dict[str, list[T]]]:
    """``({name: seconds of each round}, {name: what each call returned})``: every configuration called once per
    round, in turns (the order shifted by ``rotate`` places each round), after ``warmup`` untimed rounds."""
    names = list(configs)
    for _ in range(warmup):
        for fn in configs.values():
            fn()
    seconds: dict[str, list[float]] = {n: [] for n in names}
    results: dict[str, list[T]] = {n: [] for n in names}
    for r in range(rounds):
        shift = (r * rotate) % len(names)
        for name in names[shift:] + names[:shift]:
            sync()
            t0 = time.perf_counter()
            results[name].append(configs[name]())
            sync()
            seconds[name].append(time.perf_counter() - t0)
    return seconds, results


def median_ratios(times: dict[str, list[float]], base: str) -> dict[str, float]:
    """Each configuration's median over ``base``'s median."""
    ref = statistics.median(times[base])
    return {k: statistics.median(v) / ref for k, v in times.items()}


class _Baton:
    """One timed step at a time, in a fixed rotation over the fits' threads: a thread waits for its turn at the
    start of a step and hands it on at the start of its *next* step (or when its training ends), so its untimed
    work between steps never overlaps another thread's timed step."""

    def __init__(self, order: list[str]) -> None:
        self.order, self.turn, self.broken = order, 0, False
        self.cond = threading.Condition()
        self.ready, self.done = threading.Barrier(len(order)), threading.Barrier(len(order))

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
    """Wall-clock and process CPU seconds of every training batch, ``on_train_batch_start`` to ``..._end`` (put it
    first among the callbacks); under :func:`lockstep`, each step waits for its turn."""

    def __init__(self, name: str = "", baton: _Baton | None = None) -> None:
        self.name, self.baton = name, baton
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []  # time.process_time: only the stepping thread runs
        self._t0 = self._c0 = 0.0

    @override
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.baton is not None:
            self.baton.hand_on(self.name) if self.seconds else self.baton.ready.wait()
            self.baton.wait(self.name)
        self._t0, self._c0 = time.perf_counter(), time.process_time()

    @override
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.seconds.append(time.perf_counter() - self._t0)
        self.cpu_seconds.append(time.process_time() - self._c0)

    @override
    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.baton is not None:
            self.baton.hand_on(self.name)
            self.baton.done.wait()


def lockstep(order: list[str], fit: Callable[[str, StepTimer], T]) -> dict[str, tuple[StepTimer, T]]:
    """Run ``fit(name, timer)`` for every name in its own thread, the threads taking turns step by step in
    ``order`` (``fit`` puts ``timer`` first among its Trainer's callbacks); ``{name: (timer, what fit returned)}``."""
    baton, out, errors = _Baton(order), {}, []

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

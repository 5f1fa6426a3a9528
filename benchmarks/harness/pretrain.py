"""The one pretrain-and-cache helper of the benchmarks: a model trained by a plain AdamW loop (:func:`train_`) once,
its state dict and facts saved under the cache folder (ignored by git) keyed by the settings that shape it, and
loaded from there by every later run with the same settings (:func:`cached`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks.harness.runner import key_of

__all__ = ["cached", "epochs", "load", "train_"]


def cached(cache: Path, name: str, key: Any, train: Callable[[], tuple[nn.Module, dict]]) -> tuple[Path, dict]:
    """``(path, info)`` of the checkpoint ``<cache>/<name>-<hash of key>.pt``: the one there (``from_cache``), else
    ``train()``'s model and facts with its wall and CPU seconds, saved there first."""
    path = cache / f"{name}-{key_of(key)}.pt"
    if path.exists():
        return path, {**torch.load(path, map_location="cpu", weights_only=False)["info"], "from_cache": True}
    cache.mkdir(parents=True, exist_ok=True)
    (cache / ".gitignore").write_text("*\n")  # the checkpoints are rebuilt, never committed
    t0, c0 = time.perf_counter(), time.process_time()
    model, info = train()
    info = {**info, "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}
    torch.save({"state_dict": model.state_dict(), "info": info}, path)
    return path, {**info, "from_cache": False}


def load(model: nn.Module, path: str | Path | None) -> nn.Module:
    """``model`` with the state dict at ``path`` (a :func:`cached` checkpoint or a bare state dict; none: as is)."""
    if path:
        state = torch.load(path, map_location="cpu", weights_only=False)
        model.load_state_dict(state.get("state_dict", state))
    return model


def epochs(dm: Any) -> Iterator[dict[str, Tensor]]:
    """The training batches of the data module ``dm``, epoch after epoch (its sampler reshuffled by epoch)."""
    loader, epoch = dm.train_dataloader(), 0
    while True:
        loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def train_(
    model: nn.Module,
    batches: Iterable[Any],
    steps: int,
    lr: float,
    weight_decay: float,
    warmup: int,
    cosine: bool = False,
    decay_all: bool = False,
    stop: Callable[[int], bool] = lambda step: False,
) -> int:
    """Train ``model`` in place for at most ``steps`` batches (``{"input_ids", "labels"}`` or ``(B, T)`` ids) by
    AdamW (betas 0.9, 0.95; decay on the matrices, or on all with ``decay_all``), clipping at 1.0, learning rate
    ramped up over ``warmup`` steps, then constant (``cosine``: down to 10 % at ``steps``), until ``stop(step)``;
    the number of steps. Leaves it in eval mode."""
    groups: Any = model.parameters()
    if not decay_all:
        groups = [
            {"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0},
        ]
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))

    def rate(s: int) -> float:
        if not cosine:
            return min(1.0, (s + 1) / warmup)
        return (s + 1) / warmup if s < warmup else 0.1 + 0.45 * (1 + math.cos(math.pi * (s - warmup) / steps))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, rate)
    model.train()
    step = 0
    for batch in batches:
        ids, labels = (batch["input_ids"], batch["labels"]) if isinstance(batch, dict) else (batch, batch)
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        if stop(step) or step >= steps:
            break
    model.eval()
    return step

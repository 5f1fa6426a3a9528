"""Where the callbacks' step time goes: ``RunningStats.update`` and its parts, the registry's two mask-holding
passes, and candidate replacement ops, each timed alone on one model's tracked weights and gradients (the parts
taking turns), with torch.profiler's per-op split of the real calls. Part of ``benchmarks.overhead``."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from benchmarks.harness.timing import take_turns
from lightning_prune._registry import registry_of
from lightning_prune._selection import select_parameters
from lightning_prune.masks import all_finite
from lightning_prune.trackers import RunningStats

__all__ = ["profile_update"]


Parts = dict[str, dict[str, Callable[[], object]]]  # group -> part -> callable


def time_round_robin(parts: Parts, repeats: int) -> dict[str, dict[str, float]]:
    """Median milliseconds of every callable; the callables take turns within every repeat, like the configs."""
    flat = {(g, k): fn for g, per in parts.items() for k, fn in per.items()}
    times = take_turns(flat, repeats, warmup=1)[0]
    return {g: {k: 1e3 * statistics.median(times[g, k]) for k in per} for g, per in parts.items()}


def top_ops(fn: Callable[[], object], calls: int, rows: int = 5) -> dict[str, float]:
    """torch.profiler: self CPU milliseconds per call of ``fn`` for its costliest aten ops."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    return {e.key: e.self_cpu_time_total / 1e3 / calls for e in ops}


@torch.no_grad()
def profile_update(module: pl.LightningModule, ids: Tensor, repeats: int) -> dict[str, Any]:
    """Milliseconds of ``RunningStats.update`` and of its parts, and of holding masks, on the tracked weights of
    ``module`` after one backward pass on the batch ``ids`` (B, T).

    The parts repeat the ops of ``RunningStats.update`` one at a time (same kernels, same order); all parts and
    candidates take turns within every repeat. ``ops`` is torch.profiler's per-op split of the real calls.
    """
    with torch.enable_grad():
        module.training_step([ids], 0).backward()
    params = {f: p for f, (_, p) in select_parameters(module).items()}
    grads = {f: p.grad for f, p in params.items()}
    pruned = {f: torch.rand(p.shape) < 0.5 for f, p in params.items()}
    parts: Parts = {str(d).removeprefix("torch."): stats_parts(params, d) for d in (torch.float32, torch.bfloat16)}
    registry = registry_of(module)  # what the callbacks hold the masks with
    registry.resolve(module)
    registry.write("benchmark", {f: ~m for f, m in pruned.items()})
    keeps = list(registry.keep.values())
    parts["masks"] = {
        "MaskRegistry: gradients before optimizer.step": registry._mask_grads,
        "MaskRegistry: weights after optimizer.step": registry._mask_weights,
        "for comparison: masked_fill_(weights)": lambda: [p.data.masked_fill_(pruned[f], 0) for f, p in params.items()],
        "for comparison: float multiply by the bool masks": lambda: torch._foreach_mul_(
            [p.data for p in params.values()], keeps
        ),
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
        "finite check: all_finite(grads) (_foreach_norm 2, stack, isfinite, sync)": lambda: all_finite(gs),
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
        "finite check via _foreach_norm(grads, inf) + stack + isfinite + sync": lambda: bool(
            torch.isfinite(torch.stack(torch._foreach_norm(gs, ord=math.inf))).all()
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

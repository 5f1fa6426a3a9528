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
timed interleaved (:func:`measure_speed`); what the callback adds to a training step and costs per
event (:func:`measure_overhead`); each run's events in short (``decisions``: what was removed and the
loss per million parameters each candidate removal was measured to cost). Seeds set the fine-tuning data order
and all randomness of a run; the pretrained start is the same.

Run: ``nice -n 10 python -m benchmarks.structured`` (about an hour of CPU: two single-thread runs side by side);
``--quick`` (seconds, a smoke test). Writes ``benchmarks/results/structured.json`` and ``structured.png``.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from benchmarks.harness import (
    DISTILL_TEMPERATURE,
    DISTILL_WEIGHT,
    facts,
    gpt2,
    llama,
    perplexity,
    pyplot,
    quiet,
    seed_all,
    spread,
    text_module,
    trainer,
)
from benchmarks.harness.pretrain import cached, epochs, load, train_
from benchmarks.harness.runner import Runner, as_dict, config_of, key_of, keyed, option, parse, pool
from benchmarks.harness.timing import StepTimer, take_turns
from benchmarks.methods import MINITRON, SCRATCH_PRE
from benchmarks.speed import forward_flops
from lightning_prune import AtSteps, Cubic, Distillation, SizeTarget, StructuredPruning
from lightning_prune.lm import CausalLM
from lightning_prune.structured import SizeModel, Units, allocate, shrink_units_
from lightning_prune.structured.config import config_accepts
from lightning_prune.structured.observe import observe, stat_sizes
from lightning_prune.structured.stats import UnitStats

__all__ = ["METHODS", "Config", "beyond", "main", "parse_args", "summarize"]

DENSE = "dense fine-tuning"
ONESHOT = MINITRON
DEPTH = "ours depth-only + distillation: taylor"
WIDTH = "ours width-only + distillation: taylor"
SCRATCH = "small shape from scratch (fine-tuning tokens)"
OURS = [f"ours{d}: {c}" for c in ("taylor", "activation") for d in ("", " + distillation")]
SHARES = "ours + distillation: activation, dimensions by shares (no measured loss)"  # the allocation before
METHODS = (DENSE, *OURS, SHARES, ONESHOT, DEPTH, WIDTH, SCRATCH, SCRATCH_PRE)
SHAPE_FROM = "ours + distillation: taylor"  # the small shape trained from scratch is this row's export (seed 0)
SPEED_GOAL = 0.85  # measured speed-up at least this fraction of the FLOP bound
OVERHEAD = {  # name: StructuredPruning keyword arguments (None: no callback)
    "no callback": None,
    "activation": {"criterion": "activation"},
    "taylor": {"criterion": "taylor"},
    "activation, no measured loss": {"criterion": "activation", "loss_batches": 0},
}


@dataclass
class Config:
    families: tuple[str, ...] = option(("gpt2", "llama"), choices=["gpt2", "llama"])  # model families compared
    n_layer: int = option(4, quick=2, key="pretrain run")  # blocks
    n_embd: int = option(128, quick=32, key="pretrain run")  # width
    n_head: int = option(4, quick=4, key="pretrain run")  # query heads
    n_kv_head: int = option(2, key="pretrain run")  # Llama's key/value heads (GQA groups of 2)
    gpt2_inner: int = option(512, quick=128, key="pretrain run")  # GPT-2 feed-forward width (4·n_embd)
    llama_inner: int = option(384, quick=96, key="pretrain run")  # Llama's SwiGLU width (about GPT-2's parameters)
    block_size: int = option(64, quick=16, key="pretrain run")  # tokens (bytes) per example and context
    pretrain_source: str = option("kjv", key="pretrain run")  # pretraining corpus
    finetune_source: str = "pydoc"  # the other text fine-tuned (and pruned) on
    pretrain_steps: int = option(2000, quick=20, key="pretrain run")  # pretraining steps
    pretrain_batch: int = option(8, key="pretrain run")
    pretrain_lr: float = option(2e-3, key="pretrain run")  # warm-up then constant; also the from-scratch rows' rate
    pretrain_warmup: int = option(100, quick=2, key="pretrain run")
    steps: int = option(400, quick=12, key="run")  # fine-tuning steps of every row (the same tokens)
    batch_size: int = option(8, quick=4)
    lr: float = 1e-3  # fine-tuning AdamW peak rate (warm-up, cosine to 10 %)
    warmup_steps: int = option(20, quick=2)
    weight_decay: float = option(0.1, key="pretrain run")
    target: float = option(0.5, quick=0.7, key="run")  # fraction of the parameters kept (quick: embeddings weigh)
    tolerance: float = 0.01  # the export within this fraction of the target
    depth_tolerance: float = 0.1  # depth-only reaches only whole blocks
    prune_start: int = option(40, quick=2)  # the cubic ramp starts here
    prune_end: int = option(240, quick=8)  # ... and reaches the target here (160 recovery steps follow)
    prune_every: int = option(20, quick=2)  # steps between pruning events
    calibration_batches: int = option(16, quick=2)  # one-shot: batches its activation statistics come from
    seeds: tuple[int, ...] = option((0, 1, 2), quick=(0,))
    methods: tuple[str, ...] = option(METHODS, choices=METHODS)
    threads: int = 1  # torch threads per run
    workers: int = option(2, quick=1, help="runs side by side, one process each")
    speed_batch: int = option(16, quick=2)  # throughput batch (× block_size tokens)
    speed_repeats: int = option(30, quick=3)  # interleaved timing repeats
    speed_threads: int = 1  # torch threads while timing


def data(source: str, cfg: Config, batch_size: int, seed: int) -> Any:
    return text_module(source=source, block_size=cfg.block_size, batch_size=batch_size, seed=seed)


def build(family: str, cfg: Config, shape: dict[str, Any] | None = None) -> nn.Module:
    """A randomly initialised model of ``family`` (dropout off), at the benchmark's size or at ``shape``."""
    if family == "gpt2":
        base = dict(n_layer=cfg.n_layer, n_embd=cfg.n_embd, n_head=cfg.n_head, n_inner=cfg.gpt2_inner)
        base |= dict(n_positions=cfg.block_size, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        return gpt2(**(base | (shape or {})))
    base = dict(num_hidden_layers=cfg.n_layer, hidden_size=cfg.n_embd, num_attention_heads=cfg.n_head)
    base |= dict(num_key_value_heads=cfg.n_kv_head, intermediate_size=cfg.llama_inner)
    base |= dict(head_dim=cfg.n_embd // cfg.n_head, max_position_embeddings=cfg.block_size)
    return llama(**(base | (shape or {})))


SHAPE_KEYS = {
    "gpt2": ("n_layer", "n_embd", "n_head", "n_inner"),
    "llama": ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size"),
}


def shape_of(model: nn.Module, family: str) -> dict[str, Any]:
    """The config fields that set a model's size."""
    extra = {"head_dim": model.config.head_dim} if family == "llama" else {}
    return {k: getattr(model.config, k) for k in SHAPE_KEYS[family]} | extra


def sizes(model: nn.Module, seq: int) -> dict[str, int]:
    """Parameters and FLOPs per token (attention products over ``seq`` tokens) of ``model`` as it is."""
    size = SizeModel.from_model(model, seq)
    return {"params": size.params(size.full), "flops": size.flops(size.full)}


def pretrain_key(cfg: Config, family: str, shape: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"family": family, "shape": shape, **keyed(cfg, "pretrain")}


def pretrain(cfg: Config, family: str, cache: Path, shape: dict[str, Any] | None = None) -> tuple[Path, dict]:
    """The pretrained checkpoint of ``family`` (at ``shape``): cached, or ``pretrain_steps`` steps (warm-up, then
    constant) on ``pretrain_source``."""

    def train() -> tuple[nn.Module, dict[str, Any]]:
        dm = data(cfg.pretrain_source, cfg, cfg.pretrain_batch, 0)
        torch.manual_seed(0)
        model = build(family, cfg, shape)
        step = train_(model, epochs(dm), cfg.pretrain_steps, cfg.pretrain_lr, cfg.weight_decay, cfg.pretrain_warmup)
        info = {"family": family, "shape": shape or shape_of(model, family), "steps": step}
        info |= {"tokens": step * cfg.pretrain_batch * cfg.block_size}
        return model, {**info, "val_loss": math.log(perplexity(model, dm.val_dataset.blocks[:256]))}

    path, info = cached(cache, f"structured-{family}", pretrain_key(cfg, family, shape), train)
    return path, {**info, **sizes(build(family, cfg, shape), cfg.block_size)}


def _pretrain_job(job: dict[str, Any]) -> dict[str, Any]:
    cfg = config_of(Config, job["cfg"])
    torch.set_num_threads(cfg.threads)
    quiet(all_warnings=True)
    path, info = pretrain(cfg, job["family"], Path(job["cache"]), job.get("shape"))
    return {"name": job["name"], "path": str(path), **info}


# ---- one fine-tuning run ---------------------------------------------------------------------------------------


@torch.enable_grad()
def one_shot(model: nn.Module, dm: Any, cfg: Config, dims: tuple[str, ...]) -> Units:
    """Minitron's selection: activation statistics over calibration batches of the fine-tuning text (forward passes
    only), units allocated across ``dims`` by those scores as shares, to the target."""
    stats = UnitStats(stat_sizes(model, dims), decay=0.0)  # decay 0: each pass's values replace the last
    sums = {d: [torch.zeros_like(v) for v in stats.values[d]] for d in dims}
    handles = observe(model, stats, dims, "activation")
    loader = iter(dm.train_dataloader())
    for _ in range(cfg.calibration_batches):
        model(input_ids=next(loader)["input_ids"])
        stats.commit()
        for d in dims:
            sums[d] = [s + v for s, v in zip(sums[d], stats.values[d], strict=True)]
    for h in handles:
        h.remove()
    rows = {d: [s / cfg.calibration_batches for s in sums[d]] for d in dims}
    scores = {d: torch.cat(r) if d == "layers" else r[0] if d == "hidden" else r for d, r in rows.items()}
    size = SizeModel.from_model(model)
    units = Units.full(model, dims)
    goal = cfg.target * size.params(size.full)
    return allocate(size, units, scores, goal, "params", False, cfg.tolerance, config_accepts(model))


def _decision(event: dict[str, Any], dims: tuple[str, ...]) -> dict[str, Any]:
    """One event in short: its step, the parameters after it, the fraction of each dimension removed, and the loss
    per million parameters its candidate removals were measured to cost."""
    out = {"step": event["step"], "params": event["params"], "removed": {d: round(event[d], 4) for d in dims}}
    if "probes" in event:
        name = lambda p: f"{p['dim']} {p['block']}" if "block" in p else p["dim"]  # noqa: E731
        out["loss_per_mparam"] = {name(p): round(1e6 * p["loss"] / p["size"], 4) for p in event["probes"]}
    return out


def run(job: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune under one method, family and seed for ``cfg.steps`` steps; return its figures."""
    cfg, method, family, seed = config_of(Config, job["cfg"]), job["method"], job["family"], job["seed"]
    torch.set_num_threads(cfg.threads)
    quiet(all_warnings=True)
    t0, c0 = time.perf_counter(), time.process_time()
    dm = data(cfg.finetune_source, cfg, cfg.batch_size, seed)
    seed_all(seed)
    shape = job.get("shape") if method in (SCRATCH, SCRATCH_PRE) else None
    start = None if method == SCRATCH else job.get("small_pretrained") if method == SCRATCH_PRE else job["pretrained"]
    model = load(build(family, cfg, shape), start)
    distilled = "distillation" in method or method == ONESHOT
    teacher = load(build(family, cfg), job["teacher"]).eval() if distilled else None
    callbacks: list[Callback] = []
    pruning = None
    if method == ONESHOT:
        dims = ("neurons", "layers") if family == "gpt2" else ("neurons", "heads", "layers", "hidden")
        model = shrink_units_(model, one_shot(model, dm, cfg, dims), masked=False)
    elif method.startswith("ours"):
        criterion = method.rpartition(": ")[2].split(",")[0]
        schedule = Cubic(1.0, cfg.prune_start, cfg.prune_end, every=cfg.prune_every, unit="step")
        width = ("neurons",) if family == "gpt2" else ("neurons", "heads", "hidden")
        dims = ("layers",) if method == DEPTH else width if method == WIDTH else None
        kw = {"tolerance": cfg.depth_tolerance if method == DEPTH else cfg.tolerance}
        kw |= {"loss_batches": 0} if method == SHARES else {}  # else the callback's default
        pruning = StructuredPruning(SizeTarget(keep=cfg.target), schedule, dims, criterion, **kw)
        callbacks.append(pruning)
    if teacher is not None:
        callbacks.append(Distillation(teacher, weight=DISTILL_WEIGHT, temperature=DISTILL_TEMPERATURE))
    lr = cfg.pretrain_lr if method == SCRATCH else cfg.lr
    lm = CausalLM(model=model, lr=lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps)
    fit = trainer(max_steps=cfg.steps, precision="32-true", gradient_clip_val=1.0, callbacks=callbacks)
    fit.fit(lm, datamodule=dm)
    if fit.global_step != cfg.steps:
        raise RuntimeError(f"{method}: ran {fit.global_step} steps, expected {cfg.steps}.")
    final = pruning.shrink_(copy.deepcopy(lm.model)) if pruning is not None else lm.model
    row = {"method": method, "family": family, "seed": seed, "val_ppl": perplexity(final, dm.val_dataset.blocks)}
    row |= {"steps": fit.global_step, "tokens": fit.global_step * cfg.batch_size * cfg.block_size}
    row |= {"shape": shape_of(final, family), **sizes(final, cfg.block_size)}
    row |= {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}
    if pruning is not None:
        report = pruning.report()
        row["removed"] = {
            d: {k: v for k, v in r.items() if k != "removed_per_layer"} for d, r in report["dims"].items()
        }
        row["dims"], row["events"] = list(pruning.dims), len(report["events"])
        row["event_seconds"] = sum(report["event_seconds"])
        row["decisions"] = [_decision(e, pruning.dims) for e in report["events"]]
    if job.get("save_to"):
        torch.save(lm.model.state_dict(), job["save_to"])
    return row


# ---- speed of the exported shapes, and what the callback adds to a step ----------------------------------------


def _shapes(rows: list[dict[str, Any]], family: str) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """``({label: shape}, {method: label})``: each distinct exported shape at the first seed, labelled by the first
    method that exported it, and the label of every method's shape."""
    first = min((r["seed"] for r in rows if r["family"] == family), default=0)
    shapes: dict[str, dict[str, Any]] = {}
    labels: dict[str, str] = {}
    by_key: dict[str, str] = {}
    for r in rows:
        if r["family"] == family and r["seed"] == first:
            label = by_key.setdefault(repr(sorted(r["shape"].items())), r["method"])
            shapes.setdefault(label, r["shape"])
            labels[r["method"]] = label
    return shapes, labels


@torch.inference_mode()
def measure_speed(cfg: Config, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per family and distinct exported shape (random weights): median forward times, the models taking turns,
    speed-up over dense, FLOP bound and efficiency; and which shape each method exported."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.speed_threads)
    out: dict[str, Any] = {"threads": cfg.speed_threads, "seq": cfg.block_size, "families": {}}
    try:
        for family in cfg.families:
            shapes, labels = _shapes(rows, family)
            torch.manual_seed(0)
            dense = labels.get(DENSE, "dense")
            models = {dense: build(family, cfg).eval()}
            models |= {k: build(family, cfg, shape).eval() for k, shape in shapes.items() if k != dense}
            flops = {k: forward_flops(m, cfg.block_size) for k, m in models.items()}
            per = {k: {"params": sum(p.numel() for p in m.parameters()), "flops": flops[k], "shape": shapes.get(k)}
                   for k, m in models.items()}  # fmt: skip
            for kind, batch in (("throughput", cfg.speed_batch), ("latency", 1)):
                ids = torch.randint(0, 256, (batch, cfg.block_size))
                calls = {k: (lambda m=m, ids=ids: m(ids)) for k, m in models.items()}
                med = {k: statistics.median(v) for k, v in take_turns(calls, cfg.speed_repeats, warmup=3)[0].items()}
                for k in models:
                    speedup, bound = med[dense] / med[k], flops[dense] / flops[k]
                    per[k][kind] = {"batch": batch, "ms": 1e3 * med[k], "tokens_per_s": batch * cfg.block_size / med[k]}
                    per[k][kind] |= {"speedup": speedup, "flop_bound": bound, "efficiency": speedup / bound}
            out["families"][family] = {"shapes": per, "rows": labels}
    finally:
        torch.set_num_threads(threads)
    return out


def _fit(family: str, cfg: Config, kwargs: dict[str, Any] | None, steps: int) -> tuple[list[float], list[float]]:
    """(step times, event times) of one short fit; its one event at the last step removes half the parameters."""
    seed_all(0)
    module = CausalLM(model=build(family, cfg), lr=cfg.lr, warmup_steps=cfg.warmup_steps)
    timer, pruning = StepTimer(), None
    callbacks: list[Callback] = [timer]
    if kwargs is not None:
        pruning = StructuredPruning(SizeTarget(keep=cfg.target), AtSteps({steps - 1: 1.0}), **kwargs)
        callbacks.insert(0, pruning)  # before the timer: the event is not in the last step's time
    fit = trainer(max_steps=steps, precision="32-true", gradient_clip_val=1.0, callbacks=callbacks)
    fit.fit(module, datamodule=data(cfg.finetune_source, cfg, cfg.batch_size, 0))
    return timer.seconds[:-1], pruning.report()["event_seconds"] if pruning is not None else []  # (the last: pruned)


def measure_overhead(cfg: Config, steps: int = 24, repeats: int = 3) -> dict[str, Any]:
    """Per family: median step time of each configuration (the fits taking turns, ``repeats`` rounds; a step from
    ``on_train_batch_start`` to ``..._end``), its ratio to no callback, and the event time (the callback's own
    ``event_seconds``), also in median steps."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    quiet(all_warnings=True)
    out: dict[str, Any] = {"steps": steps, "repeats": repeats, "threads": cfg.threads, "families": {}}
    try:
        for family in cfg.families:
            fits = {name: (lambda kw=kw, f=family: _fit(f, cfg, kw, steps)) for name, kw in OVERHEAD.items()}
            done = take_turns(fits, repeats)[1]
            times = {k: [t for step, _ in v for t in step] for k, v in done.items()}
            events = {k: [t for _, event in v for t in event] for k, v in done.items()}
            base, per = statistics.median(times["no callback"]), {}
            for name in OVERHEAD:
                med = statistics.median(times[name])
                per[name] = {"step_ms": 1e3 * med, "step_ratio": med / base}
                if events[name]:
                    ev = statistics.median(events[name])
                    per[name] |= {"event_s": ev, "event_in_steps": ev / base}
            out["families"][family] = per
    finally:
        torch.set_num_threads(threads)
    return out


# ---- summary ---------------------------------------------------------------------------------------------------


def beyond(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """``a``'s mean is below ``b``'s by more than the larger min–max spread of the two."""
    return b["mean"] - a["mean"] > max(a["max"] - a["min"], b["max"] - b["min"])


def summarize(rows: list[dict[str, Any]], cfg: Any) -> dict[str, Any]:
    """Per family and method: val perplexity, ratio to dense (same seed), parameters and FLOPs over seeds; the
    best of ours over all dimensions (with measured losses; the allocation by shares is a comparison row) against
    one-shot + fine-tuning and the small shape from scratch."""
    out: dict[str, Any] = {}
    for family in cfg.families:
        mine = [r for r in rows if r["family"] == family]
        dense = {r["seed"]: r for r in mine if r["method"] == DENSE}
        table: dict[str, Any] = {}
        for method in cfg.methods:
            rs = [r for r in mine if r["method"] == method]
            if not rs:
                continue
            cell = {k: spread([r[k] for r in rs]) for k in ("val_ppl", "params", "flops")}
            cell["seeds"] = [r["seed"] for r in rs]
            if all("event_seconds" in r for r in rs):  # time in pruning events (measuring included), per run
                cell["event_seconds"] = spread([r["event_seconds"] for r in rs])
                cell["run_seconds"] = spread([r["seconds"] for r in rs])
            if all(r["seed"] in dense for r in rs):
                cell["ratio"] = spread([r["val_ppl"] / dense[r["seed"]]["val_ppl"] for r in rs])
                cell["params_fraction"] = spread([r["params"] / dense[r["seed"]]["params"] for r in rs])
            table[method] = cell
        ours = [m for m in table if m.startswith("ours") and "only" not in m and m != SHARES]
        best = min(ours, key=lambda m: table[m]["val_ppl"]["mean"]) if ours else None
        goals: dict[str, Any] = {"best_of_ours": best}
        for other, key in ((ONESHOT, "below_one_shot"), (SCRATCH, "below_scratch"), (SCRATCH_PRE, "below_scratch_pre")):
            if best and other in table:
                a, b = table[best]["val_ppl"], table[other]["val_ppl"]
                goals[key] = {
                    "met": beyond(a, b),
                    "difference": a["mean"] - b["mean"],
                    "at_or_below": a["mean"] <= b["mean"],
                }
        goals["exports_within_tolerance"] = {
            m: max(abs(f - cfg.target) / cfg.target for f in (c["params_fraction"]["min"], c["params_fraction"]["max"]))
            for m, c in table.items()
            if m != DENSE and "params_fraction" in c
        }
        out[family] = {"rows": table, "goals": goals}
    return out


def plot(summary: dict[str, Any], path: Path) -> bool:
    """Mean validation perplexity per row with min–max bars, one panel per family."""
    plt = pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, len(summary), figsize=(7 * len(summary), 5), squeeze=False)
    for ax, (family, doc) in zip(axes[0], summary.items(), strict=True):
        names = list(doc["rows"])
        ppl = [doc["rows"][m]["val_ppl"] for m in names]
        err = [[p["mean"] - p["min"] for p in ppl], [p["max"] - p["mean"] for p in ppl]]
        colors = ["tab:gray" if m == DENSE else "tab:blue" if m.startswith("ours") else "tab:orange" for m in names]
        ax.barh(range(len(names)), [p["mean"] for p in ppl], xerr=err, color=colors, capsize=3)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.invert_yaxis()
        ax.set(xlabel="validation perplexity (mean, min–max over seeds)", title=f"{family}: 50 % of the parameters")
        ax.set_xlim(left=0.95 * min(p["min"] for p in ppl))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


# ---- main ------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> tuple[Config, Any]:
    return parse(Config, argv, __doc__, "structured")


def document(runner: Runner, pre: dict[str, Any]) -> dict[str, Any]:
    """The JSON document: conditions, pretraining, every run and the summary."""
    cfg, rows = runner.cfg, runner.rows
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
            "config": as_dict(cfg),
            "torch_num_threads_per_run": cfg.threads,
            "workers": cfg.workers,
            **facts("cpu", "torch", "lightning", "platform", "cpu_count", "load_average_1_5_15min_at_end"),
            "wall_seconds": runner.seconds,
            "run_cpu_seconds_total": sum(r.get("cpu_seconds", 0.0) for r in rows),
            "pretraining_cpu_seconds_total": sum(
                p.get("cpu_seconds", 0.0) for p in pre.values() if not p.get("from_cache")
            ),
            "quick": runner.args.quick,
        },
        "pretraining": {k: {kk: vv for kk, vv in v.items() if kk not in ("path", "name")} for k, v in pre.items()},
        "summary": summarize(rows, cfg),
        "runs": rows,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg, args = parse_args(argv)
    quiet(all_warnings=True)
    base = {"cfg": as_dict(cfg, ()), "cache": str(args.cache)}
    pre: dict[str, Any] = {}

    def pretrained(jobs: list[dict[str, Any]]) -> None:
        pre.update({info["name"]: info for _, info in pool(_pretrain_job, jobs, cfg.workers if len(jobs) > 1 else 1)})

    pretrained([{**base, "family": f, "shape": None, "name": f} for f in cfg.families])
    keep = lambda r: r["family"] in cfg.families and r["seed"] in cfg.seeds  # noqa: E731
    runner = Runner(cfg, args, lambda r: document(r, pre), keep=keep)
    teachers = {
        (f, s): args.cache / f"structured-dense-ft-{f}-{key_of(pretrain_key(cfg, f))}-seed{s}.pt"
        for f in cfg.families
        for s in cfg.seeds
    }

    def jobs_for(methods: list[str], extra: Any = lambda f, s, m: {}) -> list[dict[str, Any]]:
        return [
            {**base, "family": f, "seed": s, "method": m, "pretrained": pre[f]["path"], "teacher": str(teachers[f, s])}
            | extra(f, s, m)
            for f in cfg.families
            for s in cfg.seeds
            for m in methods
            if m in cfg.methods
        ]

    by, say = ("family", "method", "seed"), "{family:6s} {method:58s} seed {seed}: ppl {val_ppl:.4f}, params {params:,}"
    # 1. dense fine-tuning: the teachers; 2. every pruning row; 3. the small shape from scratch
    runner.run(run, jobs_for([DENSE], lambda f, s, m: {"save_to": str(teachers[f, s])}), by, say)
    missing = [str(p) for p in teachers.values() if not p.exists()]
    if missing and any(m for m in cfg.methods if "distillation" in m or "Minitron" in m):
        raise SystemExit(f"the dense fine-tuned teachers {missing} are missing: run without --reuse.")
    runner.run(run, jobs_for([m for m in cfg.methods if m not in (DENSE, SCRATCH, SCRATCH_PRE)]), by, say)
    if SCRATCH in cfg.methods or SCRATCH_PRE in cfg.methods:
        shapes = {}
        for f in cfg.families:
            source = [r for r in runner.rows if r["family"] == f and r["method"] == SHAPE_FROM]
            if not source:
                raise SystemExit(f"the small shape comes from '{SHAPE_FROM}', which did not run for {f}.")
            shapes[f] = min(source, key=lambda r: r["seed"])["shape"]
        if SCRATCH_PRE in cfg.methods:
            pretrained([{**base, "family": f, "shape": shapes[f], "name": f + "-small"} for f in cfg.families])
        small = lambda f, s, m: {"shape": shapes[f], "small_pretrained": pre.get(f + "-small", {}).get("path")}  # noqa: E731
        runner.run(run, jobs_for([SCRATCH, SCRATCH_PRE], small), by, say)
    result = runner.write()
    result["speed"] = measure_speed(cfg, runner.rows)
    result["overhead"] = measure_overhead(cfg, steps=4, repeats=1) if args.quick else measure_overhead(cfg)
    result["summary"] = summarize(runner.rows, cfg)
    print(json.dumps({f: d["goals"] for f, d in result["summary"].items()}, indent=1))
    runner.finish(result, lambda png: plot(result["summary"], png))
    return result


if __name__ == "__main__":
    main()

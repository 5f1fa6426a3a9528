"""The structured benchmark's runs: its settings, the models (a small GPT-2 and a small Llama on bytes), pretraining
(built once, cached), and one fine-tuning run of one method, family and seed (in a fresh process when side by side)."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from benchmarks.harness import DISTILL_TEMPERATURE, DISTILL_WEIGHT, gpt2, llama, perplexity, quiet, seed_all, trainer
from benchmarks.harness.data import text_module
from benchmarks.methods import MINITRON, SCRATCH_PRE
from lightning_prune import Cubic, Distillation, SizeTarget, StructuredPruning
from lightning_prune.lm import CausalLM
from lightning_prune.structured import SizeModel, Units, allocate, shrink_units_
from lightning_prune.structured.config import config_accepts
from lightning_prune.structured.observe import observe, stat_sizes
from lightning_prune.structured.stats import UnitStats

__all__ = ["METHODS", "QUICK", "SHARES", "Config", "build", "pretrain", "run", "shape_of"]

DENSE = "dense fine-tuning"
ONESHOT = MINITRON
DEPTH = "ours depth-only + distillation: taylor"
WIDTH = "ours width-only + distillation: taylor"
SCRATCH = "small shape from scratch (fine-tuning tokens)"
OURS = [f"ours{d}: {c}" for c in ("taylor", "activation") for d in ("", " + distillation")]
SHARES = "ours + distillation: activation, dimensions by shares (no measured loss)"  # the allocation before
METHODS = (DENSE, *OURS, SHARES, ONESHOT, DEPTH, WIDTH, SCRATCH, SCRATCH_PRE)
SHAPE_FROM = "ours + distillation: taylor"  # the small shape trained from scratch is this row's export (seed 0)


@dataclass
class Config:
    families: tuple[str, ...] = ("gpt2", "llama")  # model families compared
    n_layer: int = 4  # blocks
    n_embd: int = 128  # width
    n_head: int = 4  # query heads
    n_kv_head: int = 2  # Llama's key/value heads (GQA groups of 2)
    gpt2_inner: int = 512  # GPT-2 feed-forward width (4·n_embd)
    llama_inner: int = 384  # Llama's SwiGLU width (3 matrices: about GPT-2's feed-forward parameters)
    block_size: int = 64  # tokens (bytes) per example and context
    pretrain_source: str = "kjv"  # pretraining corpus
    finetune_source: str = "pydoc"  # the other text fine-tuned (and pruned) on
    pretrain_steps: int = 2000  # pretraining steps (batch pretrain_batch × block_size)
    pretrain_batch: int = 8
    pretrain_lr: float = 2e-3  # AdamW, linear warm-up then constant; also the from-scratch rows' peak rate
    pretrain_warmup: int = 100
    steps: int = 400  # fine-tuning steps of every row (the same tokens)
    batch_size: int = 8
    lr: float = 1e-3  # fine-tuning AdamW peak rate (warm-up, cosine to 10 %)
    warmup_steps: int = 20
    weight_decay: float = 0.1
    target: float = 0.5  # fraction of the parameters kept
    tolerance: float = 0.01  # the export within this fraction of the target
    depth_tolerance: float = 0.1  # depth-only reaches only whole blocks
    prune_start: int = 40  # the cubic ramp starts here
    prune_end: int = 240  # ... and reaches the target here (160 recovery steps follow)
    prune_every: int = 20  # steps between pruning events
    calibration_batches: int = 16  # one-shot: fine-tuning batches its activation statistics come from
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = METHODS
    threads: int = 1  # torch threads per run
    workers: int = 2  # runs side by side
    speed_batch: int = 16  # throughput batch (× block_size tokens)
    speed_repeats: int = 30  # interleaved timing repeats
    speed_threads: int = 1  # torch threads while timing


QUICK = dict(
    n_layer=2,
    n_embd=32,
    n_head=4,
    gpt2_inner=128,
    llama_inner=96,
    target=0.7,  # embeddings of 256 bytes weigh much in so small a model
    block_size=16,
    pretrain_steps=20,
    pretrain_warmup=2,
    steps=12,
    batch_size=4,
    warmup_steps=2,
    prune_start=2,
    prune_end=8,
    prune_every=2,
    calibration_batches=2,
    seeds=(0,),
    workers=1,
    speed_batch=2,
    speed_repeats=3,
)

# the Config fields that shape a pretrained checkpoint / a run: cached or reused only where they all match
PRETRAIN_FIELDS = ("n_layer", "n_embd", "n_head", "n_kv_head", "gpt2_inner", "llama_inner", "block_size")
PRETRAIN_FIELDS += ("pretrain_source", "pretrain_steps", "pretrain_batch", "pretrain_lr", "pretrain_warmup")
PRETRAIN_FIELDS += ("weight_decay",)


def config_of(job: dict[str, Any]) -> Config:
    return Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in job["cfg"].items()})


# ---- models ----------------------------------------------------------------------------------------------------


def build(family: str, cfg: Config, shape: dict[str, Any] | None = None) -> nn.Module:
    """A randomly initialised model of ``family`` (dropout off), at the benchmark's size or at ``shape`` (config
    fields of a shrunk model)."""
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
    return {k: getattr(model.config, k) for k in SHAPE_KEYS[family]} | (
        {"head_dim": model.config.head_dim} if family == "llama" else {}
    )


def sizes(model: nn.Module, seq: int) -> dict[str, int]:
    """Parameters and FLOPs per token (attention products over ``seq`` tokens) of ``model`` as it is."""
    size = SizeModel.from_model(model, seq)
    return {"params": size.params(size.full), "flops": size.flops(size.full)}


# ---- pretraining -----------------------------------------------------------------------------------------------


def pretrain_key(cfg: Config, family: str, shape: dict[str, Any] | None) -> str:
    blob = json.dumps(
        {"family": family, "shape": shape, **{f: getattr(cfg, f) for f in PRETRAIN_FIELDS}}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def data(source: str, cfg: Config, batch_size: int, seed: int) -> Any:
    return text_module(source=source, block_size=cfg.block_size, batch_size=batch_size, seed=seed)


def pretrain(cfg: Config, family: str, cache: Path, shape: dict[str, Any] | None = None) -> tuple[Path, dict]:
    """The pretrained state dict of ``family`` (at ``shape``): from ``cache`` when there, else trained for
    ``pretrain_steps`` (AdamW, linear warm-up then constant, clipping 1.0) on ``pretrain_source`` and cached."""
    path = cache / f"structured-{family}-{pretrain_key(cfg, family, shape)}.pt"
    if path.exists():
        return path, {**torch.load(path, map_location="cpu", weights_only=False)["info"], "from_cache": True}
    cache.mkdir(parents=True, exist_ok=True)
    (cache / ".gitignore").write_text("*\n")  # the checkpoints are rebuilt, never committed
    t0, c0 = time.perf_counter(), time.process_time()
    dm = data(cfg.pretrain_source, cfg, cfg.pretrain_batch, 0)
    torch.manual_seed(0)
    model = build(family, cfg, shape)
    groups = [
        {"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=cfg.pretrain_lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.pretrain_warmup))
    step, epoch = 0, 0
    while step < cfg.pretrain_steps:
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            loss = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            if step >= cfg.pretrain_steps:
                break
        epoch += 1
    val = math.log(perplexity(model, dm.val_dataset.blocks[:256]))
    info = {
        "family": family,
        "shape": shape or shape_of(model, family),
        "steps": step,
        "tokens": step * cfg.pretrain_batch * cfg.block_size,
        "val_loss": val,
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
        **sizes(model, cfg.block_size),
    }
    torch.save({"state_dict": model.state_dict(), "info": info}, path)
    return path, {**info, "from_cache": False}


# ---- one fine-tuning run ---------------------------------------------------------------------------------------


def _load(family: str, cfg: Config, path: str | None, shape: dict[str, Any] | None = None) -> nn.Module:
    model = build(family, cfg, shape)
    if path:
        state = torch.load(path, map_location="cpu", weights_only=False)
        model.load_state_dict(state.get("state_dict", state))
    return model


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
    goal = cfg.target * size.params(size.full)
    units = Units.full(model, dims)
    return allocate(size, units, scores, goal, "params", False, cfg.tolerance, config_accepts(model))


def _dims(method: str, family: str) -> tuple[str, ...] | None:
    if method == DEPTH:
        return ("layers",)
    if method == WIDTH:
        return ("neurons",) if family == "gpt2" else ("neurons", "heads", "hidden")
    return None


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
    cfg, method, family, seed = config_of(job), job["method"], job["family"], job["seed"]
    torch.set_num_threads(cfg.threads)
    quiet(all_warnings=True)
    t0, c0 = time.perf_counter(), time.process_time()
    dm = data(cfg.finetune_source, cfg, cfg.batch_size, seed)
    seed_all(seed)
    shape = job.get("shape")
    start = None if method == SCRATCH else job.get("small_pretrained") if method == SCRATCH_PRE else job["pretrained"]
    model = _load(family, cfg, start, shape if method in (SCRATCH, SCRATCH_PRE) else None)
    teacher = _load(family, cfg, job["teacher"]).eval() if "distillation" in method or method == ONESHOT else None
    callbacks: list[Callback] = []
    pruning = None
    if method == ONESHOT:
        dims = ("neurons", "layers") if family == "gpt2" else ("neurons", "heads", "layers", "hidden")
        model = shrink_units_(model, one_shot(model, dm, cfg, dims), masked=False)
    elif method.startswith("ours"):
        criterion = method.rpartition(": ")[2].split(",")[0]
        schedule = Cubic(cfg.target, cfg.prune_start, cfg.prune_end, every=cfg.prune_every, unit="step")
        tolerance = cfg.depth_tolerance if method == DEPTH else cfg.tolerance
        target = SizeTarget(fraction=cfg.target)
        measured = {"loss_batches": 0} if method == SHARES else {}  # else the callback's default
        dims = _dims(method, family)
        pruning = StructuredPruning(target, schedule, dims, criterion, tolerance=tolerance, **measured)
        callbacks.append(pruning)
    if teacher is not None:
        callbacks.append(Distillation(teacher, weight=DISTILL_WEIGHT, temperature=DISTILL_TEMPERATURE))
    lr = cfg.pretrain_lr if method in (SCRATCH,) else cfg.lr
    lm = CausalLM(model=model, lr=lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps)
    fit = trainer(max_steps=cfg.steps, precision="32-true", gradient_clip_val=1.0, callbacks=callbacks)
    fit.fit(lm, datamodule=dm)
    if fit.global_step != cfg.steps:
        raise RuntimeError(f"{method}: ran {fit.global_step} steps, expected {cfg.steps}.")
    final = pruning.shrink_(copy.deepcopy(lm.model)) if pruning is not None else lm.model
    row = {
        "method": method,
        "family": family,
        "seed": seed,
        "val_ppl": perplexity(final, dm.val_dataset.blocks),
        "steps": fit.global_step,
        "tokens": fit.global_step * cfg.batch_size * cfg.block_size,
        "shape": shape_of(final, family),
        **sizes(final, cfg.block_size),
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
    }
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

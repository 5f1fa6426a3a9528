"""Pruning while fine-tuning a pretrained model on another text: validation perplexity against dense fine-tuning.

The regime users work in: a GPT-2-shaped ``TinyGPT`` is pretrained on one corpus (the King James Bible, bytes) until
its validation loss flattens (cached under ``benchmarks/results/cache/``, ignored by git), then fine-tuned on a
different text (the standard library's pydoc topics) while it is pruned. Every fine-tuning run starts from the same
pretrained weights with the same data, order (per seed), optimizer, schedule and steps; only the pruning differs:

* ``dense``: fine-tuning without pruning (the reference);
* ``ModelPruning (LTH)`` / ``(no LTH)``: Lightning's ``ModelPruning("l1_unstructured", use_global_unstructured=True)``
  reaching the same targets at the same steps as ours, with lottery-ticket rewinding (to the pretrained weights)
  and without; the summary keeps the better of the two per target and names it;
* ``one-shot magnitude + FT``: global |w| masks at the first step, held while fine-tuning;
* ``one-shot Wanda + FT``: Wanda masks (|w_ij|·‖x_j‖, per output row) from calibration batches of the fine-tuning
  text, held by :class:`lightning_prune.finetune.FineTune`;
* ``ours: <criterion>``: ``ImportanceTracking()`` + ``ScheduledPruning`` on Zhu & Gupta's cubic ramp sampled at
  every epoch boundary, global ranking (``wanda``: per output row); ``layer spread``: every layer within ± a bound;
* ``ours + distillation: <criterion>``: the best of our criteria, the loss mixed 50/50 with KL at temperature 2 to a
  frozen dense model: the dense fine-tuned model of the same seed (default; its training comes on top of the
  budget) or the pretrained model (``--distill-teachers pretrained``).

All prune the ``nn.Linear`` weights inside the transformer blocks. Seeds set the fine-tuning data order and every
random draw of pruning. Ratios are to the dense fine-tuning of the same seed; the summary gives their mean, min–max
and standard deviation, and calls a difference between two rows real only beyond the larger of their spreads.

Run: ``python -m benchmarks.transfer`` (about an hour on one core; ``--workers 2`` runs two single-thread runs side
by side), ``--quick`` (seconds, a smoke test). Writes ``benchmarks/results/transfer.json`` and ``transfer.png``.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from benchmarks.harness import (
    DISTILL_TEMPERATURE,
    DISTILL_WEIGHT,
    MP_BEST,
    MP_LTH,
    Distilled,
    TinyGPT,
    epoch_trainer,
    facts,
    measured_sparsity,
    model_pruning,
    perplexity,
    pyplot,
    quiet,
    seed_all,
    spread,
    text_module,
)
from benchmarks.harness.pretrain import cached, epochs, load, train_
from benchmarks.harness.runner import Runner, as_dict, config_of, key_of, keyed, option, parse, quick
from benchmarks.methods import MP_ROW, ONESHOT_MAG, ONESHOT_WANDA
from lightning_prune import AtEpochs, ImportanceTracking, OneShot, ScheduledPruning
from lightning_prune._selection import select_parameters
from lightning_prune.calibration import wanda_masks
from lightning_prune.finetune import FineTune
from lightning_prune.lm import CausalLM
from lightning_prune.schedules import cubic_sparsity

__all__ = ["QUICK", "Config", "main", "parse_args", "pretrain", "pruning_points", "run", "summarize"]

METHODS = ("dense", "lth", "nolth", "oneshot", "wanda", "ours", "spread", "distill")
# targets to compare against: mean ratio of val perplexity to dense fine-tuning at 50 and 70 %; at 90 % the gap to
# dense at least 50 % smaller than ModelPruning's best; ours at or below one-shot Wanda + fine-tuning everywhere
GOAL_RATIO = {0.5: 1.00, 0.7: 1.03}
GOAL_GAP_REDUCTION = 0.5


@dataclass
class Config:
    n_layer: int = option(4, quick=1, key="pretrain run")  # transformer blocks
    n_embd: int = option(128, quick=32, key="pretrain run")  # model width
    n_head: int = option(4, quick=2, key="pretrain run")  # attention heads
    block_size: int = option(64, quick=32, key="pretrain run")  # tokens (bytes) per example, also the context
    pretrain_source: str = option("kjv", key="pretrain run")  # corpus the model is pretrained on
    finetune_source: str = option("pydoc", key="run")  # the different text it is fine-tuned and pruned on
    pretrain_batch: int = option(8, quick=8, key="pretrain run")  # examples per pretraining step
    pretrain_lr: float = option(2e-3, key="pretrain run")  # AdamW rate of pretraining (warm-up, then constant)
    pretrain_warmup: int = option(100, quick=5, key="pretrain run")  # pretraining warm-up steps
    pretrain_max_steps: int = option(4000, quick=40, key="pretrain run")  # unless the val loss flattened before
    pretrain_eval_every: int = option(250, quick=20, key="pretrain run")  # steps between pretraining validations
    pretrain_eval_blocks: int = option(256, quick=16, key="pretrain run")  # held-out blocks per validation
    plateau: float = option(0.01, key="pretrain run")  # flattened: val loss fell by less over `plateau_evals` evals
    plateau_evals: int = option(2, key="pretrain run")  # validations the plateau is measured over
    batch_size: int = option(8, quick=4, key="run")  # examples per fine-tuning step
    epochs: int = option(24, quick=4, key="run")  # short fine-tuning epochs (ModelPruning acts at epoch ends)
    epoch_batches: int = option(10, quick=3, key="run")  # optimizer steps per epoch
    prune_start_epoch: int = option(2, quick=0, key="run", help="the ramp starts at this epoch's first step")
    prune_end_epoch: int = option(14, quick=2, key="run", help="the target is reached at this epoch's first step")
    lr: float = option(1e-3, key="run")  # fine-tuning AdamW peak learning rate (linear warm-up, cosine to 10 %)
    warmup_steps: int = option(20, quick=2, key="run")  # fine-tuning warm-up steps
    weight_decay: float = option(0.1, key="pretrain run")  # AdamW decoupled weight decay on matrices
    calibration_batches: int = option(32, quick=2, key="run")  # fine-tuning batches Wanda's masks come from
    seeds: tuple[int, ...] = option((0, 1, 2), quick=(0,))  # fine-tuning data order and pruning randomness
    targets: tuple[float, ...] = option((0.5, 0.7, 0.9), quick=(0.7,))  # final sparsities
    criteria: tuple[str, ...] = ("taylor", "movement", "running_magnitude", "wanda", "platon")  # ours
    methods: tuple[str, ...] = option(METHODS, choices=METHODS)  # which families of rows run
    spreads: tuple[float, ...] = (0.05, 0.1)  # "spread": platon with every layer within target ± this
    distill_teachers: tuple[str, ...] = option(("finetuned",), choices=["finetuned", "pretrained"])
    threads: int = option(1, key="run", help="torch threads per run")
    workers: int = option(1, help="runs side by side, one process each")
    extra: dict[str, Any] = option({})  # notes written to the JSON

    @property
    def steps(self) -> int:
        return self.epochs * self.epoch_batches


QUICK = quick(Config)


def data(source: str, cfg: Config, batch_size: int, seed: int) -> Any:
    return text_module(source=source, block_size=cfg.block_size, batch_size=batch_size, seed=seed)


def new_model(cfg: Config, vocab_size: int) -> TinyGPT:
    return TinyGPT(vocab_size, cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.block_size)


def pruning_points(cfg: Config, target: float) -> dict[int, float]:
    """{epoch: sparsity}: the cubic ramp from ``prune_start_epoch`` to ``prune_end_epoch`` at every epoch boundary,
    zero points dropped; ours prunes at the epoch's start, ModelPruning at the end of the one before."""
    eb = cfg.epoch_batches
    start, end = cfg.prune_start_epoch * eb, cfg.prune_end_epoch * eb
    points = {e: round(cubic_sparsity(e * eb, target, start, end, every=eb), 6) for e in range(1, cfg.epochs)}
    return {e: s for e, s in points.items() if s > 0 and e <= cfg.prune_end_epoch}


def pretrain(cfg: Config, cache: Path) -> tuple[Path, dict[str, Any]]:
    """The pretrained checkpoint: cached, or trained (warm-up, then a constant rate) until the held-out loss
    flattens."""

    def train() -> tuple[torch.nn.Module, dict[str, Any]]:
        dm = data(cfg.pretrain_source, cfg, cfg.pretrain_batch, 0)
        torch.manual_seed(0)
        model = new_model(cfg, dm.vocab_size)
        val = dm.val_dataset.blocks[: cfg.pretrain_eval_blocks]
        curve: list[tuple[int, float]] = [(0, math.log(perplexity(model, val)))]
        flat = [False]

        def flattened(step: int) -> bool:
            if step % cfg.pretrain_eval_every == 0:
                curve.append((step, math.log(perplexity(model, val))))
                if len(curve) > cfg.plateau_evals:
                    before = curve[-1 - cfg.plateau_evals][1]
                    flat[0] = (before - curve[-1][1]) / before < cfg.plateau
            return flat[0]

        lr, warmup = cfg.pretrain_lr, cfg.pretrain_warmup
        step = train_(model, epochs(dm), cfg.pretrain_max_steps, lr, cfg.weight_decay, warmup, stop=flattened)
        rule = f"stop when the held-out loss ({cfg.pretrain_eval_blocks} blocks) fell by less than {cfg.plateau:.0%} "
        rule += f"over the last {cfg.plateau_evals} validations, every {cfg.pretrain_eval_every} steps"
        info = {"steps": step, "flattened": flat[0], "val_loss_curve": curve}
        return model, {**info, "tokens": step * cfg.pretrain_batch * cfg.block_size, "rule": rule}

    return cached(cache, "pretrained", keyed(cfg, "pretrain"), train)


def run(job: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune the pretrained model under one method, target and seed; return its figures."""
    cfg, method, target, seed = config_of(Config, job["cfg"]), job["method"], job["target"], job["seed"]
    torch.set_num_threads(cfg.threads)
    quiet()
    t0, c0 = time.perf_counter(), time.process_time()
    dm = data(cfg.finetune_source, cfg, cfg.batch_size, seed)
    teacher = load(new_model(cfg, dm.vocab_size), job["teacher"]) if job.get("teacher") else None
    seed_all(seed)
    kwargs = dict(model=load(new_model(cfg, dm.vocab_size), job["pretrained"]), lr=cfg.lr)
    kwargs |= dict(weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps)
    lm = Distilled(teacher, **kwargs) if teacher is not None else CausalLM(**kwargs)
    points = pruning_points(cfg, target)
    callbacks: list[Callback] = []
    if method in (MP_LTH, MP_BEST):
        callbacks.append(model_pruning(lm, points, lottery_ticket=method == MP_LTH))
    elif method == ONESHOT_MAG:
        callbacks.append(ScheduledPruning(OneShot(target, at=0, unit="step"), "magnitude", log_histograms=False))
    elif method == ONESHOT_WANDA:
        calib = [b for _, b in zip(range(cfg.calibration_batches), dm.train_dataloader())]
        masks = wanda_masks(lm.model, [{"input_ids": b["input_ids"]} for b in calib], target)
        lm = FineTune(masks=masks, **{**kwargs, "model": lm.model})
    elif method.startswith("ours"):
        criterion, _, bound = method.rpartition(": ")[2].partition(", layer spread ")
        scope, spread_ = "output" if criterion == "wanda" else "global", float(bound) if bound else None
        pruning = ScheduledPruning(AtEpochs(points), criterion, scope=scope, log_histograms=False, layer_spread=spread_)
        callbacks += [ImportanceTracking(), pruning]
    fqns = list(select_parameters(lm))
    fit = epoch_trainer(cfg.epochs, cfg.epoch_batches, callbacks)
    fit.fit(lm, datamodule=dm)
    if fit.global_step != cfg.steps:
        raise RuntimeError(f"{method}: ran {fit.global_step} steps, expected {cfg.steps}.")
    row = {"method": method, "target": target, "seed": seed, "val_ppl": perplexity(lm.model, dm.val_dataset.blocks)}
    row |= {"sparsity": measured_sparsity(lm, fqns)[0], "steps": fit.global_step, "seconds": time.perf_counter() - t0}
    row |= {"cpu_seconds": time.process_time() - c0, "teacher": job.get("teacher_kind")}  # CPU: the cost on one core
    events = [cb.events for cb in callbacks if isinstance(cb, ScheduledPruning)]
    if events:
        row["pruning_events"] = len(events[0])
    if job.get("save_to"):
        torch.save(lm.model.state_dict(), job["save_to"])
    return row


# ---- summary ---------------------------------------------------------------------------------------------------


def summarize(rows: list[dict[str, Any]], cfg: Any) -> dict[str, Any]:
    """Per (method, target): perplexity and ratio to dense (same seed) over seeds; the goals and comparisons."""
    dense = {r["seed"]: r["val_ppl"] for r in rows if r["method"] == "dense"}
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        r["ratio_to_dense"] = r["val_ppl"] / dense[r["seed"]] if r["seed"] in dense else None
        if r["ratio_to_dense"] is not None and r["method"] != "dense":
            groups.setdefault((r["method"], r["target"]), []).append(r)
    table: dict[str, dict[str, Any]] = {}
    for (m, t), rs in groups.items():
        cell = {"ratio": spread([r["ratio_to_dense"] for r in rs])}
        cell |= {k: spread([r[k] for r in rs]) for k in ("val_ppl", "sparsity")}
        table.setdefault(m, {})[f"{t:g}"] = {**cell, "seeds": [r["seed"] for r in rs]}
    for key in (f"{t:g}" for t in cfg.targets):  # ModelPruning's best configuration per target
        options = [m for m in (MP_LTH, MP_BEST) if key in table.get(m, {})]
        if options:
            best = min(options, key=lambda m: table[m][key]["ratio"]["mean"])
            table.setdefault(MP_ROW, {})[key] = {**table[best][key], "configuration": best}
    ours = [m for m in table if m.startswith("ours: ") and all(f"{t:g}" in table[m] for t in cfg.targets)]
    mean = lambda m: statistics.fmean(table[m][f"{t:g}"]["ratio"]["mean"] for t in cfg.targets)  # noqa: E731
    best_criterion = min(ours, key=mean).rpartition(": ")[2] if ours else None
    return {
        "dense_val_ppl": spread(list(dense.values())) if dense else None,
        "rows": table,
        "best_criterion": best_criterion,
        "goals": goals(table, cfg),
    }


def real(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """A difference of mean ratios counts only when larger than the larger min–max spread of the two rows."""
    return abs(a["mean"] - b["mean"]) > max(a["max"] - a["min"], b["max"] - b["min"])


def goals(table: dict[str, dict[str, Any]], cfg: Any) -> dict[str, Any]:
    """Per target and per row of ours: the targets to compare against, met or missed, and by how much."""
    out: dict[str, Any] = {}
    for t in cfg.targets:
        key, per = f"{t:g}", {}
        mp, wanda = table.get(MP_ROW, {}).get(key), table.get(ONESHOT_WANDA, {}).get(key)
        for m, by in table.items():
            if not m.startswith("ours") or key not in by:
                continue
            r = by[key]["ratio"]
            g: dict[str, Any] = {"ratio_mean": r["mean"], "ratio_min": r["min"], "ratio_max": r["max"]}
            if t in GOAL_RATIO:
                g |= {"ratio_goal": GOAL_RATIO[t], "ratio_goal_met": r["mean"] <= GOAL_RATIO[t]}
                g["ratio_goal_margin"] = GOAL_RATIO[t] - r["mean"]
            if math.isclose(t, 0.9) and mp is not None:
                gap, mp_gap = r["mean"] - 1, mp["ratio"]["mean"] - 1
                g["gap"], g["model_pruning_best_gap"] = gap, mp_gap
                g["gap_reduction"] = 1 - gap / mp_gap if mp_gap > 0 else None
                g["gap_goal_met"] = mp_gap > 0 and gap <= (1 - GOAL_GAP_REDUCTION) * mp_gap
            if wanda is not None:
                g["vs_oneshot_wanda"] = r["mean"] - wanda["ratio"]["mean"]
                g["at_or_below_oneshot_wanda"] = r["mean"] <= wanda["ratio"]["mean"]
                g["difference_to_wanda_real"] = real(r, wanda["ratio"])
            if mp is not None:
                g["vs_model_pruning_best"] = r["mean"] - mp["ratio"]["mean"]
                g["difference_to_model_pruning_real"] = real(r, mp["ratio"])
            per[m] = g
        out[key] = per
    return out


def plot(summary: dict[str, Any], cfg: Any, path: Path) -> bool:
    """Mean ratio to dense against the target, with min–max bars, one line per row."""
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(8, 5))
    rank = {MP_ROW: 2, ONESHOT_MAG: 3, ONESHOT_WANDA: 4}
    rows = sorted(summary["rows"].items(), key=lambda kv: rank.get(kv[0], 6 if "distillation" in kv[0] else 5))
    for i, (m, by) in enumerate(kv for kv in rows if kv[0] not in (MP_LTH, MP_BEST)):
        ts = [t for t in cfg.targets if f"{t:g}" in by]
        r = [by[f"{t:g}"]["ratio"] for t in ts]
        err = [[q["mean"] - q["min"] for q in r], [q["max"] - q["mean"] for q in r]]
        style = "--" if m.startswith(("ModelPruning", "one-shot")) else "-"
        x = [t + (i - 3) * 0.004 for t in ts]  # spread the bars apart
        ax.errorbar(x, [q["mean"] for q in r], yerr=err, fmt=style, marker="o", capsize=3, label=m)
    ax.axhline(1.0, color="k", lw=1, label="dense fine-tuning")
    ax.set(xlabel="target sparsity of the block Linear weights", ylabel="val perplexity / dense fine-tuning",
           title=f"pretrained on {cfg.pretrain_source}, fine-tuned on {cfg.finetune_source}")  # fmt: skip
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


# ---- main ------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> tuple[Config, Any]:
    cfg, args = parse(Config, argv, __doc__, "transfer")
    if not 0 <= cfg.prune_start_epoch < cfg.prune_end_epoch < cfg.epochs:
        raise SystemExit(f"need 0 <= prune_start_epoch < prune_end_epoch < epochs, got {cfg}.")
    return cfg, args


def plan(cfg: Config) -> list[tuple[str, float]]:
    """(method, target) of the same-budget comparison, dense first."""
    names = {"lth": [MP_LTH], "nolth": [MP_BEST], "oneshot": [ONESHOT_MAG], "wanda": [ONESHOT_WANDA]}
    names |= {"ours": [f"ours: {c}" for c in cfg.criteria]}
    names |= {"spread": [f"ours: platon, layer spread {s:g}" for s in cfg.spreads]}
    out = [("dense", 0.0)] if "dense" in cfg.methods else []
    return out + [(m, t) for t in cfg.targets for k, ms in names.items() if k in cfg.methods for m in ms]


def document(runner: Runner, dm: Any, pre_info: dict[str, Any], before_ft: float) -> dict[str, Any]:
    """The JSON document: conditions, pretraining, every run's figures and the summary."""
    cfg, rows = runner.cfg, runner.rows
    lm = CausalLM(model=new_model(cfg, dm.vocab_size))
    n_train, pruned = dm.train_dataset.blocks.numel(), select_parameters(lm).values()
    return {
        "conditions": {
            "model": f"TinyGPT (benchmarks.harness: pre-LN GPT, nn.Linear layers) n_layer={cfg.n_layer} "
            f"n_embd={cfg.n_embd} n_head={cfg.n_head} context={cfg.block_size}, byte-level vocabulary {dm.vocab_size}",
            "parameters": sum(p.numel() for p in lm.parameters()),
            "pruned_parameters": sum(p.numel() for _, p in pruned),
            "pretraining": f"{cfg.pretrain_source}, batch {cfg.pretrain_batch}×{cfg.block_size}, AdamW "
            f"lr={cfg.pretrain_lr} (warm-up {cfg.pretrain_warmup}, then constant), clipping 1.0",
            "finetuning_data": f"{cfg.finetune_source}, {n_train} training tokens, {dm.val_dataset.blocks.numel()} "
            "validation tokens (deterministic last 5 %), every validation token scored",
            "steps": cfg.steps,
            "tokens_per_step": cfg.batch_size * cfg.block_size,
            "passes_over_finetuning_data": cfg.steps * cfg.batch_size * cfg.block_size / n_train,
            "schedule": {f"{t:g}": pruning_points(cfg, t) for t in cfg.targets},
            "schedule_note": "ours: AtEpochs points, pruned at the start of the epoch; ModelPruning: the same targets "
            "at the end of the epoch before, amount = (b - a) / (1 - a); one-shot: at the first step",
            "optimizer": f"AdamW lr={cfg.lr} betas=(0.9, 0.95) weight_decay={cfg.weight_decay} (matrices), warm-up "
            f"{cfg.warmup_steps} steps then cosine to 10 %, gradient clipping 1.0, float32",
            "distillation": f"loss = {1 - DISTILL_WEIGHT:g}·LM + {DISTILL_WEIGHT:g}·T²·KL, T = {DISTILL_TEMPERATURE:g}",
            "config": as_dict(cfg),
            "torch_num_threads_per_run": cfg.threads,
            "workers": cfg.workers,
            **facts("torch", "lightning", "platform", "cpu_count", "load_average_1_5_15min_at_end"),
            "wall_seconds": runner.seconds,
            "run_seconds_total": sum(r["seconds"] for r in rows),
            "run_cpu_seconds_total": sum(r.get("cpu_seconds", 0.0) for r in rows),
            "runs_with_cpu_seconds": sum("cpu_seconds" in r for r in rows),
            "quick": runner.args.quick,
        },
        "pretraining": pre_info,
        "pretrained_val_ppl_on_finetuning_text": before_ft,
        "summary": summarize(rows, cfg),
        "runs": rows,
    }


def main(argv: list[str] | None = None) -> None:
    cfg, args = parse_args(argv)
    quiet()
    if args.summarize_only:  # recompute the summary and CPU totals of the runs already in --out
        result = json.loads(args.out.read_text())
        cfg, rows = config_of(Config, result["conditions"]["config"]), result["runs"]
        result["summary"] = summarize(rows, cfg)
        result["conditions"]["run_cpu_seconds_total"] = sum(r.get("cpu_seconds", 0.0) for r in rows)
        result["conditions"]["runs_with_cpu_seconds"] = sum("cpu_seconds" in r for r in rows)
        runner = Runner(cfg, args, lambda _: result)
        return runner.finish(result, lambda png: plot(result["summary"], cfg, png))
    torch.set_num_threads(cfg.threads)
    pretrained, pre_info = pretrain(cfg, args.cache)
    took = "cached" if pre_info["from_cache"] else f"{pre_info['seconds']:.0f} s"
    print(f"pretrained: {pre_info['steps']} steps, val loss {pre_info['val_loss_curve'][-1][1]:.4f} ({took})")
    dm = data(cfg.finetune_source, cfg, cfg.batch_size, cfg.seeds[0])
    before_ft = perplexity(load(new_model(cfg, dm.vocab_size), pretrained), dm.val_dataset.blocks)
    runner = Runner(cfg, args, lambda r: document(r, dm, pre_info, before_ft))
    base = {"cfg": as_dict(cfg), "pretrained": str(pretrained)}
    dense = {s: args.cache / f"dense-ft-{key_of(keyed(cfg, 'pretrain'))}-{key_of(keyed(cfg, 'run'), 8)}-seed{s}.pt"
             for s in cfg.seeds}  # fmt: skip
    jobs = [{**base, "method": m, "target": t, "seed": s} for s in cfg.seeds for m, t in plan(cfg)]
    for job in jobs:
        job["save_to"] = str(dense[job["seed"]]) if job["method"] == "dense" else None
    jobs.sort(key=lambda j: j["method"] != "dense")  # the teachers first
    say = "{method:36s} target {target:.2f} seed {seed}: val ppl {val_ppl:.4f}, sparsity {sparsity:.4f}"
    runner.run(run, jobs, ("method", "target", "seed"), say)
    best = summarize(runner.rows, cfg)["best_criterion"]
    if "distill" in cfg.methods and best is not None:
        flat = args.cache / f"pretrained-{key_of(keyed(cfg, 'pretrain'))}-weights.pt"
        jobs = []
        for teacher in cfg.distill_teachers:
            for s in cfg.seeds:
                path = dense[s] if teacher == "finetuned" else flat
                if teacher == "finetuned" and not path.exists():
                    raise SystemExit(f"the dense fine-tuned teacher {path} is missing: run without --reuse.")
                job = {**base, "method": f"ours + distillation ({teacher}): {best}", "seed": s, "teacher": str(path)}
                jobs += [{**job, "target": t, "teacher_kind": teacher} for t in cfg.targets]
        if "pretrained" in cfg.distill_teachers and not flat.exists():  # the state dict alone, extracted once
            torch.save(torch.load(pretrained, map_location="cpu", weights_only=False)["state_dict"], flat)
        runner.run(run, jobs, ("method", "target", "seed"), say)
    result = runner.write()
    print(f"best running criterion: {result['summary']['best_criterion']}")
    runner.finish(result, lambda png: plot(result["summary"], cfg, png))


if __name__ == "__main__":
    main()

"""Quality after pruning while training: validation perplexity of ours vs Lightning's ``ModelPruning`` vs dense.

Every run trains the same model from the same initial weights on the same data in the same order, for the same
number of optimizer steps with the same optimizer and learning-rate schedule; only the pruning differs:

* ``dense``: no pruning;
* ``ModelPruning (LTH, default)``: ``lightning.pytorch.callbacks.ModelPruning("l1_unstructured",
  use_global_unstructured=True)`` with its default ``use_lottery_ticket_hypothesis=True`` (surviving weights are
  rewound to their initial values after each pruning event);
* ``ModelPruning (no LTH)``: the same with ``use_lottery_ticket_hypothesis=False`` (its best);
* ``ours: <criterion>``: ``ImportanceTracking()`` + ``ScheduledPruning(AtEpochs(...), criterion, scope="global")``.

All prune the same weights (the ``nn.Linear`` weights inside the transformer blocks; embeddings, norms, biases and
the output head are left dense) to the same targets at the same points: the sparsity rises in three steps (the
cubic schedule of Zhu & Gupta 2017 sampled at three points, s_f·(1 − (1 − k/3)³), k = 1, 2, 3) and the masks are
then held through the recovery epochs. Ours prunes at the *start* of epochs p1, p2, p3; ModelPruning prunes at the
*end* of the epoch before (its only choice), so both see the same weights trained for the same steps. Its
``amount`` is a fraction of what remains, so going from sparsity a to b is amount (b − a)/(1 − a).

Model: a small pure-PyTorch causal transformer (pre-LayerNorm GPT, ``nn.Linear`` layers and
``F.scaled_dot_product_attention``; no ``nn.MultiheadAttention``, which ``torch.nn.utils.prune`` breaks), so that
both tools see the same plain ``nn.Linear`` weights. It is deliberately small for its data (~0.11 M parameters,
byte-level, on the 4 M characters of the King James Bible) and trained long enough that capacity limits it: in a
run too short for that, every method looks alike.

Validation perplexity: exp of the mean next-byte negative log-likelihood over the whole held-out split (the data
module's deterministic last 5%), computed after training (for ModelPruning after its masks are made permanent).
Sparsity is measured from the weights: the fraction of exactly-zero entries of the pruned matrices.

Run: ``python -m benchmarks.quality`` (about an hour on 2 shared cores, one thread),
``python -m benchmarks.quality --quick`` (about a minute, smoke test). Writes ``benchmarks/results/quality.json``
(and ``quality.png`` when matplotlib is installed) and prints a markdown table.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from typing_extensions import override

from benchmarks.harness import (
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
    text_module,
)
from benchmarks.harness.runner import Runner, as_dict, config_of, key_of, keyed, option, parse
from lightning_prune import AtEpochs, Cubic, ImportanceTracking, Schedule, ScheduledPruning
from lightning_prune._selection import select_parameters
from lightning_prune.lm import CausalLM

__all__ = ["Config", "main", "run", "schedule_points"]

# other settings of ours, outside the same-schedule comparison (``--variants``): candidates to close a gap
VARIANTS = {
    "cubic-steps": "Cubic(unit='step', every=10) over the same window: from the first pruning epoch's first step to "
    "the last's, the same final sparsity at the same step, in small steps instead of three jumps",
    "layer": "scope='layer': every matrix pruned to the target on its own (no global ranking)",
    "distill": "the same schedule, and the loss mixed 50/50 with distillation (KL at temperature 2) from the dense "
    "model trained with the same budget; not the same budget: the teacher's training and forward passes come on top",
}
# targets to compare against: ratio of val perplexity to dense at each sparsity; at 90% the gap to dense must be
# at least 20% smaller than ModelPruning-best's
GOAL_RATIO = {0.5: 1.00, 0.7: 1.05}
GOAL_GAP_REDUCTION = 0.2


@dataclass
class Config:
    n_layer: int = option(3, quick=1, key="run")  # transformer blocks
    n_embd: int = option(48, quick=32, key="run")  # width (pilot: 48 makes ModelPruning-best lose >10% at 90%)
    n_head: int = option(4, quick=2, key="run")  # attention heads
    block_size: int = option(64, key="run")  # tokens (bytes) per example, also the model's context
    batch_size: int = option(32, quick=8, key="run")  # examples per optimizer step
    epochs: int = option(10, quick=5, key="run", help="number of epochs (pruning epochs stay as configured)")
    epoch_batches: int = option(100, quick=6, key="run")  # optimizer steps per epoch (ModelPruning: epoch ends)
    prune_epochs: tuple[int, ...] = option((3, 4, 5), quick=(1, 2, 3), key="run", help="ours prunes at their start")
    lr: float = option(3e-3, key="run")  # AdamW peak learning rate (CausalLM: linear warm-up, cosine to 10%)
    warmup_steps: int = option(100, quick=5, key="run")  # linear warm-up
    weight_decay: float = option(0.1, key="run")  # AdamW, on matrices only
    seed: int = option(0, key="run")  # model initialisation and data order
    source: str = option("kjv", key="run")  # corpus of lightning_prune.data
    max_tokens: int | None = option(None, quick=200_000, key="run", type=int)  # cap on training tokens
    val_tokens: int | None = option(None, quick=16_384, key="run", type=int)  # cap on validation tokens
    curve_tokens: int = option(16384, quick=2048, key="run")  # validation tokens for the per-epoch curve
    threads: int = option(1, key="run", help="torch.set_num_threads")
    criteria: tuple[str, ...] = ("running_magnitude", "magnitude", "taylor", "movement", "time_weighted")
    targets: tuple[float, ...] = (0.5, 0.7, 0.9)  # final sparsities
    methods: tuple[str, ...] = option(("dense", "lth", "nolth", "ours"), choices=["dense", "lth", "nolth", "ours"])
    variants: tuple[str, ...] = option((), choices=list(VARIANTS), type=str)  # run after the comparison
    variant_criteria: tuple[str, ...] = ("running_magnitude",)  # criteria of the variant runs
    extra: dict[str, Any] = option({})  # notes written to the JSON

    @property
    def steps(self) -> int:
        return self.epochs * self.epoch_batches


def data(cfg: Config) -> Any:
    return text_module(source=cfg.source, block_size=cfg.block_size, batch_size=cfg.batch_size, seed=cfg.seed,
                       max_tokens=cfg.max_tokens, max_val_tokens=cfg.val_tokens)  # fmt: skip


def make_lm(cfg: Config, vocab_size: int, teacher: nn.Module | None = None) -> CausalLM:
    """The same initial weights for every run (seeded); with ``teacher``, distilled from it."""
    torch.manual_seed(cfg.seed)
    model = TinyGPT(vocab_size, cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.block_size)
    kwargs = dict(model=model, lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps)
    return Distilled(teacher, **kwargs) if teacher is not None else CausalLM(**kwargs)


_TEACHERS: dict[str, nn.Module] = {}


def dense_teacher(cfg: Config, dm: Any) -> nn.Module:
    """The dense model trained with the benchmark's budget (trained once per process, then reused)."""
    key = key_of(keyed(cfg, "run"))
    if key not in _TEACHERS:
        lm = make_lm(cfg, dm.vocab_size)
        seed_all(cfg.seed)
        epoch_trainer(cfg.epochs, cfg.epoch_batches, []).fit(lm, datamodule=dm)
        _TEACHERS[key] = lm.model
    return _TEACHERS[key]


def schedule_points(final: float, prune_epochs: tuple[int, ...]) -> dict[int, float]:
    """{epoch: target sparsity}: Zhu & Gupta's cubic ramp s_f·(1 − (1 − k/n)³) at the k-th of n pruning epochs."""
    n = len(prune_epochs)
    return {e: round(final * (1.0 - (1.0 - (k + 1) / n) ** 3), 6) for k, e in enumerate(prune_epochs)}


class Curve(Callback):
    """Validation perplexity on the first few held-out blocks at every epoch end (after ModelPruning's pruning)."""

    def __init__(self, blocks: Tensor) -> None:
        self.blocks, self.ppl = blocks, []

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.ppl.append(perplexity(pl_module.model, self.blocks))


def parse_ours(method: str) -> tuple[str | None, str]:
    """``"ours: taylor"`` → (None, "taylor"); ``"ours [layer]: taylor"`` → ("layer", "taylor")."""
    head, _, criterion = method.partition(": ")
    return (head[len("ours [") : -1] if head.startswith("ours [") else None), criterion


def pruning_callbacks(method: str, target: float, cfg: Config, lm: CausalLM) -> list[Callback]:
    """The callbacks of one method at one target sparsity (dense: none)."""
    if method == "dense":
        return []
    points = schedule_points(target, cfg.prune_epochs)
    if method in (MP_LTH, MP_BEST):
        return [model_pruning(lm, points, lottery_ticket=method == MP_LTH)]
    variant, criterion = parse_ours(method)
    schedule: Schedule = AtEpochs(points)
    if variant == "cubic-steps":
        start, end = cfg.prune_epochs[0] * cfg.epoch_batches, cfg.prune_epochs[-1] * cfg.epoch_batches
        schedule = Cubic(final=target, start=start, end=end, every=10, unit="step")
    scope = "layer" if variant == "layer" else "global"
    return [ImportanceTracking(), ScheduledPruning(schedule, criterion=criterion, scope=scope, log_histograms=False)]


def run(job: dict[str, Any]) -> dict[str, Any]:
    """Train one model under ``method`` to ``target`` sparsity; return its figures."""
    cfg, method, target = config_of(Config, job["cfg"]), job["method"], job["target"]
    t0, dm = time.perf_counter(), data(cfg)
    lm = make_lm(cfg, dm.vocab_size, dense_teacher(cfg, dm) if method.startswith("ours [distill]") else None)
    fqns = list(select_parameters(lm))
    curve = Curve(dm.val_dataset.blocks[: max(1, cfg.curve_tokens // cfg.block_size)])
    callbacks = [*pruning_callbacks(method, target, cfg, lm), curve]
    seed_all(cfg.seed)
    fit = epoch_trainer(cfg.epochs, cfg.epoch_batches, callbacks)
    fit.fit(lm, datamodule=dm)
    if fit.global_step != cfg.steps:
        raise RuntimeError(f"{method}: ran {fit.global_step} steps, expected {cfg.steps} (too few batches?).")
    sparsity, per_layer = measured_sparsity(lm, fqns)
    dense = method == "dense"
    row = {"method": method, "target": 0.0 if dense else target}
    row["schedule"] = {} if dense else schedule_points(target, cfg.prune_epochs)
    row["variant"] = parse_ours(method)[0] if method.startswith("ours") else None
    row |= {"val_ppl": perplexity(lm.model, dm.val_dataset.blocks), "sparsity": sparsity}
    row |= {"sparsity_per_layer": per_layer, "curve_ppl": curve.ppl, "steps": fit.global_step}
    row["seconds"] = time.perf_counter() - t0
    events = [cb.events for cb in callbacks if isinstance(cb, ScheduledPruning)]
    if events:
        row["events"] = events[0]
    return row


# ---- summary ---------------------------------------------------------------------------------------------------


def add_ratios(rows: list[dict[str, Any]]) -> float | None:
    """Set every row's ``ratio_to_dense`` (its perplexity over the dense run's); return the dense perplexity."""
    dense = next((r["val_ppl"] for r in rows if r["method"] == "dense"), None)
    for r in rows:
        r["ratio_to_dense"] = r["val_ppl"] / dense if dense else None
    return dense


def goals(rows: list[dict[str, Any]], dense: float | None, targets: tuple[float, ...]) -> dict[str, Any]:
    """Which of the targets to compare against are met, per criterion of ours (and by the best of ours)."""
    if dense is None:
        return {}
    by = {(r["method"], r["target"]): r for r in rows}
    ours = list(dict.fromkeys(r["method"] for r in rows if r["method"].startswith("ours")))
    out: dict[str, Any] = {}
    for t in targets:
        mp = [by[(m, t)]["val_ppl"] for m in (MP_LTH, MP_BEST) if (m, t) in by]
        best_mp = min(mp) if mp else None
        mp_best_gap = by[(MP_BEST, t)]["val_ppl"] / dense - 1 if (MP_BEST, t) in by else None
        per = {}
        for m in ours:
            if (m, t) not in by:
                continue
            ppl = by[(m, t)]["val_ppl"]
            g: dict[str, Any] = {"ratio": ppl / dense, "below_model_pruning": best_mp is None or ppl < best_mp}
            if t in GOAL_RATIO:
                g["ratio_goal"] = GOAL_RATIO[t]
                g["ratio_goal_met"] = ppl / dense <= GOAL_RATIO[t]
            if math.isclose(t, 0.9) and mp_best_gap is not None:
                gap = ppl / dense - 1
                g["gap"], g["model_pruning_best_gap"] = gap, mp_best_gap
                g["gap_reduction"] = 1 - gap / mp_best_gap if mp_best_gap > 0 else None
                g["gap_goal_met"] = gap <= (1 - GOAL_GAP_REDUCTION) * mp_best_gap
            g["variant"] = by[(m, t)].get("variant")
            per[m] = g
        main = [m for m in per if per[m]["variant"] is None]
        best = min(main, key=lambda m: per[m]["ratio"]) if main else None
        out[f"{t:g}"] = {"model_pruning_best_gap": mp_best_gap, "best_of_ours_same_settings": best, "ours": per}
    return out


def plot(rows: list[dict[str, Any]], dense: float | None, cfg: Any, path: Path) -> bool:
    """Perplexity vs sparsity per method, and the per-epoch validation curves at the highest target (``cfg``: the
    run's ``Config``)."""
    plt = pyplot()
    if plt is None:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "dense"))
    for m in methods:
        pts = sorted((r["sparsity"], r["val_ppl"]) for r in rows if r["method"] == m)
        style = "--" if m.startswith("ModelPruning") else "-"
        ax1.plot(*zip(*pts), style, marker="o", label=m)
    if dense is not None:
        ax1.axhline(dense, color="k", lw=1, label="dense")
    ax1.set(xlabel="measured sparsity of the pruned matrices", ylabel="validation perplexity (bytes)")
    ax1.legend(fontsize=7)
    top = max(cfg.targets)
    for r in rows:
        if r["method"] == "dense" or math.isclose(r["target"], top):
            ax2.plot(
                range(1, len(r["curve_ppl"]) + 1),
                r["curve_ppl"],
                label=r["method"],
                color="k" if r["method"] == "dense" else None,
            )
    for p in cfg.prune_epochs:
        ax2.axvline(p, color="grey", lw=0.5, ls=":")
    ax2.set(
        xlabel="epoch",
        ylabel=f"val perplexity (first {cfg.curve_tokens} tokens)",
        yscale="log",
        title=f"target {top:.0%}; dotted: pruning points",
    )
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


# ---- main ------------------------------------------------------------------------------------------------------


def method_names(cfg: Config) -> list[str]:
    names = ([MP_LTH] if "lth" in cfg.methods else []) + ([MP_BEST] if "nolth" in cfg.methods else [])
    names += [f"ours: {c}" for c in cfg.criteria] if "ours" in cfg.methods else []
    return names + [f"ours [{v}]: {c}" for v in cfg.variants for c in cfg.variant_criteria]


def parse_args(argv: list[str] | None = None) -> tuple[Config, Any]:
    def flags(parser: Any) -> None:
        parser.add_argument("--steps", type=int, help="total optimizer steps (split evenly over the epochs)")

    cfg, args = parse(Config, argv, __doc__, "quality", flags)
    if args.steps:
        cfg.epoch_batches = max(1, args.steps // cfg.epochs)
    if max(cfg.prune_epochs) >= cfg.epochs or min(cfg.prune_epochs) < 1:
        raise SystemExit(f"prune epochs {cfg.prune_epochs} must lie in 1..{cfg.epochs - 1} (epochs={cfg.epochs}).")
    return cfg, args


def document(runner: Runner, dm: Any, todo: int) -> dict[str, Any]:
    """The JSON document: conditions, goals and every row measured so far."""
    cfg, rows = runner.cfg, runner.rows
    lm = make_lm(cfg, dm.vocab_size)
    shapes = {f: list(p.shape) for f, (_, p) in select_parameters(lm).items()}
    n_train = dm.train_dataset.blocks.numel()
    dense = add_ratios(rows)
    return {
        "conditions": {
            "model": f"TinyGPT (pre-LN GPT, nn.Linear layers) n_layer={cfg.n_layer} n_embd={cfg.n_embd} "
            f"n_head={cfg.n_head} context={cfg.block_size}, byte-level vocabulary {dm.vocab_size}",
            "parameters": sum(p.numel() for p in lm.parameters()),
            "pruned_parameters": sum(map(math.prod, shapes.values())),
            "pruned_weights": shapes,
            "data": f"{cfg.source} (lightning_prune.data.TextDataModule, byte tokenizer), {n_train} training tokens, "
            f"{dm.val_dataset.blocks.numel()} validation tokens (deterministic last 5% split)",
            "steps": cfg.steps,
            "tokens_per_step": cfg.batch_size * cfg.block_size,
            "passes_over_training_data": cfg.steps * cfg.batch_size * cfg.block_size / n_train,
            "schedule": {f"{t:g}": schedule_points(t, cfg.prune_epochs) for t in cfg.targets},
            "schedule_note": "ours: AtEpochs points, pruned at the start of the epoch; ModelPruning: the same "
            "targets at the end of the epoch before, amount = (b - a) / (1 - a)",
            "optimizer": f"AdamW lr={cfg.lr} betas=(0.9, 0.95) weight_decay={cfg.weight_decay} (matrices), "
            f"warm-up {cfg.warmup_steps} steps then cosine to 10%, gradient clipping 1.0, float32",
            "config": as_dict(cfg),
            **facts(
                "torch_num_threads", "torch", "lightning", "platform", "cpu_count", "load_average_1_5_15min_at_end"
            ),
            "wall_seconds": runner.seconds,
            "run_seconds_total": sum(r["seconds"] for r in rows),
            "complete": len(rows) >= todo,
            "quick": runner.args.quick,
        },
        "dense_val_ppl": dense,
        "goals": goals(rows, dense, cfg.targets),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> None:
    cfg, args = parse_args(argv)
    quiet()
    torch.set_num_threads(cfg.threads)
    dm = data(cfg)
    if cfg.epoch_batches * cfg.batch_size > dm.train_dataset.blocks.shape[0]:
        raise SystemExit("an epoch needs more batches than the training split has; lower --steps or raise epochs.")
    plan = [("dense", 0.0)] if "dense" in cfg.methods else []
    plan += [(method, target) for target in cfg.targets for method in method_names(cfg)]
    runner = Runner(cfg, args, lambda r: document(r, dm, len(plan)), rows="rows")
    first = document(runner, dm, len(plan))["conditions"]
    print(f"model: {first['parameters']} parameters, {first['pruned_parameters']} pruned; {cfg.steps} steps "
          f"({first['passes_over_training_data']:.2f} passes); {len(runner.rows)} rows reused", flush=True)  # fmt: skip
    jobs = [{"cfg": as_dict(cfg), "method": m, "target": t} for m, t in plan]
    runner.run(
        run,
        jobs,
        ("method", "target"),
        "{method:32s} target {target:.2f}: val ppl {val_ppl:.4f}, sparsity {sparsity:.4f}",
    )
    result = runner.write()
    runner.finish(result, lambda png: plot(runner.rows, result["dense_val_ppl"], cfg, png))


if __name__ == "__main__":
    main()

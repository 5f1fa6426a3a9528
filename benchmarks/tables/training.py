"""Tables of what pruning while training costs in quality: the main job, the benchmarks against Lightning's
``ModelPruning`` (from scratch and while fine-tuning a pretrained model, and where the ramp ends), the sparsity
sweep and the pretrained sentence encoder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.markdown import bold, markdown_table, pct, spread_cell
from benchmarks.methods import MP_BEST, MP_LTH, MP_ROW, ONESHOT_MAG, ONESHOT_WANDA
from benchmarks.tables.source import load, result

__all__ = ["distill_cost", "main_job", "pretrained", "quality", "sweep", "transfer", "transfer_schedule"]


def _count(nonzero: int, parameters: int) -> str:
    return f"{parameters:,}" if nonzero == parameters else f"{nonzero:,} / {parameters:,}"


def main_job(root: Path) -> str:
    """``main.json`` (the ``report.json`` of ``lightning-prune fit --config recipes/main.yaml``) beside its dense
    reference of the same budget, ``recipes/main_dense.json``.

    Raises:
        ValueError: if the run did not use that reference (its budget differed).
    """
    run, ref = result(root, "main"), load(root, "recipes/main_dense.json")
    if not run["reference"]["used"]:
        raise ValueError(f"main.json was not compared with recipes/main_dense.json: {run['reference']['why']}")
    before, same, final = run["dense_before_pruning"], ref["final"], run["final"]
    rows = [
        [
            f"dense, before first pruning (epoch {before['epoch']}, this run)",
            f"{before['val_ppl']:.3f}",
            f"{before['val_loss']:.4f}",
            pct(before["sparsity"], 1),
            _count(run["parameters"], run["parameters"]),
        ],
        [
            f"dense, same budget (epoch {same['epoch']}, reference run)",
            f"{same['val_ppl']:.3f}",
            f"{same['val_loss']:.4f}",
            pct(same["sparsity"], 1),
            _count(ref["nonzero"], ref["parameters"]),
        ],
        [
            f"{run['final_label']} (epoch {final['epoch']}, this run)",
            f"{final['val_ppl']:.3f}",
            f"{final['val_loss']:.4f}",
            pct(final["sparsity"], 1),
            _count(run["nonzero"], run["parameters"]),
        ],
    ]
    return markdown_table(["model", "val ppl", "val loss", "sparsity (pruned weights)", "non-zero params"], rows)


QUALITY_VARIANTS = {  # variant of ours in quality.json → row label, for criterion c
    "cubic-steps": "ours: `{c}`, cubic schedule in steps of 10",
    "layer": 'ours: `{c}`, `scope="layer"`',
    "distill": "ours: `{c}` + distillation from the dense model (extra compute, see below)",
}


def quality(root: Path) -> str:
    """``quality.json``: perplexity and ratio to dense at every target; the best of ours at every target in bold."""
    doc = result(root, "quality")
    cfg, dense = doc["conditions"]["config"], doc["dense_val_ppl"]
    targets = cfg["targets"]
    by = {(r["method"], r["target"]): r for r in doc["rows"]}
    best = {doc["goals"][f"{t:g}"]["best_of_ours_same_settings"] for t in targets}
    mp_best = all(by[MP_BEST, t]["val_ppl"] < by[MP_LTH, t]["val_ppl"] for t in targets)
    methods = [(MP_LTH, "ModelPruning (LTH, default)"), (MP_BEST, f"ModelPruning (no LTH{', its best' * mp_best})")]
    methods += [(f"ours: {c}", f"ours: `{c}`") for c in cfg["criteria"]]
    methods += [
        (f"ours [{v}]: {c}", QUALITY_VARIANTS[v].format(c=c)) for v in cfg["variants"] for c in cfg["variant_criteria"]
    ]
    rows = [["dense", *(c for _ in targets for c in (f"{dense:.4f}", "1.000"))]]
    for method, label in methods:
        strong = len(best) == 1 and method in best
        cells = [f"{by[method, t]['val_ppl']:.4f}" if (method, t) in by else "—" for t in targets]
        ratios = [f"{by[method, t]['ratio_to_dense']:.3f}" if (method, t) in by else "—" for t in targets]
        rows.append([bold(x, strong) for x in (label, *(c for pair in zip(cells, ratios) for c in pair))])
    for c in cfg["variant_criteria"]:
        control = by.get((f"ours [distill]: {c}", 0.0))
        if control is not None:
            ppl, ratio = f"*{control['val_ppl']:.4f}*", f"*{control['ratio_to_dense']:.3f}*"
            rows.append(["*control: dense + the same distillation*", ppl, ratio, *[""] * (2 * len(targets) - 2)])
    header = ["method", *(h for t in targets for h in (f"ppl @ {pct(t)}", "× dense"))]
    return markdown_table(header, rows)


def _ratios(by: dict[str, Any], keys: list[str]) -> list[str]:
    return [spread_cell(by[k]["ratio"]) if k in by else "—" for k in keys]


def transfer(root: Path) -> str:
    """``transfer.json``: mean (min–max over seeds) ratio to dense fine-tuning; the best criterion in bold."""
    doc = result(root, "transfer")
    cfg, summary = doc["conditions"]["config"], doc["summary"]
    keys = [f"{t:g}" for t in cfg["targets"]]
    table, best = summary["rows"], summary["best_criterion"]
    mp_best = all(table[MP_ROW][k]["configuration"] == MP_BEST for k in keys)
    methods = [
        (MP_LTH, "ModelPruning, lottery-ticket rewinding (default)"),
        (MP_BEST, "ModelPruning without rewinding" + " (its best at every target)" * mp_best),
        (ONESHOT_MAG, "one-shot magnitude + fine-tuning"),
        (ONESHOT_WANDA, "one-shot Wanda + fine-tuning"),
    ]
    methods += [(f"ours: {c}", f"ours: `{c}`" + " (running, per output row)" * (c == "wanda")) for c in cfg["criteria"]]
    methods += [(f"ours: platon, layer spread {s:g}", f"ours: `platon`, `layer_spread={s:g}`") for s in cfg["spreads"]]
    teachers = {"finetuned": "the dense fine-tuned model (extra compute)", "pretrained": "the pretrained model"}
    methods += [
        (f"ours + distillation ({t}): {best}", f"ours: `{best}` + distillation from {teachers[t]}")
        for t in cfg["distill_teachers"]
    ]
    rows = [[f"dense fine-tuning (ppl {summary['dense_val_ppl']['mean']:.4f})", *["1.000"] * len(keys)]]
    for method, label in methods:
        if method in table:
            strong = method == f"ours: {best}"
            rows.append([bold(x, strong) for x in (label, *_ratios(table[method], keys))])
    return markdown_table(["method", *(f"× dense @ {pct(t)}" for t in cfg["targets"])], rows)


def _means(by: dict[str, Any], keys: list[str]) -> str:
    return " / ".join(f"{by[k]['ratio']['mean']:.3f}" for k in keys)


def _distillation(doc: dict[str, Any]) -> str | None:
    """The row of ours with distillation from the dense fine-tuned model in a transfer result, if it has one."""
    return next((m for m in doc["summary"]["rows"] if m.startswith("ours + distillation (finetuned)")), None)


def transfer_schedule(root: Path) -> str:
    """``transfer_schedule/*.json``: where the ramp ends, ours (and with distillation) against ModelPruning's best."""
    default_end = result(root, "transfer")["conditions"]["config"]["prune_end_epoch"]
    folder = root / "benchmarks" / "results" / "transfer_schedule"
    docs = [load(folder, p.name) for p in folder.glob("*.json")]
    rows = []
    for doc in sorted(docs, key=lambda d: (d["conditions"]["config"]["prune_end_epoch"], _distillation(d) or "")):
        cfg, summary = doc["conditions"]["config"], doc["summary"]
        keys, table, distilled = [f"{t:g}" for t in cfg["targets"]], summary["rows"], _distillation(doc)
        end = cfg["prune_end_epoch"] * cfg["epoch_batches"]
        label = f"{end} ({cfg['epochs'] * cfg['epoch_batches'] - end})"
        if distilled:
            ours = _means(table[distilled], keys)
            rows.append([f"{label}, ours + distillation from the dense fine-tuned model", ours, "—"])
        else:
            default = ", the default" * (cfg["prune_end_epoch"] == default_end)
            ours = _means(table[f"ours: {summary['best_criterion']}"], keys)
            rows.append([label + default, ours, _means(table[MP_ROW], keys)])
    percents = " / ".join(f"{100 * t:.0f}" for t in cfg["targets"]) + " %"
    header = ["ramp ends at step (recovery steps)", f"ours × dense @ {percents}", f"ModelPruning × dense @ {percents}"]
    return markdown_table(header, rows)


def sweep(root: Path) -> str:
    """``sweep.json`` (``recipes/sweep.py``): validation loss against one-shot sparsity, before and after recovery."""
    doc = result(root, "sweep")
    rows, sharp = doc["rows"], doc["sharp_rise"]["val_loss"]
    base = next(r["val_loss"] for r in rows if r["target"] == 0.0)
    epochs = doc["recovery_epochs"]
    cells = [
        [
            pct(r["target"]),
            f"{r['val_loss_no_recovery']:.4f}",
            f"{r['val_loss']:.4f}",
            f"{r['val_ppl']:.2f}",
            f"{r['val_loss'] - base:+.4f}" + " ← sharp rise" * (r["target"] == sharp),
        ]
        for r in rows
    ]
    recovered = f"val loss, after {epochs} recovery epoch{'s' * (epochs != 1)}"
    header = ["sparsity", "val loss, no recovery", recovered, "val ppl", f"Δ loss vs {pct(0.0)}"]
    return markdown_table(header, cells)


def pretrained(root: Path) -> str:
    """``pretrained.json`` (``recipes/pretrained.py``): cosine of the pruned encoder's embeddings to the dense ones,
    mean (min–max over seeds); the best row in bold."""
    doc = result(root, "pretrained")
    rows = {r["model"]: r for r in doc["rows"]}
    best_mp = rows.pop("ModelPruning best")["configuration"]
    labels = {
        "ModelPruning, lottery-ticket rewinding": "`ModelPruning` l1 global, lottery-ticket rewinding",
        "ModelPruning, no rewinding": "`ModelPruning` l1 global, no rewinding",
        "one-shot Wanda + distillation": f"one-shot Wanda ({doc['calibration_sentences']} verses) + distillation, "
        "masks held",
    }
    top = max((m for m in rows if m != "dense"), key=lambda m: rows[m]["cosine_mean"]["mean"])
    cells = []
    for model, r in rows.items():
        label = labels.get(model, model.replace("ours: ", "ours, `") + "`" * model.startswith("ours: "))
        label += " (its best here)" * (model == best_mp)
        mean = spread_cell(r["cosine_mean"], ".4f") if r["cosine_mean"]["n"] > 1 else f"{r['cosine_mean']['mean']:.4f}"
        cells.append([label, bold(mean, model == top), bold(f"{r['cosine_p5']['mean']:.4f}", model == top)])
    header = [
        f"row ({pct(doc['target_sparsity'])} of encoder Linear weights)",
        "mean cosine to dense",
        "5th percentile",
    ]
    return markdown_table(header, cells)


def distill_cost(root: Path) -> str:
    """``distill_cost.json``: seconds per step of fine-tuning with a frozen and with a corrected teacher, beside
    plain fine-tuning measured in turns with them."""
    doc = result(root, "distill_cost")
    c, times = doc["conditions"], doc["seconds_per_step"]
    names = {
        "plain": "plain fine-tuning",
        "copy": '`Distillation("copy")` (frozen teacher)',
        "corrected": '`Distillation("copy", corrected=True)` (teacher trained alongside)',
    }
    rows = [[names[k], f"{times[k] * 1000:.0f} ms", f"{doc['times_plain'][k]:.2f}×"] for k in names]
    table = markdown_table(["run", "seconds per step", "× plain"], rows, ["---", "---:", "---:"])
    return (
        f"{table}\n\n{c['model']}, batch {c['batch']}, {c['steps_per_fit']} steps a fit, {c['rounds']} rounds, "
        f"{c['precision']}, {doc['facts']['cpu_count']} CPU cores (torch {doc['facts']['torch']}); {c['timing']}."
    )

"""The transfer benchmark's summary: ratios to dense fine-tuning over seeds, the targets met or missed (a difference
counts only beyond both rows' spreads), its console table and plot."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from benchmarks.harness import markdown_table, pyplot, spread
from benchmarks.methods import MP_BEST, MP_LTH, MP_ROW, ONESHOT_MAG, ONESHOT_WANDA

__all__ = ["goals", "ordered", "plot", "summarize", "table_md"]

# targets to compare against: mean ratio of val perplexity to dense fine-tuning at 50 and 70 %; at 90 % the gap to
# dense at least 50 % smaller than ModelPruning's best; ours at or below one-shot Wanda + fine-tuning everywhere
GOAL_RATIO = {0.5: 1.00, 0.7: 1.03}
GOAL_GAP_REDUCTION = 0.5


def summarize(rows: list[dict[str, Any]], cfg: Any) -> dict[str, Any]:
    """Per (method, target): perplexity and ratio to dense (same seed) over seeds; the goals and comparisons."""
    dense = {r["seed"]: r["val_ppl"] for r in rows if r["method"] == "dense"}
    for r in rows:
        r["ratio_to_dense"] = r["val_ppl"] / dense[r["seed"]] if r["seed"] in dense else None
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        if r["ratio_to_dense"] is not None and r["method"] != "dense":
            groups.setdefault((r["method"], r["target"]), []).append(r)
    table: dict[str, dict[str, Any]] = {}
    for (m, t), rs in groups.items():
        table.setdefault(m, {})[f"{t:g}"] = {
            "ratio": spread([r["ratio_to_dense"] for r in rs]),
            "val_ppl": spread([r["val_ppl"] for r in rs]),
            "sparsity": spread([r["sparsity"] for r in rs]),
            "seeds": [r["seed"] for r in rs],
        }
    for t in cfg.targets:  # ModelPruning's best configuration per target
        key = f"{t:g}"
        options = [m for m in (MP_LTH, MP_BEST) if key in table.get(m, {})]
        if options:
            best = min(options, key=lambda m: table[m][key]["ratio"]["mean"])
            table.setdefault(MP_ROW, {})[key] = {**table[best][key], "configuration": best}
    ours = [m for m in table if m.startswith("ours: ")]
    complete = [m for m in ours if all(f"{t:g}" in table[m] for t in cfg.targets)]
    best_criterion = (
        min(complete, key=lambda m: statistics.fmean(table[m][f"{t:g}"]["ratio"]["mean"] for t in cfg.targets))
        if complete
        else None
    )
    return {
        "dense_val_ppl": spread(list(dense.values())) if dense else None,
        "rows": table,
        "best_criterion": best_criterion.rpartition(": ")[2] if best_criterion else None,
        "goals": goals(table, cfg),
    }


def real(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """A difference of mean ratios counts only when larger than the larger min–max spread of the two rows."""
    width = max(a["max"] - a["min"], b["max"] - b["min"])
    return abs(a["mean"] - b["mean"]) > width


def goals(table: dict[str, dict[str, Any]], cfg: Any) -> dict[str, Any]:
    """Per target and per row of ours: the targets to compare against, met or missed, and by how much."""
    out: dict[str, Any] = {}
    for t in cfg.targets:
        key = f"{t:g}"
        mp = table.get(MP_ROW, {}).get(key)
        wanda = table.get(ONESHOT_WANDA, {}).get(key)
        per: dict[str, Any] = {}
        for m, by in table.items():
            if not m.startswith("ours") or key not in by:
                continue
            r = by[key]["ratio"]
            g: dict[str, Any] = {"ratio_mean": r["mean"], "ratio_min": r["min"], "ratio_max": r["max"]}
            if t in GOAL_RATIO:
                g["ratio_goal"] = GOAL_RATIO[t]
                g["ratio_goal_met"] = r["mean"] <= GOAL_RATIO[t]
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


def ordered(rows: dict[str, Any]) -> list[tuple[str, Any]]:
    """Rows in reading order: ModelPruning, one-shot, ours, ours with distillation (each kept in run order)."""
    rank = {MP_LTH: 0, MP_BEST: 1, MP_ROW: 2, ONESHOT_MAG: 3, ONESHOT_WANDA: 4}
    return sorted(rows.items(), key=lambda kv: rank.get(kv[0], 6 if "distillation" in kv[0] else 5))


def table_md(summary: dict[str, Any], cfg: Any) -> str:
    """Every row's mean perplexity and mean (min–max) ratio to dense at each of ``cfg.targets``."""
    header = ["method", *(h for t in cfg.targets for h in (f"ppl @ {t:.0%}", f"× dense @ {t:.0%} (min–max)"))]
    dense = summary["dense_val_ppl"]
    rows = []
    if dense:
        rows.append(["dense fine-tuning", *(c for _ in cfg.targets for c in (f"{dense['mean']:.4f}", "1.000"))])
    for m, by in ordered(summary["rows"]):
        row = [m]
        for t in cfg.targets:
            c = by.get(f"{t:g}")
            if c is None:
                row += ["—", "—"]
                continue
            r, p = c["ratio"], c["val_ppl"]
            note = " " + c["configuration"].removeprefix("ModelPruning ") if "configuration" in c else ""
            row += [f"{p['mean']:.4f}", f"{r['mean']:.3f} ({r['min']:.3f}–{r['max']:.3f}){note}"]
        rows.append(row)
    return markdown_table(header, rows)


def plot(summary: dict[str, Any], cfg: Any, path: Path) -> bool:
    """Mean ratio to dense against the target, with min–max bars, one line per row (``cfg``: the run's Config)."""
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (m, by) in enumerate(ordered(summary["rows"])):
        if m in (MP_LTH, MP_BEST):
            continue
        ts = [t for t in cfg.targets if f"{t:g}" in by]
        r = [by[f"{t:g}"]["ratio"] for t in ts]
        x = [t + (i - 5) * 0.004 for t in ts]  # spread the bars apart
        err = [[q["mean"] - q["min"] for q in r], [q["max"] - q["mean"] for q in r]]
        style = "--" if m.startswith(("ModelPruning", "one-shot")) else "-"
        ax.errorbar(x, [q["mean"] for q in r], yerr=err, fmt=style, marker="o", capsize=3, label=m)
    ax.axhline(1.0, color="k", lw=1, label="dense fine-tuning")
    ax.set(
        xlabel="target sparsity of the block Linear weights",
        ylabel="val perplexity / dense fine-tuning (mean, min–max over seeds)",
        title=f"pretrained on {cfg.pretrain_source}, fine-tuned on {cfg.finetune_source}",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True

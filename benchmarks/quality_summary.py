"""The quality benchmark's summary: perplexity ratios to dense, the targets met or missed, its table and plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from benchmarks.harness import MP_BEST, MP_LTH, markdown_table, pyplot

__all__ = ["GOAL_GAP_REDUCTION", "GOAL_RATIO", "add_ratios", "goals", "plot", "table"]

# targets to compare against: ratio of val perplexity to dense at each sparsity; at 90% the gap to dense must be
# at least 20% smaller than ModelPruning-best's
GOAL_RATIO = {0.5: 1.00, 0.7: 1.05}
GOAL_GAP_REDUCTION = 0.2


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


def table(rows: list[dict[str, Any]], dense: float | None, targets: tuple[float, ...]) -> str:
    """Every method's perplexity and ratio to dense at every target, in run order."""
    header = ["method", *(h for t in targets for h in (f"ppl @{t:.0%}", f"×dense @{t:.0%}"))]
    cells = [["dense", *(c for _ in targets for c in (f"{dense:.4f}", "1.000"))]] if dense is not None else []
    by = {(r["method"], r["target"]): r for r in rows}
    for m in dict.fromkeys(r["method"] for r in rows if r["method"] != "dense"):
        row = [m]
        for t in targets:
            r = by.get((m, t))
            ratio = f"{r['ratio_to_dense']:.3f}" if r is not None and r.get("ratio_to_dense") else "—"
            row += ["—", "—"] if r is None else [f"{r['val_ppl']:.4f}", ratio]
        cells.append(row)
    return markdown_table(header, cells)


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

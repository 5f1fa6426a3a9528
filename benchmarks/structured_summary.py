"""The structured benchmark's summary: perplexity per row and family over seeds, ratios to dense fine-tuning, the
targets met or missed (a difference counts only beyond both rows' min–max spreads), its console table and plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.harness import markdown_table, pyplot, spread
from benchmarks.structured_runs import DENSE, ONESHOT, SCRATCH, SCRATCH_PRE, SHARES

__all__ = ["SPEED_GOAL", "beyond", "plot", "summarize", "table_md"]

SPEED_GOAL = 0.85  # measured speed-up at least this fraction of the FLOP bound


def beyond(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """``a``'s mean is below ``b``'s by more than the larger min–max spread of the two."""
    width = max(a["max"] - a["min"], b["max"] - b["min"])
    return b["mean"] - a["mean"] > width


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
            cell = {
                "val_ppl": spread([r["val_ppl"] for r in rs]),
                "params": spread([r["params"] for r in rs]),
                "flops": spread([r["flops"] for r in rs]),
                "seeds": [r["seed"] for r in rs],
            }
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


def table_md(summary: dict[str, Any], speed: dict[str, Any] | None = None) -> str:
    """One table per family: mean (min–max) perplexity and ratio to dense, parameters kept, and speed."""
    parts = []
    for family, doc in summary.items():
        header = ["method", "val ppl (min–max)", "× dense (min–max)", "params kept", "throughput × dense (bound)"]
        lines = []
        sp = (speed or {}).get("families", {}).get(family, {"shapes": {}, "rows": {}})
        for m, c in doc["rows"].items():
            p, r = c["val_ppl"], c.get("ratio")
            kept = c.get("params_fraction")
            s = sp["shapes"].get(sp["rows"].get(m, ""), {}).get("throughput")
            lines.append(
                [
                    m,
                    f"{p['mean']:.3f} ({p['min']:.3f}–{p['max']:.3f})",
                    f"{r['mean']:.3f} ({r['min']:.3f}–{r['max']:.3f})" if r else "—",
                    f"{kept['mean']:.1%}" if kept else "—",
                    f"{s['speedup']:.2f}× ({s['flop_bound']:.2f}×)" if s else "—",
                ]
            )
        parts.append(f"{family}\n\n" + markdown_table(header, lines))
    return "\n\n".join(parts)


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
        low = min(p["min"] for p in ppl)
        ax.set_xlim(left=0.95 * low)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True

"""Tables of which feed-forward neurons to remove: the criteria at two model sizes, and the ablations of the
mutual-information criterion with and without compensation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.markdown import bold, markdown_table
from benchmarks.tables.source import result

__all__ = ["criteria", "mi_ablation"]

CRITERIA_LABELS = {  # criterion in criteria.json → (label at its first size, label after)
    "taylor": ("Taylor (mean |a·∂L/∂a|)", "Taylor"),
    "mean_abs_activation": ("mean |activation|", "mean |activation|"),
    "weight_norm": ("weight norm ‖w_in‖·‖w_out‖", "weight norm"),
    "random": ("random", "random"),
    "mi_redundancy": ("MI redundancy, threshold 0", "MI redundancy, threshold 0"),
    "mi_redundancy_t0.5": ("MI redundancy, threshold 0.5", "MI redundancy, threshold 0.5"),
}


def criteria(root: Path) -> str:
    """``criteria.json``: validation loss of each criterion per size, best first after removal; the best in bold."""
    rows = result(root, "criteria")["rows"]
    cells = []
    for i, size in enumerate(dict.fromkeys(r["size"] for r in rows)):
        mine = sorted((r for r in rows if r["size"] == size), key=lambda r: r["val_loss_after_removal"])
        best = {k: min(r[k] for r in mine) for k in ("val_loss_after_removal", "val_loss_after_recovery")}
        for j, r in enumerate(mine):
            first = f"{size} ({r['params_dense'] / 1e6:.2f} M → {r['params_pruned'] / 1e6:.2f} M)"
            cells.append(
                [
                    first if j == 0 else size,
                    CRITERIA_LABELS[r["criterion"]][min(i, 1)],
                    f"{r['dense_val_loss']:.3f}",
                    *(bold(f"{r[k]:.3f}", r[k] == best[k]) for k in best),
                ]
            )
    return markdown_table(["size", "criterion", "dense", "after removal", "after recovery"], cells)


def _pair(rows: list[dict[str, Any] | None], fmt: Any) -> str:
    return " / ".join("—" if r is None else fmt(r) for r in rows)


def mi_ablation(root: Path) -> str:
    """``mi_ablation.json``: every variant at both sizes (``small / large``; ``—`` where a size skipped it)."""
    sizes = result(root, "mi_ablation")["sizes"]
    by = {name: {r["variant"]: r for r in size["rows"]} for name, size in sizes.items()}
    cells = []
    for variant in dict.fromkeys(v for rows in by.values() for v in rows):
        rs = [rows.get(variant) for rows in by.values()]
        cells.append(
            [
                variant,
                _pair(rs, lambda r: f"{r['removed_activation_percentile']:.0f}"),
                *(_pair(rs, lambda r, k=k: f"{r[k + '/after_removal']:.3f}") for k in ("none", "bias", "refit")),
                *(_pair(rs, lambda r, k=k: f"{r[k + '/after_recovery']:.3f}") for k in ("none", "refit")),
                " / ".join(
                    "—, —" if r is None else f"{r['none/block_error']:.2f}, {r['refit/block_error']:.2f}" for r in rs
                ),
            ]
        )
    header = [
        "variant",
        "removed |a| pct",
        "after removal: none",
        "bias",
        "refit",
        "after recovery: none",
        "refit",
        "block err none / refit",
    ]
    return markdown_table(header, cells)

"""``PruningReport``: the loss-vs-sparsity record of a run, a final table, a JSON summary and a PNG plot."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from typing_extensions import override

from lightning_prune.callbacks.pruning import ScheduledPruning
from lightning_prune.export import nonzero_report

__all__ = ["PruningReport", "format_table"]


def format_table(rows: list[tuple[str, ...]]) -> str:
    """A markdown table; the first row is the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


class PruningReport(Callback):
    """Record validation loss and perplexity against measured sparsity; report dense vs pruned at the end.

    "Dense" is the last validation before the first pruning event; "pruned" is the last validation of the run.
    At the end of fitting it prints a table, and writes ``report.json`` and ``report.png`` (validation loss and
    sparsity against step) into ``directory`` (default: the trainer's ``default_root_dir``).

    Args:
        directory: where to write the JSON and the PNG.
    """

    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory
        self.records: list[dict[str, float]] = []
        self._start = 0.0

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def _pruning(self, trainer: pl.Trainer) -> ScheduledPruning | None:
        found = [cb for cb in trainer.callbacks if isinstance(cb, ScheduledPruning)]
        return found[0] if found else None

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # not on_validation_epoch_end: callbacks run that hook before the module's, which logs val/ppl
        if trainer.sanity_checking or "val/loss" not in trainer.callback_metrics:
            return
        pruning = self._pruning(trainer)
        sparsity = pruning.events[-1]["sparsity"] if pruning and pruning.events else 0.0
        self.records.append(
            {
                "epoch": trainer.current_epoch,
                "step": trainer.global_step,
                "sparsity": sparsity,
                "val_loss": float(trainer.callback_metrics["val/loss"]),
                "val_ppl": float(trainer.callback_metrics.get("val/ppl", float("nan"))),
            }
        )

    def summary(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """Dense and pruned figures from the records, plus counts and time."""
        dense = [r for r in self.records if r["sparsity"] == 0.0]
        counts = nonzero_report(pl_module)
        return {
            "dense": dense[-1] if dense else None,
            "pruned": self.records[-1] if self.records else None,
            "parameters": counts["parameters"],
            "nonzero": counts["nonzero"],
            "seconds": time.perf_counter() - self._start,
            "records": self.records,
        }

    @override
    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        summary = self.summary(trainer, pl_module)
        directory = Path(self.directory or trainer.default_root_dir)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "report.json").write_text(json.dumps(summary, indent=2))
        rows = [("model", "val ppl", "val loss", "sparsity (pruned weights)", "non-zero params", "time")]
        for name in ("dense", "pruned"):
            r = summary[name]
            if r is not None:
                rows.append(
                    (
                        f"{name} (epoch {r['epoch']})",
                        f"{r['val_ppl']:.3f}",
                        f"{r['val_loss']:.4f}",
                        f"{r['sparsity']:.1%}",
                        f"{summary['nonzero']:,} / {summary['parameters']:,}" if name == "pruned" else "",
                        f"{summary['seconds']:.0f} s" if name == "pruned" else "",
                    )
                )
        rank_zero_info("\n" + format_table(rows))
        if self.records:
            self._plot(directory / "report.png")
        rank_zero_info(f"report: {directory / 'report.json'}, {directory / 'report.png'}")

    def _plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [r["step"] for r in self.records]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(steps, [r["val_loss"] for r in self.records], "o-", color="tab:blue", label="validation loss")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("validation loss", color="tab:blue")
        twin = ax.twinx()
        twin.step(steps, [r["sparsity"] for r in self.records], where="post", color="tab:red", label="sparsity")
        twin.set_ylabel("sparsity", color="tab:red")
        twin.set_ylim(0, 1)
        ax.set_title("validation loss while pruning")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)

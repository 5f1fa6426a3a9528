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

from lightning_prune.callbacks.neurons import NeuronPruning
from lightning_prune.callbacks.pruning import ScheduledPruning
from lightning_prune.export import nonzero_report

__all__ = ["PruningReport", "format_table", "pruned_label"]


def format_table(rows: list[tuple[str, ...]]) -> str:
    """A markdown table; the first row is the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def pruned_label(record: dict[str, float]) -> str:
    """What had happened to the model by ``record``: ``"dense"``, ``"weights pruned"``, ``"neurons removed"``, or
    ``"weights pruned + neurons removed"``."""
    done = [
        what
        for what, key in (("weights pruned", "sparsity"), ("neurons removed", "neurons_removed"))
        if record.get(key, 0.0) > 0.0
    ]
    return " + ".join(done) or "dense"


def _removed_fraction(masks: Any) -> float:
    """Fraction of False entries over a list (or the values of a dict) of bool keep-masks."""
    tensors = list(masks.values()) if isinstance(masks, dict) else list(masks or [])
    total = sum(m.numel() for m in tensors)
    return sum(int((~m.bool()).sum()) for m in tensors) / total if total else 0.0


class PruningReport(Callback):
    """Record validation loss and perplexity against measured sparsity; report dense vs pruned at the end.

    Each validation records the measured weight sparsity of a :class:`~lightning_prune.callbacks.ScheduledPruning`
    (``sparsity``) and the fraction of feed-forward neurons a :class:`~lightning_prune.callbacks.NeuronPruning` has
    removed (``neurons_removed``). "Dense" is the last validation before either changed the model; the last
    validation of the run is labelled by what had happened by then (:func:`pruned_label`: weights pruned, neurons
    removed, or both), and is in ``report.json`` as ``pruned`` with that label as ``pruned_label``.
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

    def _neurons_removed(self, trainer: pl.Trainer) -> float:
        found = [cb for cb in trainer.callbacks if isinstance(cb, NeuronPruning)]
        return max((_removed_fraction(cb.masks) for cb in found), default=0.0)

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
                "neurons_removed": self._neurons_removed(trainer),
                "val_loss": float(trainer.callback_metrics["val/loss"]),
                "val_ppl": float(trainer.callback_metrics.get("val/ppl", float("nan"))),
            }
        )

    def summary(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """Dense and pruned figures from the records, plus counts and time."""
        dense = [r for r in self.records if pruned_label(r) == "dense"]
        counts = nonzero_report(pl_module)
        return {
            "dense": dense[-1] if dense else None,
            "pruned": self.records[-1] if self.records else None,
            "pruned_label": pruned_label(self.records[-1]) if self.records else None,
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
        rank_zero_info("\n" + format_table(self.table(summary)))
        if self.records:
            self._plot(directory / "report.png")
        rank_zero_info(f"report: {directory / 'report.json'}, {directory / 'report.png'}")

    @staticmethod
    def table(summary: dict[str, Any]) -> list[tuple[str, ...]]:
        """Rows of the final table (header first): the dense model, then the final one labelled by what happened."""
        header = ("model", "val ppl", "val loss", "sparsity (pruned weights)", "neurons removed", "non-zero params")
        rows = [(*header, "time")]
        final = summary["pruned"]
        shown = [("dense", summary["dense"])] if summary["dense"] not in (None, final) else []
        if final is not None:
            shown.append((summary["pruned_label"], final))
        for label, r in shown:
            last = r == final
            rows.append(
                (
                    f"{label} (epoch {r['epoch']})",
                    f"{r['val_ppl']:.3f}",
                    f"{r['val_loss']:.4f}",
                    f"{r['sparsity']:.1%}",
                    f"{r.get('neurons_removed', 0.0):.1%}",
                    f"{summary['nonzero']:,} / {summary['parameters']:,}" if last else "",
                    f"{summary['seconds']:.0f} s" if last else "",
                )
            )
        return rows

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
        if any(r.get("neurons_removed", 0.0) > 0.0 for r in self.records):
            removed = [r.get("neurons_removed", 0.0) for r in self.records]
            twin.step(steps, removed, where="post", color="tab:green", label="neurons removed")
            twin.legend(loc="upper left")
        twin.set_ylabel("sparsity", color="tab:red")
        twin.set_ylim(0, 1)
        ax.set_title("validation loss while pruning")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)

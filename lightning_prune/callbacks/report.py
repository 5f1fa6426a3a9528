"""``PruningReport``: the loss-vs-sparsity record of a run, a final table, a JSON summary and a PNG plot.

The final model is compared with a dense model trained with the same budget (same model, data, seed, steps and
learning-rate schedule), read from a reference file written by such a run (a dense run's own ``report.json``, e.g.
``lightning-prune fit --config recipes/main.yaml --dense true``). The reference is used only when its budget
matches this run's; otherwise the table says why there is no same-budget comparison. The last validation before
the first pruning is shown too, labelled as such: it trained fewer steps than the final model.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from lightning_prune._registry import registry_of
from lightning_prune.callbacks._console import discard_unused_run, run_directory, say
from lightning_prune.export import nonzero_report

__all__ = ["PruningReport", "budget_of", "format_table", "greedy_continuation", "pruned_label"]


def _clock(seconds: float) -> str:
    """``"45s"``, ``"4m50s"``, ``"1h02m"``: a duration as a person reads it."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_table(rows: list[tuple[str, ...]]) -> str:
    """A markdown table; the first row is the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def spread(values: list[float]) -> dict[str, float]:
    """Mean, min, max, sample standard deviation (0 for one value) and count of repeated measurements."""
    if not values:
        raise ValueError("spread of no values.")
    return {
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


CHANGES = {"sparsity": "weights pruned", "neurons_removed": "neurons removed", "params_removed": "parameters removed"}
"""What a writer's events record of the model, by key: a weight sparsity (``ScheduledPruning``), the fraction of
feed-forward neurons removed (``NeuronPruning``) and the fraction of parameters removed by structure
(``StructuredPruning``)."""

COLUMNS = {
    "sparsity": "sparsity (pruned weights)",
    "neurons_removed": "neurons removed",
    "params_removed": "parameters removed (structure)",
}
"""The final table's column header of each key of `CHANGES`."""


def pruned_label(record: dict[str, float]) -> str:
    """What had happened to the model by ``record``: ``"dense"``, or what changed (`CHANGES`) joined by
    " + ", e.g. ``"weights pruned + neurons removed"``."""
    done = [what for key, what in CHANGES.items() if record.get(key, 0.0) > 0.0]
    return " + ".join(done) or "dense"


def _removed_fraction(masks: Any) -> float:
    """Fraction of False entries over a list (or the values of a dict) of bool keep-masks."""
    tensors = list(masks.values()) if isinstance(masks, dict) else list(masks or [])
    total = sum(m.numel() for m in tensors)
    return sum(int((~m.bool()).sum()) for m in tensors) / total if total else 0.0


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": leaf}`` of nested dicts."""
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: value}


def _plain(value: Any) -> Any:
    """``value`` as JSON would read it back (tuples become lists, unknown objects their ``str``)."""
    return json.loads(json.dumps(value, default=str))


def budget_of(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
    """What fixes the training a run does apart from pruning: the module and its hyperparameters, the data module's
    hyperparameters, the seed, and the Trainer's settings that change the steps, the batches or the arithmetic.

    Two runs with equal budgets train the same model on the same batches with the same optimizer schedule; a dense
    run is the same-budget reference of a pruned one when their budgets are equal.
    """
    datamodule = getattr(trainer, "datamodule", None)
    data = dict(getattr(datamodule, "hparams", {}) or {})
    for unused in ("num_workers", "cache_dir"):  # no effect on the batches
        data.pop(unused, None)
    steps = trainer.estimated_stepping_batches
    return _plain(
        {
            "module": f"{type(pl_module).__module__}.{type(pl_module).__qualname__}",
            "model": dict(getattr(pl_module, "hparams", {}) or {}),
            "data": data,
            "seed": os.environ.get("PL_GLOBAL_SEED"),
            "trainer": {
                "optimizer_steps": int(steps) if steps != float("inf") else None,
                "max_epochs": trainer.max_epochs,
                "max_steps": trainer.max_steps,
                "limit_train_batches": trainer.limit_train_batches,
                "limit_val_batches": trainer.limit_val_batches,
                "val_check_interval": trainer.val_check_interval,
                "check_val_every_n_epoch": trainer.check_val_every_n_epoch,
                "accumulate_grad_batches": trainer.accumulate_grad_batches,
                "gradient_clip_val": trainer.gradient_clip_val,
                "gradient_clip_algorithm": trainer.gradient_clip_algorithm,
                "precision": trainer.precision,
                "world_size": trainer.world_size,
            },
        }
    )


def budget_differences(mine: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """``"key: this run's value vs the reference's"`` for every setting where two budgets differ."""
    a, b = _flatten(mine), _flatten(theirs)
    return [
        f"{k}: {a.get(k, '(unset)')!r} vs {b.get(k, '(unset)')!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]


@torch.no_grad()
def greedy_continuation(model: torch.nn.Module, tokenizer: Any, prompt: str, new_tokens: int, context: int) -> str:
    """The ``new_tokens`` tokens a causal LM continues ``prompt`` with, always taking the most likely next token.

    ``model(input_ids=ids)`` must return logits ``(B, T, V)`` (a ``transformers`` causal LM); at most the last
    ``context`` tokens are fed. The model is evaluated in eval mode and put back as it was; no RNG is drawn, so
    training continues exactly as without this call.
    """
    ids = torch.tensor([tokenizer.encode(prompt)], dtype=torch.long, device=next(model.parameters()).device)  # (1, P)
    start = ids.shape[1]
    was_training = model.training
    model.eval()
    try:
        for _ in range(new_tokens):
            logits = model(input_ids=ids[:, -context:]).logits  # (1, T, V)
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)  # (1, T+1)
    finally:
        model.train(was_training)
    return tokenizer.decode(ids[0, start:].tolist())


class PruningReport(Callback):
    """Record validation loss and perplexity against measured sparsity; compare the final model with a dense model
    of the same budget at the end.

    Each validation records the measured weight sparsity of a [`ScheduledPruning`][lightning_prune.ScheduledPruning]
    (``sparsity``) and the fraction of feed-forward neurons a [`NeuronPruning`][lightning_prune.NeuronPruning] has
    removed (``neurons_removed``) and the fraction of parameters a
    [`StructuredPruning`][lightning_prune.StructuredPruning] has removed (``params_removed``), read from the writers'
    events in the model's registry. The last validation of the run is ``final`` in ``report.json``, labelled by what had
    happened by then (``final_label``, `pruned_label`: what changed, or dense).
    ``dense_before_pruning`` is the last validation before either callback changed the model: it trained fewer steps
    than the final model, so it is no measure of what pruning cost. That measure is ``dense_same_budget``: the final
    validation of ``reference``, a dense run's ``report.json`` whose `budget_of` equals this run's
    (``reference_check`` gives its largest difference in validation loss from this run before the first pruning,
    where both runs trained the same weights). A reference of another budget is not used, and ``reference.why``
    names the settings that differ.

    With a ``prompt`` and a data module that has a ``tokenizer`` (``trainer.datamodule.tokenizer``), ``samples``
    holds the greedy continuations (`greedy_continuation`) of the prompt by the dense model before the first
    pruning, by the final model and (from the reference, when it was made with the same prompt and length) by the
    dense model of the same budget.

    At the end of fitting it prints the table and the samples, and writes ``report.json`` and ``report.png``
    (validation loss, sparsity and neurons removed against the optimizer step; a pruning event is drawn at the step
    it happened) into ``directory`` (default: the run's own folder, the logger's ``log_dir`` such as
    ``runs/main/tensorboard/version_N``, else the trainer's ``default_root_dir``), so a second run never overwrites
    the first's report. A run stopped before its first training step (refused at setup) leaves no empty version
    folder behind. Every line it prints stays on screen above the progress bar.

    The table compares only what was measured alike: wall time is left out of it (the reference run was timed in
    another process, under another machine load) and stated below it for this run alone; a column of a change no
    row has (neurons removed in a run that prunes weights only) is left out.

    Args:
        directory: where to write the JSON and the PNG.
        reference: path of a dense run's ``report.json`` with the same budget.
        prompt: text to continue with each model; ``None`` for no samples.
        sample_tokens: tokens generated for each sample.
    """

    def __init__(
        self,
        directory: str | None = None,
        reference: str | None = None,
        prompt: str | None = None,
        sample_tokens: int = 60,
    ) -> None:
        if isinstance(sample_tokens, bool) or not isinstance(sample_tokens, int) or sample_tokens < 1:
            raise ValueError(f"sample_tokens must be an int >= 1, got {sample_tokens!r}.")
        self.directory, self.reference, self.prompt, self.sample_tokens = directory, reference, prompt, sample_tokens
        self.records: list[dict[str, float]] = []
        self.dense_sample: str | None = None  # the continuation of the last dense validation
        self._start = 0.0
        self._seconds = 0.0  # time of the run before a resume
        self._registry: Any = None
        self._directory: Path | None = None

    @override
    def state_dict(self) -> dict[str, Any]:
        """The records so far, the dense sample and the time spent: a resumed run's report covers the whole run."""
        seconds = self._seconds + (time.perf_counter() - self._start if self._start else 0.0)
        return {"records": [dict(r) for r in self.records], "dense_sample": self.dense_sample, "seconds": seconds}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.records = [dict(r) for r in state_dict.get("records", [])]
        self.dense_sample = state_dict.get("dense_sample")
        self._seconds = float(state_dict.get("seconds", 0.0))

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":  # on every process: the folder is broadcast from process 0
            self._directory = Path(self.directory) if self.directory else run_directory(trainer)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        discard_unused_run(trainer)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()
        self._registry = registry_of(pl_module)

    def _events(self) -> list[dict[str, Any]]:
        """Every writer's events, read from the model's registry."""
        registry = getattr(self, "_registry", None)
        return [e for events in (registry.events.values() if registry is not None else ()) for e in events]

    def _now(self) -> dict[str, float]:
        """Per key of `CHANGES`, its value at the last event so far (0 before any)."""
        latest: dict[str, tuple[int, float]] = {}
        for e in self.events(None):
            for key in CHANGES:
                if key in e and e["step"] >= latest.get(key, (-1, 0.0))[0]:
                    latest[key] = (e["step"], e[key])
        return {key: latest.get(key, (0, 0.0))[1] for key in CHANGES}

    def _sample(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str | None:
        tokenizer = getattr(getattr(trainer, "datamodule", None), "tokenizer", None)
        if self.prompt is None or tokenizer is None:
            return None
        model = getattr(pl_module, "model", pl_module)
        config = getattr(model, "config", None)
        context = getattr(pl_module, "context", None) or getattr(config, "n_positions", None) or 1024
        return greedy_continuation(model, tokenizer, self.prompt, self.sample_tokens, context)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # not on_validation_epoch_end: callbacks run that hook before the module's, which logs val/ppl
        if trainer.sanity_checking or "val/loss" not in trainer.callback_metrics:
            return
        record = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            **self._now(),
            "val_loss": float(trainer.callback_metrics["val/loss"]),
            "val_ppl": float(trainer.callback_metrics.get("val/ppl", float("nan"))),
        }
        self.records.append(record)
        if pruned_label(record) == "dense":
            self.dense_sample = self._sample(trainer, pl_module)
        say(  # a line per validation, kept on screen above the progress bar
            trainer,
            f"epoch {record['epoch']} step {record['step']}: val loss {record['val_loss']:.4f}, val ppl "
            f"{record['val_ppl']:.3f}, sparsity {record['sparsity']:.1%}"
            + "".join(f", {CHANGES[k]} {record[k]:.1%}" for k in ("neurons_removed", "params_removed") if record[k])
            + self._time_left(trainer),
        )

    def _time_left(self, trainer: pl.Trainer) -> str:
        """``", elapsed 1m12s, about 4m50s left"``: the run's wall time so far (before a resume too) and the mean
        time per optimizer step so far times the steps left (``trainer.estimated_stepping_batches``: the epochs
        left under ``max_epochs``, or ``max_steps``); no estimate before the first step or for an unbounded run."""
        if not self._start or trainer.state.fn != "fit":
            return ""
        elapsed = self._seconds + time.perf_counter() - self._start
        line = f", elapsed {_clock(elapsed)}"
        total, done = trainer.estimated_stepping_batches, trainer.global_step
        if done > 0 and 0 < total < float("inf"):
            line += f", about {_clock(elapsed / done * max(0, total - done))} left"
        return line

    def events(self, trainer: pl.Trainer | None) -> list[dict[str, Any]]:
        """Every change of the model, in step order: ``{"step", "epoch", key: value}`` with a key of `CHANGES`
        — ``sparsity`` for weight pruning (the measured sparsity), ``neurons_removed`` for neuron removal,
        ``params_removed`` for structured removal."""
        found: list[dict[str, Any]] = []
        for e in self._events():
            where = {"step": int(e["step"]), "epoch": int(e["epoch"])}
            if "sparsity" in e:
                found.append(where | {"sparsity": float(e["sparsity"])})
            if "removed" in e:  # NeuronPruning: the fraction of neurons removed
                found.append(where | {"neurons_removed": float(e["removed"])})
            if "params_removed" in e:
                found.append(where | {"params_removed": float(e["params_removed"])})
        return sorted(found, key=lambda e: e["step"])

    def _reference(self, budget: dict[str, Any], dense_run: bool) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """(the reference's summary when it can be used, ``{"path", "used", "why"}``)."""
        info: dict[str, Any] = {"path": self.reference, "used": False, "why": None}
        if self.reference is None:
            info["why"] = "no reference given (PruningReport(reference=...))"
        elif dense_run:
            info["why"] = "this run is dense: it is its own same-budget reference"
        elif not Path(self.reference).is_file():
            info["why"] = f"reference file {self.reference} not found"
        else:
            ref = json.loads(Path(self.reference).read_text())
            differences = budget_differences(budget, ref.get("budget", {}))
            if ref.get("final_label") != "dense" or ref.get("final") is None:
                info["why"] = f"the reference run is not dense (its final model: {ref.get('final_label')!r})"
            elif differences:
                info["why"] = "the reference was trained with another budget: " + "; ".join(differences)
            else:
                info["used"] = True
                return ref, info
        return None, info

    def summary(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """Final, dense-before-pruning and same-budget dense figures, samples, events, counts and time."""
        dense = [r for r in self.records if pruned_label(r) == "dense"]
        final = self.records[-1] if self.records else None
        label = pruned_label(final) if final is not None else None
        counts = nonzero_report(pl_module)
        budget = budget_of(trainer, pl_module)
        events = self.events(trainer)
        ref, info = self._reference(budget, label == "dense")
        same_budget = None
        if ref is not None:
            same_budget = {**ref["final"], "parameters": ref.get("parameters"), "nonzero": ref.get("nonzero")}
            same_budget["seconds"] = ref.get("seconds")
            first = events[0]["step"] if events else float("inf")
            theirs = {r["step"]: r["val_loss"] for r in ref.get("records", [])}
            shared = [
                (r["val_loss"], theirs[r["step"]]) for r in self.records if r["step"] <= first and r["step"] in theirs
            ]
            info["check"] = {
                "validations_before_pruning": len(shared),
                "max_abs_val_loss_difference": max((abs(a - b) for a, b in shared), default=None),
            }
            info["measured_with"] = ref.get("measured_with")
            info["records"] = ref.get("records", [])
        samples = None
        if self.prompt is not None:
            final_sample = self._sample(trainer, pl_module)
            ref_samples = (ref or {}).get("samples") or {}
            same = ref_samples.get("prompt") == self.prompt and ref_samples.get("new_tokens") == self.sample_tokens
            samples = {
                "prompt": self.prompt,
                "new_tokens": self.sample_tokens,
                "decoding": "greedy",
                "dense_before_pruning": self.dense_sample if label != "dense" else None,
                "dense_same_budget": ref_samples.get("final") if same else None,
                "final": final_sample,
            }
        return {
            "final": final,
            "final_label": label,
            "dense_before_pruning": dense[-1] if dense and label != "dense" else None,
            "dense_same_budget": same_budget,
            "reference": info,
            "parameters": counts["parameters"],
            "nonzero": counts["nonzero"],
            "seconds": self._seconds + time.perf_counter() - self._start,
            "samples": samples,
            "events": events,
            "budget": budget,
            "measured_with": {
                "torch": torch.__version__,
                "lightning": pl.__version__,
                "device": str(pl_module.device),
                "threads": torch.get_num_threads(),
                "machine": platform.machine(),
                "cpu_count": os.cpu_count(),
                "argv": sys.argv,
            },
            "records": self.records,
        }

    @override
    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        summary = self.summary(trainer, pl_module)
        directory = self._directory or Path(self.directory or trainer.default_root_dir)
        directory.mkdir(parents=True, exist_ok=True)
        if self.records:
            summary["plot"] = {
                k: [list(map(float, xs)), list(map(float, ys))]
                for k, (xs, ys) in self._plot(directory / "report.png", summary).items()
            }
        (directory / "report.json").write_text(json.dumps(summary, indent=2))
        say(trainer, "\n" + self.text(summary))
        written = [directory / "report.json", *([directory / "report.png"] if self.records else [])]
        say(trainer, "report: " + ", ".join(map(str, written)))

    @classmethod
    def text(cls, summary: dict[str, Any]) -> str:
        """The printed report: the table, the comparison at the same budget (or why there is none), the samples."""
        lines = [format_table(cls.table(summary)), ""]
        final, same, before = summary["final"], summary["dense_same_budget"], summary["dense_before_pruning"]
        info = summary["reference"]
        if final is not None and summary["final_label"] != "dense":
            if same is not None:
                lines.append(
                    f"{summary['final_label']} vs dense of the same budget (reference run {info['path']}): val ppl "
                    f"{final['val_ppl']:.3f} vs {same['val_ppl']:.3f} ({final['val_ppl'] / same['val_ppl']:.3f}x), "
                    f"val loss {final['val_loss'] - same['val_loss']:+.4f}."
                )
                check = info.get("check") or {}
                if check.get("validations_before_pruning"):
                    lines.append(
                        f"Before the first pruning both runs trained the same weights: the largest difference in val "
                        f"loss over their {check['validations_before_pruning']} validations there is "
                        f"{check['max_abs_val_loss_difference']:.4f}."
                    )
            else:
                lines.append(f"No dense model of the same budget to compare with: {info['why']}.")
            if before is not None:
                lines.append(
                    f"The 'dense, before first pruning' row is the model at epoch {before['epoch']} (step "
                    f"{before['step']}), before any pruning; it trained fewer steps than the final model "
                    f"(step {final['step']}), so it does not show what pruning cost."
                )
        lines.append(cls.timing(summary))
        samples = summary.get("samples")
        if samples:
            lines += ["", f"Greedy continuations of {samples['prompt']!r} ({samples['new_tokens']} tokens):"]
            for key, label in cls._sample_labels(summary):
                text = samples.get(key)
                if text is not None:
                    lines.append(f"  {label}:")
                    lines += ["    | " + line for line in (samples["prompt"] + text).split("\n")]
        return "\n".join(lines)

    @staticmethod
    def timing(summary: dict[str, Any]) -> str:
        """The wall time of this run, outside the table: a reference run's time was measured in another process
        under another machine load, so the two are never put side by side."""
        where = summary.get("measured_with") or {}
        line = (
            f"Wall time of this run: {summary['seconds']:.0f} s (device {where.get('device')}, "
            f"{where.get('threads')} threads)"
        )
        if summary["dense_same_budget"] is not None:
            line += "; not compared with the reference run's, which was timed separately under another machine load"
        return line + "."

    @staticmethod
    def _sample_labels(summary: dict[str, Any]) -> list[tuple[str, str]]:
        final = summary["final"] or {}
        before = summary["dense_before_pruning"] or {}
        same = summary["dense_same_budget"] or {}
        return [
            ("dense_before_pruning", f"dense, before first pruning (epoch {before.get('epoch')})"),
            ("dense_same_budget", f"dense, same budget (epoch {same.get('epoch')}, reference run)"),
            ("final", f"{summary['final_label']} (epoch {final.get('epoch')})"),
        ]

    @staticmethod
    def table(summary: dict[str, Any]) -> list[tuple[str, ...]]:
        """Rows of the final table (header first): the dense model before the first pruning (this run), the dense
        model of the same budget (the reference run), then the final model labelled by what happened.

        A column per change of `CHANGES` that some row has (the weight sparsity alone when none has any), and
        no wall time: the runs were not timed side by side (see `text`)."""
        final, before, same = summary["final"], summary["dense_before_pruning"], summary["dense_same_budget"]
        shown: list[tuple[str, dict[str, Any], str]] = []
        if before is not None:
            shown.append((f"dense, before first pruning (epoch {before['epoch']}, this run)", before, ""))
        if same is not None:
            count = f"{same['nonzero']:,} / {same['parameters']:,}" if same.get("nonzero") is not None else ""
            where = summary["reference"]["path"]
            shown.append((f"dense, same budget (epoch {same['epoch']}, reference run {where})", same, count))
        if final is not None:
            count = f"{summary['nonzero']:,} / {summary['parameters']:,}"
            shown.append((f"{summary['final_label']} (epoch {final['epoch']}, this run)", final, count))
        changes = [k for k in CHANGES if any(r.get(k, 0.0) > 0.0 for _, r, _ in shown)] or ["sparsity"]
        rows = [("model", "val ppl", "val loss", *(COLUMNS[k] for k in changes), "non-zero params")]
        for label, r, count in shown:
            cells = (f"{r.get(k, 0.0):.1%}" for k in changes)
            rows.append((label, f"{r['val_ppl']:.3f}", f"{r['val_loss']:.4f}", *cells, count))
        return rows

    @staticmethod
    def curves(summary: dict[str, Any]) -> dict[str, tuple[list[float], list[float]]]:
        """The plotted series, ``{name: (steps, values)}``: validation loss at each validation (and the reference's
        when used), and sparsity and neurons removed as step functions that change at each event's step."""
        records, events = summary["records"], summary["events"]
        last = max([r["step"] for r in records] + [e["step"] for e in events] + [0])
        out: dict[str, tuple[list[float], list[float]]] = {
            "val_loss": ([r["step"] for r in records], [r["val_loss"] for r in records])
        }
        if summary.get("dense_same_budget") is not None and summary["reference"].get("records"):
            ref = summary["reference"]["records"]
            out["reference_val_loss"] = ([r["step"] for r in ref], [r["val_loss"] for r in ref])
        for key in CHANGES:
            changes = [e for e in events if key in e]
            if key == "sparsity" or changes:
                steps = [0, *(e["step"] for e in changes), last]
                values = [0.0, *(e[key] for e in changes)]
                out[key] = (steps, [*values, values[-1]])
        return out

    def _plot(self, path: Path, summary: dict[str, Any]) -> dict[str, tuple[list[float], list[float]]]:
        """Draw [`curves`][lightning_prune.PruningReport.curves] into ``path``; returns the data of the lines as drawn,
        ``{name: (x, y)}``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        curves = self.curves(summary)
        fig, ax = plt.subplots(figsize=(7, 4))
        lines = {"val_loss": ax.plot(*curves["val_loss"], "o-", color="tab:blue", label="validation loss")[0]}
        if "reference_val_loss" in curves:
            lines["reference_val_loss"] = ax.plot(
                *curves["reference_val_loss"], "--", color="tab:gray", label="dense, same budget (reference run)"
            )[0]
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("validation loss", color="tab:blue")
        ax.legend(loc="upper right")
        twin = ax.twinx()
        lines["sparsity"] = twin.step(*curves["sparsity"], where="post", color="tab:red", label="sparsity")[0]
        for key, color in (("neurons_removed", "tab:green"), ("params_removed", "tab:purple")):
            if key in curves:
                lines[key] = twin.step(*curves[key], where="post", color=color, label=CHANGES[key])[0]
        if "neurons_removed" in lines or "params_removed" in lines:
            twin.legend(loc="upper left")
        twin.set_ylabel("sparsity", color="tab:red")
        twin.set_ylim(0, 1)
        ax.set_title("validation loss while pruning (events at the step they happened)")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return {k: (list(line.get_xdata()), list(line.get_ydata())) for k, line in lines.items()}

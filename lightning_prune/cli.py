"""The ``lightning-prune`` command: LightningCLI over [`CausalLM`][lightning_prune.lm.CausalLM] and the text data.

Examples:
    lightning-prune fit --config recipes/main.yaml
    lightning-prune fit --config recipes/main.yaml --trainer.max_epochs 4 --schedule '{1: 0.3, 2: 0.6}'
    lightning-prune fit --config recipes/main.yaml --data.files '[my.txt]' --print_config

``--dense true`` trains the same recipe without pruning: every pruning, holding and tracking callback is dropped and
everything else (model, data, seed, steps, learning-rate schedule, report, export) stays. Its ``report.json`` is
the same-budget reference that a pruned run's [`PruningReport`][lightning_prune.PruningReport] compares with
(``recipes/main_dense.json`` is written this way):

```bash
lightning-prune fit --config recipes/main.yaml --dense true --trainer.default_root_dir runs/main_dense \
    --trainer.logger.init_args.save_dir runs/main_dense
cp runs/main_dense/tensorboard/version_N/report.json recipes/main_dense.json
```

Every run writes its logs, checkpoints, report and export into its own folder, the logger's version folder
(``runs/main/tensorboard/version_N``); a run refused at setup removes that folder again.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_prune.callbacks import ScheduledPruning
from lightning_prune.callbacks._lifecycle import Lifecycle
from lightning_prune.data import TextDataModule, check_block_size
from lightning_prune.lm import CausalLM
from lightning_prune.schedules import AtEpochs

__all__ = ["PRUNING_CALLBACKS", "PruneCLI", "cli", "main", "without_pruning"]

# what ``--dense true`` leaves out: every callback that writes, holds or tracks masks (every pruning writer, HoldMasks,
# ImportanceTracking); the rest of the recipe (report, export, distillation, checkpoints) stays
PRUNING_CALLBACKS = (Lifecycle,)


def without_pruning(callbacks: list[Any]) -> list[Any]:
    """The callbacks of a recipe less every one that prunes, holds or tracks (``--dense true``)."""
    return [cb for cb in callbacks if not isinstance(cb, PRUNING_CALLBACKS)]


class PruneCLI(LightningCLI):
    """LightningCLI whose model's vocabulary follows the data module's tokenizer, with ``--dense``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.vocab_size", "model.init_args.vocab_size", apply_on="instantiate")
        parser.add_argument(
            "--dense",
            type=bool,
            default=False,
            help="Train without pruning (drop the pruning and tracking callbacks): the same-budget dense reference.",
        )
        parser.add_argument(
            "--schedule",
            type=dict[int, float] | None,
            default=None,
            help="Replace the ScheduledPruning schedule of the config: {epoch: sparsity}, e.g. '{1: 0.3, 2: 0.6}'.",
        )

    def before_fit(self) -> None:
        """Reject a block size the model cannot attend over, before any data is loaded; with ``--dense true`` drop
        the pruning and tracking callbacks."""
        context = getattr(self.model, "context", None)
        check_block_size(self.datamodule.block_size, context)
        if self._get(self.config, "dense", False):
            self.trainer.callbacks = without_pruning(self.trainer.callbacks)
        points = self._get(self.config, "schedule", None)
        if points is not None:
            pruning = [cb for cb in self.trainer.callbacks if isinstance(cb, ScheduledPruning)]
            if len(pruning) != 1:
                raise ValueError(
                    f"--schedule replaces the schedule of the config's one ScheduledPruning; it has {len(pruning)}."
                )
            pruning[0].set_schedule(AtEpochs({int(t): float(s) for t, s in points.items()}))


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lightning-prune`` console script."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    missing = [m for m in ("jsonargparse", "transformers", "tokenizers") if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(
            f"lightning-prune needs {', '.join(missing)}: install the recipes extra "
            "(pip install 'lightning_prune[recipes]')."
        )
    cli(args)


def cli(args: list[str] | None = None, run: bool = True) -> PruneCLI:
    """Build (and with ``run``, run) the CLI; returns it with its ``trainer``, ``model`` and ``datamodule``."""
    return PruneCLI(
        CausalLM,
        TextDataModule,
        run=run,
        subclass_mode_model=True,
        args=args,
        save_config_kwargs={"overwrite": True},
    )


if __name__ == "__main__":
    main()

"""The ``lightning-prune`` command: LightningCLI over :class:`~lightning_prune.lm.CausalLM` and the text data.

Examples:
    lightning-prune fit --config recipes/main.yaml
    lightning-prune fit --config recipes/main.yaml --trainer.max_epochs 3 --print_config
"""

from __future__ import annotations

import os

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_prune.data import TextDataModule, check_block_size
from lightning_prune.lm import CausalLM

__all__ = ["PruneCLI", "cli", "main"]


class PruneCLI(LightningCLI):
    """LightningCLI whose model's vocabulary follows the data module's tokenizer."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.vocab_size", "model.init_args.vocab_size", apply_on="instantiate")

    def before_fit(self) -> None:
        """Reject a block size the model cannot attend over, before any data is loaded."""
        context = getattr(self.model, "context", None)
        check_block_size(self.datamodule.block_size, context)


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lightning-prune`` console script."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
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

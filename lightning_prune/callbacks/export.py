"""``ExportPretrained``: at the end of fitting, save the pruned model so plain ``transformers`` reloads it."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from typing_extensions import override

from lightning_prune.callbacks.neurons import NeuronPruning
from lightning_prune.callbacks.pruning import ScheduledPruning
from lightning_prune.export import export_pretrained, make_permanent_, nonzero_report

__all__ = ["ExportPretrained"]


class ExportPretrained(Callback):
    """Make the masks permanent and ``save_pretrained`` the module's ``.model`` into ``directory``.

    With a :class:`~lightning_prune.callbacks.NeuronPruning` among the callbacks, a copy of the model with its
    removed neurons physically cut out (smaller layers, ``intermediate_size`` / ``n_inner`` updated) is saved
    instead; the trained model itself is left as it is.

    With ``verify`` the directory is reloaded with ``AutoModelForCausalLM.from_pretrained`` and its logits on a
    random batch compared with the trained model's; the largest difference goes into ``export.json``.

    Args:
        directory: target directory (created); default ``<trainer.default_root_dir>/pruned_model``.
        verify: reload and compare logits after saving.
    """

    def __init__(self, directory: str | None = None, verify: bool = True) -> None:
        self.directory, self.verify = directory, verify

    @override
    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        neurons = [cb for cb in trainer.callbacks if isinstance(cb, NeuronPruning)]
        model = neurons[0].model if neurons else getattr(pl_module, "model", pl_module)
        masks = {}
        for cb in trainer.callbacks:
            if isinstance(cb, ScheduledPruning):
                masks.update(cb.masks)
        masks.update(getattr(pl_module, "masks", {}))
        directory = self.directory or str(Path(trainer.default_root_dir) / "pruned_model")
        if neurons:
            make_permanent_(model, masks)
            for cb in neurons:
                cb.rezero()
            dense = nonzero_report(model)["parameters"]
            shrunk = copy.deepcopy(model)
            for cb in neurons:
                cb.shrink_(shrunk)
            report = {**export_pretrained(shrunk, directory), "parameters_before_shrink": dense}
            del shrunk
        else:
            report = export_pretrained(model, directory, masks)
        if self.verify:
            report["max_logit_difference"] = reload_difference(model, directory)
        Path(directory, "export.json").write_text(json.dumps(report, indent=2))
        rank_zero_info(f"exported to {directory}: {report}")


@torch.no_grad()
def reload_difference(model: torch.nn.Module, directory: str) -> float:
    """Largest |logit difference| between ``model`` and its reload from ``directory`` on a random batch."""
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(directory).eval()
    was_training = model.training
    model.eval()
    ids = torch.randint(0, reloaded.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    ref = model(input_ids=ids.to(next(model.parameters()).device)).logits.float().cpu()
    model.train(was_training)
    return float((reloaded(input_ids=ids).logits.float() - ref).abs().max())

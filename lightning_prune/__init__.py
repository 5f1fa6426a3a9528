"""lightning_prune: prune language models while they train, with PyTorch Lightning callbacks.

Everything a user needs is exported here: the callbacks, the schedules, the criteria, the size target, the
fine-tuning module, the one-shot tools and the export. The submodules hold the rest (documented in the API
reference); modules whose names start with ``_`` are internals.
"""

from lightning_prune.adapters import merge_adapters
from lightning_prune.calibration import wanda_masks
from lightning_prune.callbacks import (
    Distillation,
    ExportPretrained,
    HoldMasks,
    ImportanceTracking,
    NeuronPruning,
    PruningReport,
    ScheduledPruning,
    StructuredPruning,
    TargetCheckpoint,
)
from lightning_prune.compensation import refit_ffn_
from lightning_prune.criteria import Criterion, get_criterion
from lightning_prune.data import TextDataModule
from lightning_prune.export import export_pretrained
from lightning_prune.finetune import FineTune
from lightning_prune.lm import CausalLM
from lightning_prune.neurons import calibrated_neuron_masks
from lightning_prune.schedules import AtEpochs, AtSteps, Cubic, Linear, OneShot, Schedule
from lightning_prune.structured import shrink_
from lightning_prune.structured.target import SizeTarget

__all__ = [
    "AtEpochs",
    "AtSteps",
    "calibrated_neuron_masks",
    "CausalLM",
    "Criterion",
    "Cubic",
    "Distillation",
    "export_pretrained",
    "ExportPretrained",
    "FineTune",
    "get_criterion",
    "HoldMasks",
    "ImportanceTracking",
    "Linear",
    "merge_adapters",
    "NeuronPruning",
    "OneShot",
    "PruningReport",
    "refit_ffn_",
    "Schedule",
    "ScheduledPruning",
    "shrink_",
    "SizeTarget",
    "StructuredPruning",
    "TargetCheckpoint",
    "TextDataModule",
    "wanda_masks",
]
__version__ = "0.1.0"

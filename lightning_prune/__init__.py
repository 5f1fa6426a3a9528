"""lightning_prune: prune language models while they train, with PyTorch Lightning callbacks."""

from lightning_prune.callbacks import (
    Distillation,
    ExportPretrained,
    HoldMasks,
    ImportanceTracking,
    NeuronPruning,
    PruningReport,
    ScheduledPruning,
    StructuredPruning,
)
from lightning_prune.criteria import CRITERIA, Criterion, get_criterion
from lightning_prune.masks import compute_masks
from lightning_prune.registry import MaskRegistry, registry_of
from lightning_prune.schedules import AtEpochs, AtSteps, Cubic, Linear, OneShot, Schedule
from lightning_prune.selection import select_parameters
from lightning_prune.structured.target import SizeTarget
from lightning_prune.trackers import RunningStats

__all__ = [
    "CRITERIA",
    "AtEpochs",
    "AtSteps",
    "Criterion",
    "Cubic",
    "Distillation",
    "ExportPretrained",
    "HoldMasks",
    "ImportanceTracking",
    "MaskRegistry",
    "NeuronPruning",
    "PruningReport",
    "Linear",
    "OneShot",
    "RunningStats",
    "Schedule",
    "ScheduledPruning",
    "SizeTarget",
    "StructuredPruning",
    "compute_masks",
    "get_criterion",
    "registry_of",
    "select_parameters",
]
__version__ = "0.1.0"

"""Lightning callbacks: thin hooks over the pure core."""

from lightning_prune.callbacks.checkpoint import TargetCheckpoint
from lightning_prune.callbacks.distillation import Distillation
from lightning_prune.callbacks.export import ExportPretrained
from lightning_prune.callbacks.hold import HoldMasks
from lightning_prune.callbacks.neurons import NeuronPruning
from lightning_prune.callbacks.pruning import ScheduledPruning
from lightning_prune.callbacks.report import PruningReport
from lightning_prune.callbacks.structure import StructuredPruning
from lightning_prune.callbacks.tracking import ImportanceTracking

__all__ = [
    "Distillation",
    "ExportPretrained",
    "HoldMasks",
    "ImportanceTracking",
    "NeuronPruning",
    "PruningReport",
    "ScheduledPruning",
    "StructuredPruning",
    "TargetCheckpoint",
]

"""Lightning callbacks: thin hooks over the pure core."""

from lightning_prune.callbacks.pruning import ScheduledPruning
from lightning_prune.callbacks.tracking import ImportanceTracking

__all__ = ["ImportanceTracking", "ScheduledPruning"]

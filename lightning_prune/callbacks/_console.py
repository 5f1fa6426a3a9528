"""What the callbacks show a person and where a run keeps its files.

`say` prints one line on process 0 that stays on screen: above Lightning's progress bar when there is one
(a line printed past a TQDM bar is erased by its next redraw), through rank-zero logging when there is none.
`run_directory` is the run's own folder (the logger's version folder), so a second run never overwrites the
first's files, and `discard_unused_run` removes that folder again when the run stopped before it trained
(refused at setup), so a refusal leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_info

__all__ = ["discard_unused_run", "run_directory", "say"]


def say(trainer: pl.Trainer | None, message: str) -> None:
    """Print ``message`` on process 0 so that a progress bar's redraw does not wipe it.

    With Lightning's TQDM bar the line is written with ``tqdm.write`` (above the bar while one is open, plainly once
    training has ended); with another enabled progress bar through its ``print``; without one through rank-zero
    logging (``rank_zero_info``).
    """
    if trainer is not None and not trainer.is_global_zero:
        return
    bar = trainer.progress_bar_callback if trainer is not None else None
    if bar is not None and bar.is_enabled:
        if isinstance(bar, TQDMProgressBar):
            from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

            Tqdm.write(message)  # the bar's own print drops the line once its bars are closed (after training)
        else:
            bar.print(message)
    else:
        rank_zero_info(message)


def run_directory(trainer: pl.Trainer) -> Path:
    """The folder of this run: the first logger's ``log_dir`` (``<save_dir>/<name>/version_N`` for TensorBoard and
    CSV, where the checkpoints go too), else its ``save_dir``, else ``trainer.default_root_dir``.

    Call it on every process (at ``setup``): the Trainer broadcasts the folder from process 0.
    """
    return Path(trainer.log_dir or trainer.default_root_dir)


_SETUP_FILES = ("config.yaml", "hparams.yaml")  # what LightningCLI and a logger write before the first step


def discard_unused_run(trainer: pl.Trainer) -> bool:
    """Remove this run's version folder when the run stopped before its first training step and the folder holds
    nothing but what setup wrote there: the config, the hyperparameters, and event files of this process.

    Returns whether a folder was removed. Only process 0 removes; a folder with anything else (an earlier run's
    results, checkpoints) is left alone.
    """
    if not trainer.is_global_zero or trainer.global_step > 0 or not trainer.loggers:
        return False
    logger = trainer.loggers[0]
    folder = getattr(logger, "log_dir", None)
    if folder is None or not Path(folder).is_dir():
        return False
    if Path(folder).resolve() == Path(trainer.default_root_dir).resolve():  # a logger without a folder of its own
        return False
    mine = f".{os.getpid()}."  # tensorboard names its event files events.out.tfevents.<time>.<host>.<pid>.<n>
    for entry in Path(folder).iterdir():
        events = entry.name.startswith("events.out.tfevents.") and mine in entry.name
        if not (entry.is_file() and (entry.name in _SETUP_FILES or events)):
            return False
    logger.finalize("failed")  # closes the event file before it is removed
    shutil.rmtree(folder)
    return True

"""Shared fixtures. Tests never reach a hub: everything runs offline."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning.pytorch as pl
import pytest
from helpers import TinyLM


@pytest.fixture
def tiny() -> TinyLM:
    pl.seed_everything(0, verbose=False)
    return TinyLM()

"""Shared fixtures."""

import lightning.pytorch as pl
import pytest
from helpers import TinyLM


@pytest.fixture
def tiny() -> TinyLM:
    pl.seed_everything(0, verbose=False)
    return TinyLM()

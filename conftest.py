"""Doctests of the package: the names its examples use without importing them."""

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

import lightning_prune


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace: dict) -> None:
    doctest_namespace.update(torch=torch, nn=nn, pl=pl)
    doctest_namespace.update({name: getattr(lightning_prune, name) for name in lightning_prune.__all__})

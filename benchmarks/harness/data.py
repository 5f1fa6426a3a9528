"""Byte corpora and batches of the benchmarks: the King James Bible (``lightning_prune.data.kjv_text``, offline)
or the standard library's pydoc topics, as byte tensors, random windows of them, set-up data modules, and random
token ids where only the shapes matter."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lightning_prune.data import TextDataModule, kjv_text

__all__ = ["batches", "byte_corpus", "random_ids_loader", "text_module"]


def byte_corpus(source: str = "kjv") -> tuple[Tensor, Tensor]:
    """(train, val) long tensors of the UTF-8 bytes of the KJV Bible (``"kjv"``) or of the pydoc topics
    (``"pydoc"``: the topics joined by blank lines in key order, untrimmed), split 90/10."""
    if source == "kjv":
        text = kjv_text()
    else:
        from pydoc_data.topics import topics

        text = "\n\n".join(topics[k] for k in sorted(topics))
    data = torch.tensor(list(text.encode("utf-8")), dtype=torch.long)
    cut = int(0.9 * len(data))
    return data[:cut], data[cut:]


def batches(data: Tensor, n: int, batch: int, seq: int, gen: torch.Generator) -> list[Tensor]:
    """``n`` batches of ``batch`` random windows of ``seq`` tokens of ``data``, each ``(batch, seq)``."""
    starts = torch.randint(0, len(data) - seq, (n, batch), generator=gen)
    return [torch.stack([data[s : s + seq] for s in row]) for row in starts]


def random_ids_loader(vocab_size: int, steps: int, batch: int, seq: int, seed: int) -> DataLoader:
    """``steps`` batches of uniformly random token ids, ``(batch, seq)`` each, in a fixed order."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (steps * batch, seq), generator=gen)
    return DataLoader(TensorDataset(ids), batch_size=batch, shuffle=False)


_MODULES: dict[str, TextDataModule] = {}


def text_module(**kwargs: Any) -> TextDataModule:
    """A set-up byte-level ``TextDataModule(**kwargs)``, built once per process for the same arguments."""
    key = repr(sorted(kwargs.items()))
    if key not in _MODULES:
        dm = TextDataModule(**kwargs)
        dm.setup("fit")
        _MODULES[key] = dm
    return _MODULES[key]

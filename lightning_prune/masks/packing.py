"""Masks at one bit per entry.

`pack_mask` packs a ≥2-D bool mask along its last dim into ``uint8`` (8 entries a byte, bit i of byte j for
entry 8·j + i); `unpack_mask` restores it. Packing is per row of the last dim, so a mask sharded along any
other dim packs shard by shard. A 1-D mask is kept as it is (bool).

Examples:
    >>> mask = torch.tensor([[True, False, True], [False, False, True]])
    >>> pack_mask(mask)
    tensor([[5],
            [4]], dtype=torch.uint8)
    >>> torch.equal(unpack_mask(pack_mask(mask), mask.shape), mask)
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["pack_mask", "unpack_mask"]

_BIT = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)  # bit i of a byte: entry 8·j + i


@torch.no_grad()
def pack_mask(mask: Tensor) -> Tensor:
    """A ≥2-D bool mask packed along its last dim into ``uint8`` of shape (..., ceil(last / 8)).

    Packing is per row of the last dim, so a mask sharded along any other dim packs shard by shard into a packed
    tensor sharded the same way. A 1-D mask is returned unchanged (as bool).
    """
    if mask.dim() < 2:
        return mask.bool()
    last = mask.shape[-1]
    pad = -last % 8
    bits = torch.nn.functional.pad(mask.to(torch.uint8), (0, pad))  # (..., 8·ceil(last/8))
    bits = bits.view(*mask.shape[:-1], (last + pad) // 8, 8) * _BIT.to(mask.device)  # (..., ceil(last/8), 8)
    return bits.sum(-1, dtype=torch.uint8)  # distinct bits: the sum is the bitwise or


@torch.no_grad()
def unpack_mask(packed: Tensor, shape: Sequence[int] | torch.Size) -> Tensor:
    """The bool mask of ``shape`` that `pack_mask` packed into ``packed`` (a 1-D mask comes back as is)."""
    shape = tuple(shape)
    if len(shape) < 2:
        return packed.bool().view(shape)
    bits = (packed.unsqueeze(-1) & _BIT.to(packed.device)) != 0  # (..., ceil(last/8), 8)
    return bits.flatten(-2)[..., : shape[-1]].reshape(shape)

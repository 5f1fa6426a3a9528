"""Where a parameter's entries live: the whole tensor in this process, or one shard of a ``DTensor``.

Everything the library keeps per parameter (statistics, masks) lives on the *local* tensor: the whole tensor in
one process or under DDP, this process's shard under FSDP2 (``fully_shard``, ``ModelParallelStrategy``). A
`Layout` says where that local tensor sits in the full one, so that decisions that need the whole tensor
(a global threshold, a tie broken by position) combine small per-shard counts with one collective instead of
gathering the tensor.

Supported placements: a 1-D device mesh with ``Shard(d)`` or ``Replicate()``; anything else raises at setup.

Examples:
    >>> layout = layout_of(torch.zeros(4, 3))
    >>> layout.shape, layout.offset, layout.dim, layout.group
    ((4, 3), (0, 0), None, None)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from lightning_prune._compat import local_shape_and_offset, local_tensor

__all__ = ["Layout", "all_reduce_", "count_zeros", "is_sharded", "layout_of", "local", "same_everywhere"]


@dataclass(frozen=True)
class Layout:
    """Where a local tensor sits in its full tensor."""

    shape: tuple[int, ...]  # shape of the full tensor
    offset: tuple[int, ...]  # index in the full tensor of the local tensor's first entry, per dim
    dim: int | None = None  # the dim the full tensor is split along (None: the whole tensor is local)
    group: Any = None  # the process group it is split over (None: not split)
    mesh: Any = None  # the DTensor's device mesh, to wrap local tensors back (None: not a DTensor)
    placements: tuple[Any, ...] = ()  # the DTensor's placements
    local_shape: tuple[int, ...] = ()  # shape of the local tensor (empty: same as ``shape``)

    @property
    def sharded(self) -> bool:
        return self.group is not None

    def slice(self, full: Tensor) -> Tensor:
        """This process's part of a full-size tensor (a view; the tensor itself when not sharded)."""
        if self.dim is None:
            return full
        return full.narrow(self.dim, self.offset[self.dim], self._local_size())

    def _local_size(self) -> int:
        if self.local_shape:
            return self.local_shape[self.dim]
        return local_shape_and_offset(self.shape, self.mesh, self.placements)[0][self.dim]

    def wrap(self, local_tensor: Tensor) -> Tensor:
        """A ``DTensor`` over the local tensor with the parameter's placements (the tensor itself when not one)."""
        if self.mesh is None:
            return local_tensor
        from torch.distributed.tensor import DTensor

        stride = torch.empty(self.shape, device="meta").stride()
        return DTensor.from_local(
            local_tensor, self.mesh, self.placements, run_check=False, shape=torch.Size(self.shape), stride=stride
        )

    def packed(self) -> Layout:
        """The layout of a mask bit-packed along its last dim (8 entries a byte), for a tensor not split along it."""
        last = (self.shape[-1] + 7) // 8
        size = (*self.local_shape[:-1], last) if self.local_shape else ()
        return Layout(
            (*self.shape[:-1], last), (*self.offset[:-1], 0), self.dim, self.group, self.mesh, self.placements, size
        )


def is_sharded(t: Tensor) -> bool:
    """Whether ``t`` is a ``DTensor``."""
    return _dtensor_type() is not None and isinstance(t, _dtensor_type())


def local(t: Tensor) -> Tensor:
    """The local tensor of a ``DTensor`` (its storage, so in-place changes reach the parameter); else ``t``."""
    return local_tensor(t) if is_sharded(t) else t  # to_local() would detach from autograd's view of the Parameter


def layout_of(t: Tensor) -> Layout:
    """The `Layout` of a tensor or ``DTensor``.

    Raises:
        ValueError: for a ``DTensor`` on a mesh of more than one dim, or with a placement other than ``Shard`` and
            ``Replicate`` (partial sums, strided shards), which the library cannot mask shard by shard.
    """
    if not is_sharded(t):
        return Layout(tuple(t.shape), (0,) * t.dim())
    from torch.distributed.tensor import Replicate, Shard

    mesh, placements = t.device_mesh, tuple(t.placements)
    if mesh.ndim != 1:
        raise ValueError(
            f"a DTensor on a {mesh.ndim}-D device mesh is not supported (placements {placements}); shard the "
            "pruned parameters over a 1-D mesh (e.g. fully_shard over the data-parallel dim only)."
        )
    placement = placements[0]
    if type(placement) is Replicate:
        return Layout(tuple(t.shape), (0,) * t.dim(), None, None, mesh, placements)
    if type(placement) is not Shard:
        raise ValueError(f"a DTensor placed as {placement} is not supported: only Shard(dim) and Replicate().")
    size, offset = local_shape_and_offset(t.shape, mesh, placements)
    dim = placement.dim % t.dim()
    return Layout(tuple(t.shape), tuple(offset), dim, mesh.get_group(), mesh, placements, tuple(size))


def all_reduce_(t: Tensor, group: Any, op: str = "sum") -> Tensor:
    """Sum (or ``max``) ``t`` in place over ``group``; nothing when ``group`` is None. Returns ``t``."""
    if group is not None:
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM, group=group)
    return t


@torch.no_grad()
def count_zeros(tensors: dict[str, Tensor], layouts: list[Layout]) -> dict[str, int]:
    """``{fqn: exact zeros in the full tensor}`` from local tensors: one all-reduce of the counts of the sharded
    ones (a replicated or unsharded tensor is counted as it is here), one host sync in all."""
    if not tensors:
        return {}
    counts = torch.stack([(t == 0).sum() for t in tensors.values()])  # (n,)
    sharded = torch.tensor([lay.sharded for lay in layouts], device=counts.device)
    group = same_everywhere(dict(zip(tensors, layouts)))
    if group is not None:
        part = torch.where(sharded, counts, torch.zeros_like(counts))
        all_reduce_(part, group)
        counts = torch.where(sharded, part, counts)
    return dict(zip(tensors, counts.tolist()))


def same_everywhere(layouts: dict[str, Layout]) -> Any:
    """The one process group the sharded tensors share (None if none is sharded).

    Raises:
        ValueError: if the tensors are sharded over different groups.
    """
    groups = {id(lay.group): lay.group for lay in layouts.values() if lay.sharded}
    if len(groups) > 1:
        raise ValueError("the selected parameters are sharded over different process groups; prune them separately.")
    return next(iter(groups.values()), None)


def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed
        return None
    return DTensor

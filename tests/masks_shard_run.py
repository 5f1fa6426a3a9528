"""Two CPU processes (gloo) each mask their shards of the same scores; used by tests/test_masks.py.

Every process checks that its local masks equal its part of the masks one process computes from the full scores,
and writes ``ok{rank}`` to the output folder. Run one process per rank, ``python tests/masks_shard_run.py OUT_DIR
RANK``, with MASTER_ADDR and MASTER_PORT set (the test starts both at once: one import of the package each).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from lightning_prune._shards import Layout
from lightning_prune.masks import compute_masks

WORLD = 2
SHAPES = {"q": (24, 16), "mlp": (40, 16), "odd": (7, 16), "o": (16, 24), "whole": (8, 16), "one": (1, 16), "vec": (40,)}


def _full(kind: str) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    out = {}
    for f, shape in SHAPES.items():
        if kind == "random":
            out[f] = torch.randn(shape, generator=gen)
        elif kind == "tied":
            out[f] = torch.randint(0, 4, shape, generator=gen).float()
        else:  # "pruned"
            s = torch.randint(0, 6, shape, generator=gen).float()
            out[f] = s.masked_fill(torch.rand(shape, generator=gen) < 0.3, float("-inf"))
    return out


def _shard(full: dict[str, torch.Tensor], dims: dict[str, int | None], rank: int):
    """This rank's shards (torch.chunk, as DTensor's Shard(d) places them) and their layouts."""
    local, layouts = {}, {}
    for f, t in full.items():
        d = dims.get(f)
        if d is None:
            local[f], layouts[f] = t, Layout(tuple(t.shape), (0,) * t.dim())
            continue
        sizes = [c.shape[d] for c in t.chunk(WORLD, d)] + [0] * WORLD
        offset = [0] * t.dim()
        offset[d] = sum(sizes[:rank])
        local[f] = t.narrow(d, offset[d], sizes[rank]).contiguous()
        layouts[f] = Layout(tuple(t.shape), tuple(offset), d, dist.group.WORLD)
    return local, layouts


def _check(name: str, full: dict, dims: dict, rank: int, **kwargs) -> None:
    local, layouts = _shard(full, dims, rank)
    want = compute_masks(full, **kwargs)
    got = compute_masks(local, **kwargs, layouts=layouts)
    for f in full:
        part = (
            layouts[f].slice(want[f])
            if layouts[f].dim is None
            else want[f].narrow(layouts[f].dim, layouts[f].offset[layouts[f].dim], local[f].shape[layouts[f].dim])
        )
        assert got[f].shape == local[f].shape and torch.equal(got[f], part), (name, f, kwargs)


def _run(rank: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    # Shard(0): rank order, then position; rank 1 holds no row of "one"
    rows = {"q": 0, "mlp": 0, "odd": 0, "o": 0, "one": 0, "vec": 0}
    cols = {"q": 1, "mlp": 1, "o": 0}  # Shard(1) / Shard(0) of the input dim: untied scores only
    for kind in ["random", "tied", "pruned"]:
        full = _full(kind)
        _check("global ends", full, rows, rank, sparsity=0.0, max_layer_sparsity=0.5)
        for s in [0.3, 0.6]:
            _check("global", full, rows, rank, sparsity=s)
            _check("global cap", full, rows, rank, sparsity=s, max_layer_sparsity=s + 0.2)
            _check(
                "global bounds", full, rows, rank, sparsity=s, max_layer_sparsity=s + 0.1, min_layer_sparsity=s - 0.1
            )
            _check("layer", full, rows, rank, sparsity=s, scope="layer")
            _check("output", full, rows, rank, sparsity=s, scope="output")
            matrices = {f: t for f, t in full.items() if t.dim() == 2}  # rows and groups of 2-D weights
            _check("nm", matrices, rows, rank, sparsity=s, pattern="2:4")
            for scope in ["global", "layer"]:
                _check("row", matrices, rows, rank, sparsity=s, pattern="row", scope=scope, max_layer_sparsity=s + 0.2)
        if kind == "random":
            for s in [0.6]:
                _check("row split inputs", matrices, cols, rank, sparsity=s, pattern="row")
                _check("nm split inputs", matrices, cols, rank, sparsity=s, pattern="2:4")
                _check("global split inputs", full, cols, rank, sparsity=s)
    local, layouts = _shard(_full("random"), cols, rank)
    for kwargs, match in [({"scope": "output"}, "split along its input dim"), ({"pattern": "8:16"}, "multiples of")]:
        try:
            compute_masks({"q": local["q"]}, 0.5, **kwargs, layouts={"q": layouts["q"]})
        except ValueError as err:
            assert "q" in str(err) and match in str(err), err
        else:
            raise AssertionError(f"{kwargs} on an input-split tensor should raise")
    dist.barrier()
    dist.destroy_process_group()
    (Path(out) / f"ok{rank}").write_text("ok")


if __name__ == "__main__":
    _run(int(sys.argv[2]), sys.argv[1])

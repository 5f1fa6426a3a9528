"""Masks from scores, and masks that hold.

A mask is a ``bool`` tensor shaped like its weight: True keeps the entry, False prunes it. Masks are
computed from importance scores (higher = more important) at a target *sparsity* (the fraction of
zeros), in a ``scope`` (``"global"`` across all selected weights, per ``"layer"``, or per ``"output"`` row of
each weight, as Wanda compares) and a ``pattern``:

- ``"unstructured"``: any entries;
- ``"N:M"`` (e.g. ``"2:4"``): in every group of M consecutive inputs, at most M−N are pruned; a target s
  prunes round(s·M) of each group, capped at M−N;
- ``"row"``: whole output rows (neurons), ranked by their mean score.

Selection is exact and linear in the number of scores, with ties broken by position, also when the tensors are
sharded over a process group (each process passes its local shards and gets their masks). Entries already pruned
should be given score −inf by the caller so they stay pruned; NaN scores are not allowed.

One module per concept:

- `select`: the exact k-th lowest score and bounded counts over many, possibly sharded, tensors (radix
  histograms, never a sort or concatenation of all scores);
- `scopes`: unstructured masks per scope (`global_masks`, `layer_masks`, `output_masks`);
- `patterns`: the N:M and row patterns (`nm_masks`, `row_masks`) and `compute_masks`,
  which picks the function for a scope and pattern;
- `packing`: masks stored at one bit per entry (`pack_mask` / `unpack_mask`);
- `holding`: masks applied to tensors exactly (`clear_`, `apply_masks_`), `all_finite`
  and `sparsity_report`.

Examples:
    >>> scores = {"a": torch.tensor([[4.0, 1.0], [3.0, 2.0]])}
    >>> compute_masks(scores, 0.5)["a"]
    tensor([[ True, False],
            [ True, False]])
"""

from lightning_prune.masks.holding import all_finite, apply_masks_, clear_, sparsity_report
from lightning_prune.masks.packing import pack_mask, unpack_mask
from lightning_prune.masks.patterns import compute_masks, nm_masks, parse_pattern, row_masks
from lightning_prune.masks.scopes import SCOPES, global_masks, layer_masks, output_masks

__all__ = [
    "SCOPES",
    "all_finite",
    "apply_masks_",
    "clear_",
    "compute_masks",
    "global_masks",
    "layer_masks",
    "nm_masks",
    "output_masks",
    "pack_mask",
    "parse_pattern",
    "row_masks",
    "sparsity_report",
    "unpack_mask",
]

"""What size a structured pruning run should end at: [`SizeTarget`][lightning_prune.SizeTarget].

The target is what the exported model *keeps*: a parameter count (``params=``), a fraction of the dense model's
parameters (``keep=``) or a fraction of its FLOPs per token (``flops=``). ``SizeTarget(keep=0.3)`` exports a model
with 30 % of the parameters — where ``ScheduledPruning({2: 0.3})`` *removes* 30 % of the weights (a sparsity). The
schedule of a [`StructuredPruning`][lightning_prune.StructuredPruning] is neither: it says how far along the way to
this target a run is (0 dense, 1 at the target).

Examples:
    >>> SizeTarget(keep=0.5).goal(dense_params=1000, dense_flops=4000)
    500.0
    >>> SizeTarget(flops=0.25).metric
    'flops'
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

__all__ = ["SizeTarget"]


def _fraction(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise ValueError(
            f"{name} is the fraction of the dense model to keep, in (0, 1), got {value!r}; e.g. {name}=0.5 keeps half."
        )
    return float(value)


@dataclass(frozen=True)
class SizeTarget:
    """The size of the exported model, what it keeps: give exactly one of ``params``, ``keep`` and ``flops``.

    Raises:
        ValueError: with none or several of them, a count below 1, a fraction outside (0, 1), or a negative ``seq``.
    """

    params: int | None = None  # parameters the exported model keeps (a count)
    keep: float | None = None  # fraction of the dense model's parameters kept, in (0, 1)
    flops: float | None = None  # fraction of the dense model's FLOPs per token kept, in (0, 1)
    seq: int = 0  # tokens of context counted in the attention products' FLOPs per token (0: weight products only)
    fraction: float | None = None  # the former name of ``keep`` (deprecated)

    def __post_init__(self) -> None:
        if self.fraction is not None:
            warnings.warn(
                "SizeTarget(fraction=) is now SizeTarget(keep=): the fraction of the parameters the model keeps.",
                DeprecationWarning,
                stacklevel=3,
            )
            if self.keep is None:
                object.__setattr__(self, "keep", self.fraction)
            object.__setattr__(self, "fraction", None)
        given = [n for n in ("params", "keep", "flops") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                f"a SizeTarget takes exactly one of params (a count kept), keep (a fraction of the parameters kept) or "
                f"flops (a fraction of FLOPs per token kept), got {given or 'none'}; e.g. SizeTarget(keep=0.5)."
            )
        if self.params is not None and (isinstance(self.params, bool) or not isinstance(self.params, int)):
            raise ValueError(f"params is a parameter count (an int), got {self.params!r}.")
        if self.params is not None and self.params < 1:
            raise ValueError(f"params must be at least 1, got {self.params}.")
        if self.keep is not None:
            _fraction(self.keep, "keep")
        if self.flops is not None:
            _fraction(self.flops, "flops")
        if isinstance(self.seq, bool) or not isinstance(self.seq, int) or self.seq < 0:
            raise ValueError(f"seq is a context length in tokens, >= 0, got {self.seq!r}.")

    @classmethod
    def of(cls, value: SizeTarget | float | int) -> SizeTarget:
        """A target from a [`SizeTarget`][lightning_prune.SizeTarget], a float (fraction of parameters) or an int
        (parameter count).

        Raises:
            ValueError: for anything else, or a value out of range.
        """
        if isinstance(value, SizeTarget):
            return value
        if isinstance(value, float):
            return cls(keep=value)
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(params=value)
        raise ValueError(
            f"target must be a SizeTarget, a float (fraction of parameters kept) or an int (parameters), got {value!r}."
        )

    @property
    def metric(self) -> str:
        """``"flops"`` for a FLOPs target, else ``"params"``: what the allocation counts."""
        return "flops" if self.flops is not None else "params"

    def goal(self, dense_params: float, dense_flops: float) -> float:
        """The size to reach, in [`metric`][lightning_prune.SizeTarget.metric] units, for a dense model of these sizes.

        Raises:
            ValueError: when the dense model is already at or below a parameter-count target.
        """
        if self.params is not None:
            if self.params >= dense_params:
                raise ValueError(
                    f"the target of {self.params:,} parameters is not below the model's {int(dense_params):,}: "
                    f"nothing to remove. Give a smaller count or a fraction kept, e.g. SizeTarget(keep=0.5)."
                )
            return float(self.params)
        if self.keep is not None:
            return self.keep * dense_params
        return self.flops * dense_flops

    def describe(self) -> str:
        if self.params is not None:
            return f"{self.params:,} parameters"
        if self.keep is not None:
            return f"{self.keep:.1%} of the parameters"
        return f"{self.flops:.1%} of the FLOPs per token" + (f" (context {self.seq})" if self.seq else "")

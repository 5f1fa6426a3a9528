"""What size a structured pruning run should end at: [`SizeTarget`][lightning_prune.SizeTarget].

The target is one of: a parameter count of the exported model, a fraction of the dense model's parameters, or a
fraction of its FLOPs per token. Fractions are what is *kept*: ``SizeTarget(fraction=0.5)`` exports a model with
half the parameters.

Examples:
    >>> SizeTarget(fraction=0.5).goal(dense_params=1000, dense_flops=4000)
    500.0
    >>> SizeTarget(flops=0.25).metric
    'flops'
"""

from __future__ import annotations

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
    """The size of the exported model: give exactly one of ``params``, ``fraction`` and ``flops``.

    Raises:
        ValueError: with none or several of them, a count below 1, a fraction outside (0, 1), or a negative ``seq``.
    """

    params: int | None = None  # parameters of the exported model (a count)
    fraction: float | None = None  # fraction of the dense model's parameters kept, in (0, 1)
    flops: float | None = None  # fraction of the dense model's FLOPs per token kept, in (0, 1)
    seq: int = 0  # tokens of context counted in the attention products' FLOPs per token (0: weight products only)

    def __post_init__(self) -> None:
        given = [n for n in ("params", "fraction", "flops") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                f"a SizeTarget takes exactly one of params (a count), fraction (of parameters) or flops (a fraction "
                f"of FLOPs per token), got {given or 'none'}; e.g. SizeTarget(fraction=0.5)."
            )
        if self.params is not None and (isinstance(self.params, bool) or not isinstance(self.params, int)):
            raise ValueError(f"params is a parameter count (an int), got {self.params!r}.")
        if self.params is not None and self.params < 1:
            raise ValueError(f"params must be at least 1, got {self.params}.")
        if self.fraction is not None:
            _fraction(self.fraction, "fraction")
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
            return cls(fraction=value)
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
                    f"nothing to remove. Give a smaller count or a fraction, e.g. SizeTarget(fraction=0.5)."
                )
            return float(self.params)
        if self.fraction is not None:
            return self.fraction * dense_params
        return self.flops * dense_flops

    def describe(self) -> str:
        if self.params is not None:
            return f"{self.params:,} parameters"
        if self.fraction is not None:
            return f"{self.fraction:.1%} of the parameters"
        return f"{self.flops:.1%} of the FLOPs per token" + (f" (context {self.seq})" if self.seq else "")

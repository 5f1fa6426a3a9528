"""Which parameters to prune: by module type and fqn patterns, with a default for transformer models.

The default selects the 2-D weights of ``nn.Linear`` layers, ``transformers``' ``Conv1D`` layers (GPT-2) and
``nn.MultiheadAttention``'s ``in_proj_weight`` that sit inside numbered blocks (a numbered module holding layers,
e.g. ``transformer.h.3.mlp.c_fc.weight``; not the layers of an ``nn.Sequential`` themselves, ``net.3.weight``).
Embeddings, norms, biases and the output head are left out: a layer whose name matches `HEAD_PATTERNS`. A
model without numbered blocks falls back to all such weights except those shaped like an embedding matrix and the
last one (the output layer).

Parameters as users have them:

- a parameter shared by several modules (tied or reused weights) is one entry, under the name
  ``named_parameters`` gives it (its first use);
- frozen parameters (``requires_grad=False``) are left out of the default, since they do not train and so
  cannot recover — except in a model with adapters (PEFT/LoRA), where the frozen base weights are exactly what
  is pruned;
- adapter parameters (the ``lora_A``/``lora_B``… of a PEFT tuner layer, everything of it but its
  ``base_layer``) are never in the default selection.

Examples:
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> list(select_parameters(model, ["0.weight"]))
    ['0.weight']
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence

from torch import nn

__all__ = [
    "find_model",
    "HEAD_PATTERNS",
    "adapter_parameters",
    "in_dim",
    "in_features",
    "is_conv1d",
    "owners",
    "reads_inputs",
    "select_parameters",
]

HEAD_PATTERNS = ("*lm_head*", "*classifier*", "*score*", "*pooler*", "*qa_outputs*", "*cls.*")


def is_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is ``transformers``' Conv1D (GPT-2), a linear layer whose weight is ``(in, out)``."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")  # transformers.pytorch_utils.Conv1D


def _candidates(model: nn.Module) -> dict[str, tuple[nn.Module, nn.Parameter]]:
    """``{fqn: (module, weight)}`` for every prunable matrix in the model, each parameter once (by its
    ``named_parameters`` name, however many modules use it)."""
    names = {id(p): f for f, p in model.named_parameters()}  # a shared parameter: the name of its first use
    found: dict[str, tuple[nn.Module, nn.Parameter]] = {}
    for _, module in model.named_modules():
        if isinstance(module, nn.Linear) or is_conv1d(module):
            weight = module.weight
        elif isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
            weight = module.in_proj_weight
        else:
            continue
        if weight is not None and id(weight) in names:
            found.setdefault(names[id(weight)], (module, weight))
    return found


def adapter_parameters(model: nn.Module) -> set[str]:
    """fqns a model with adapters must not prune: everything of a PEFT tuner layer (a module with a ``base_layer``,
    such as LoRA's) except what lies in its ``base_layer``, and the frozen original of a module PEFT trains a copy of
    (``modules_to_save``: the copy computes, the original is unused while the adapter is active; the copy is pruned
    like any trained weight)."""
    adapters = set()
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        base = getattr(module, "base_layer", None)
        if isinstance(base, nn.Module) and base is not module:
            inside = {id(p) for p in base.parameters()}
            adapters |= {prefix + f for f, p in module.named_parameters() if id(p) not in inside}
        original = getattr(module, "original_module", None)
        if isinstance(original, nn.Module) and isinstance(getattr(module, "modules_to_save", None), nn.ModuleDict):
            adapters |= {f"{prefix}original_module.{f}" for f, _ in original.named_parameters()}
    return adapters


def reads_inputs(module: nn.Module) -> bool:
    """Whether ``module``'s forward input is the input of its weight's rows (``nn.Linear``, ``Conv1D``,
    ``nn.MultiheadAttention``): only such inputs measure a weight's input features (an embedding's token ids do
    not)."""
    return isinstance(module, (nn.Linear, nn.MultiheadAttention)) or is_conv1d(module)


def in_dim(module: nn.Module) -> int:
    """The input dim of a layer's weight: 0 for ``Conv1D`` (weight is (in, out)), else 1 ((out, in))."""
    return 0 if is_conv1d(module) else 1


def in_features(module: nn.Module) -> int:
    """The input size of a Linear or Conv1D layer, read from its weight."""
    return module.weight.shape[in_dim(module)]


def _matches(fqn: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(fqn, p) for p in patterns)


def _default(model: nn.Module, found: dict[str, tuple[nn.Module, nn.Parameter]]) -> list[str]:
    adapters = adapter_parameters(model)
    ok = [
        f
        for f, (_, p) in found.items()
        if p.dim() == 2 and not _matches(f, HEAD_PATTERNS) and f not in adapters and (p.requires_grad or adapters)
    ]
    in_blocks = [f for f in ok if re.search(r"(^|\.)\d+\.[^.]+\.", f)]  # inside a numbered module of several layers
    if in_blocks:
        return in_blocks
    embeddings = [m.weight for m in model.modules() if isinstance(m, nn.Embedding)]
    shapes = {tuple(e.shape) for e in embeddings}
    ok = [f for f in ok if tuple(found[f][1].shape) not in shapes]  # an output head shaped like the embedding
    return ok[:-1] if len(ok) > 1 and list(found)[-1] == ok[-1] else ok  # the last layer computes the output


def select_parameters(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
) -> dict[str, tuple[nn.Module, nn.Parameter]]:
    """Select prunable weights by fqn glob patterns.

    Args:
        model: the model whose ``named_parameters`` fqns are matched.
        include: glob patterns over parameter fqns (``"*.mlp.*.weight"``); None for the default above. A pattern
            may name any parameter of the model, not only Linear weights.
        exclude: glob patterns removed from the selection.

    Returns:
        ``{fqn: (owning module, parameter)}`` in model order.

    Raises:
        ValueError: if an include or exclude pattern matches no parameter, or nothing is left selected.
    """
    found = _candidates(model)
    if include is None:
        chosen = _default(model, found)
    else:
        params = dict(model.named_parameters())
        modules = dict(model.named_modules())
        for p in include:
            if not any(fnmatch.fnmatchcase(f, p) for f in params):
                raise ValueError(f"parameter pattern {p!r} matches no parameter; {_names_hint(model, p)}")
        chosen = [f for f in params if _matches(f, include)]
        for f in chosen:
            if f not in found:
                owner = modules[f.rpartition(".")[0]]
                found[f] = (owner, params[f])
    for p in exclude:
        if not any(fnmatch.fnmatchcase(f, p) for f in chosen):
            raise ValueError(f"exclude pattern {p!r} matches no selected parameter; selected: {chosen[:4]}...")
    chosen = [f for f in chosen if not _matches(f, exclude)]
    if not chosen:
        raise ValueError(
            "no parameter selected for pruning (the default takes trainable 2-D Linear weights inside numbered "
            "blocks): give `parameters` glob patterns of the weights to prune, such as ['*.mlp.*.weight', "
            "'*.attn.*.weight']."
        )
    return {f: found[f] for f in chosen}


def owners(model: nn.Module, fqns: Sequence[str]) -> dict[str, tuple[nn.Module, nn.Parameter]]:
    """``{fqn: (owning module, parameter)}`` for parameters named by fqn (as `select_parameters` returns them).

    Raises:
        ValueError: for an fqn the model lacks.
    """
    found, params = _candidates(model), dict(model.named_parameters())
    missing = [f for f in fqns if f not in params]
    if missing:
        raise ValueError(f"the model has no parameters {missing[:5]}; fqns look like {list(params)[:4]}.")
    return {f: found.get(f, (model.get_submodule(f.rpartition(".")[0]), params[f])) for f in fqns}


def _names_hint(model: nn.Module, pattern: str) -> str:
    """What a pattern that matched nothing may have meant: a tied or shared parameter's other name, else examples."""
    names = {id(p): f for f, p in model.named_parameters()}
    aliases = {f: names[id(p)] for f, p in model.named_parameters(remove_duplicate=False) if names[id(p)] != f}
    tied = [f"{f} is {canonical}" for f, canonical in aliases.items() if fnmatch.fnmatchcase(f, pattern)]
    if tied:
        return f"it names shared (tied) parameters, which are selected by their first name: {', '.join(tied[:4])}."
    return f"fqns look like {list(names.values())[:4]}."


def find_model(
    module: nn.Module, test: Callable[[nn.Module], bool], attr: str | None, what: str
) -> tuple[str, nn.Module]:
    """``(fqn, model)`` of the model ``test`` recognises inside ``module`` (or ``module`` itself): the submodule
    ``attr`` names, else the one found outside any other found one; among several, the one with trainable
    parameters (a frozen teacher beside its student is never chosen).

    Raises:
        ValueError: if ``attr`` names no submodule, none is found, or several are and more than one trains (naming
            them and ``attr=``).
    """
    if attr is not None:
        try:
            return attr, module.get_submodule(attr)
        except AttributeError as err:
            raise ValueError(f"attr={attr!r} names no submodule of {type(module).__name__}.") from err
    found: list[tuple[str, nn.Module]] = []
    for name, sub in module.named_modules():
        if any(f == "" or name.startswith(f + ".") for f, _ in found):
            continue  # inside a model already found
        if test(sub):
            found.append((name, sub))
    if not found:
        raise ValueError(f"{type(module).__name__} holds no {what}; pass attr='<its attribute>'.")
    if len(found) > 1:
        trained = [(n, m) for n, m in found if any(p.requires_grad for p in m.parameters())]
        if len(trained) == 1:
            return trained[0]
        raise ValueError(
            f"{type(module).__name__} holds several {what}s ({', '.join(repr(n or '.') for n, _ in found)}), and "
            "more than one trains: pass attr='<its attribute>' to say which one."
        )
    return found[0]

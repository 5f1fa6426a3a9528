"""``ExportPretrained``: at the end of fitting, save the pruned model so plain ``transformers`` reloads it."""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from torch import nn
from typing_extensions import override

from lightning_prune._registry import registry_of
from lightning_prune._selection import find_model
from lightning_prune.adapters import is_peft_model, merge_adapters
from lightning_prune.callbacks._console import discard_unused_run, run_directory, say
from lightning_prune.export import export_pretrained, make_permanent_, nonzero_report
from lightning_prune.structured.exact import without_epsilon_
from lightning_prune.structured.units import Units, combine_units, shrink_units_
from lightning_prune.tokenizers import build_tokenizer, encode_corpus

__all__ = ["ExportPretrained", "export_summary", "find_pretrained", "published_units", "relative_masks"]


def find_pretrained(module: nn.Module, attr: str | None = None) -> tuple[str, nn.Module]:
    """``(fqn, model)`` of the ``transformers`` (or PEFT) model inside a LightningModule: the submodule ``attr`` names,
    else the submodule (or ``module`` itself) with ``save_pretrained`` and a ``config``, wherever it lives (among
    several, the one that trains: `find_model`).

    Raises:
        ValueError: if there is none, ``attr`` names no submodule, or several train.
    """
    return find_model(
        module,
        lambda sub: callable(getattr(sub, "save_pretrained", None)) and hasattr(sub, "config"),
        attr,
        "transformers model (a submodule with save_pretrained and a config)",
    )


def relative_masks(masks: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The masks of the parameters under ``prefix``, named inside that submodule."""
    if not prefix:
        return dict(masks)
    return {f[len(prefix) + 1 :]: m for f, m in masks.items() if f.startswith(prefix + ".")}


def published_units(units: dict[str, dict[str, Any]], prefix: str) -> dict[str, Units]:
    """``{path inside the model at prefix: the units every writer keeps there}`` of the units published in a registry
    (``registry.units``) for models at or under ``prefix``; units of models elsewhere are left out."""
    out = {}
    for where in sorted({u.get("prefix", "") for u in units.values()}):
        if where == prefix or not prefix:
            path = where if not prefix else ""
        elif where.startswith(prefix + "."):
            path = where[len(prefix) + 1 :]
        else:
            continue
        out[path] = combine_units(units, where)
    return out


class ExportPretrained(Callback):
    """Make the masks permanent and ``save_pretrained`` the LightningModule's ``transformers`` model into
    ``directory``.

    The model is found wherever it lives in the LightningModule (``self.model``, ``self.net``, …; ``attr`` names it
    when there are several), and the masks are every writer's, read from the model's
    `MaskRegistry`. Where writers ([`NeuronPruning`][lightning_prune.NeuronPruning],
    [`StructuredPruning`][lightning_prune.StructuredPruning]) published removed units in the registry
    (``registry.units``), a copy of the model with the units every writer removed physically cut out (smaller layers,
    fewer heads, blocks, features or experts; the config updated) is saved instead, and ``export.json`` says what was
    removed where (``removed``) and the parameter count before and after; the trained model itself keeps its shapes.
    A PEFT
    model (LoRA …) is merged on a copy first ([`merge_adapters`][lightning_prune.merge_adapters]): the export is a plain
    ``transformers`` model exactly as sparse as the pruned base weights.

    With ``verify`` the directory is reloaded with the class named in its saved config (``architectures``, e.g.
    ``GPT2LMHeadModel`` or ``BertModel``; ``AutoModel`` when the config names none) and its main output on a random
    batch compared with the exported model's: the logits when the model has them (``max_logit_difference`` in
    ``export.json``), else the last hidden state of an encoder (``max_hidden_state_difference``).

    The tokenizer the model was trained with (``tokenizer``, else the data module's ``tokenizer``) is saved beside
    it as a ``transformers`` tokenizer, so ``AutoTokenizer.from_pretrained(directory)`` and
    ``pipeline("text-generation", model=directory)`` work offline. With ``verify`` the saved tokenizer is reloaded
    and its ids on the start of the data module's validation text compared with the training ids
    (``tokenizer_matches_training`` in ``export.json``; a mismatch also warns).

    It prints one short summary (`export_summary`: the directory, the shape before → after, the parameters
    before → after and the reload check); the full detail (every removed unit) stays in ``export.json``.

    Args:
        directory: target directory (created); default ``pruned_model`` in the run's own folder (the logger's
            ``log_dir``, e.g. ``runs/main/tensorboard/version_N/pruned_model``, else ``trainer.default_root_dir``),
            so a second run never overwrites the first's export.
        verify: reload and compare outputs (and the tokenizer's ids) after saving.
        tokenizer: the training tokenizer; default ``trainer.datamodule.tokenizer`` when there is one.
        attr: the attribute path of the model in the LightningModule (default: found).
        tolerance: with ``verify``, the largest difference of the reloaded model's main output from the trained
            model's, as a fraction of the trained output's standard deviation (hidden features removed under RMS norms
            are exact up to the norms' epsilon: well inside the default); beyond it, or when a few greedy tokens
            (with the cache) differ, the export raises a ``ValueError`` after writing ``export.json`` (a warning
            where experts were removed: approximate by design). ``export.json`` records ``relative_difference``,
            ``greedy_tokens_match`` and ``reload_exact``.

    Raises:
        ValueError: for a tolerance outside (0, 1); at the end of fitting, for an export that computes another model
            than the trained one (see ``tolerance``).
    """

    def __init__(
        self,
        directory: str | None = None,
        verify: bool = True,
        tokenizer: Any = None,
        attr: str | None = None,
        tolerance: float = 0.01,
    ) -> None:
        if not 0.0 < tolerance < 1.0:
            raise ValueError(f"tolerance is a fraction of the logits' standard deviation in (0, 1), got {tolerance!r}.")
        self.directory, self.verify, self.tokenizer, self.attr = directory, verify, tokenizer, attr
        self.tolerance = tolerance
        self._directory: str | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":  # on every process: the run's folder is broadcast from process 0
            self._directory = self.directory or str(run_directory(trainer) / "pruned_model")
        if stage == "fit" and self.attr is not None:
            find_pretrained(pl_module, self.attr)  # a wrong attr is an error now, not after training

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        discard_unused_run(trainer)

    @override
    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        prefix, model = find_pretrained(pl_module, self.attr)
        registry = registry_of(pl_module)
        masks = relative_masks(registry.keep, prefix)
        units = published_units(registry.units, prefix)
        directory = self._directory or self.directory or str(Path(trainer.default_root_dir) / "pruned_model")
        before = _shape(model)
        datamodule = getattr(trainer, "datamodule", None)
        tokenizer = self.tokenizer if self.tokenizer is not None else getattr(datamodule, "tokenizer", None)
        if is_peft_model(model):
            model, masks = merge_adapters(copy.deepcopy(model), masks)
        if units:
            make_permanent_(model, masks)
            dense = nonzero_report(model)["parameters"]
            shrunk = copy.deepcopy(model)
            for path, kept in units.items():
                shrink_units_(_inside(shrunk, path), kept)
            report = {**export_pretrained(shrunk, directory, tokenizer=tokenizer), "parameters_before_shrink": dense}
            report["removed"] = {path or "model": kept.report() for path, kept in units.items()}
            after = _shape(shrunk)
            del shrunk
        else:
            report = export_pretrained(model, directory, masks, tokenizer=tokenizer)
            after = before
        if self.verify:
            check = reload_check(model, directory, epsilon_check=self.tolerance)
            report.update(check.report(self.tolerance))
            sample = (getattr(datamodule, "val_text", None) or "")[:_TOKENIZER_CHECK_CHARS]
            if tokenizer is not None and sample:
                matches = tokenizer_matches(tokenizer, directory, sample)
                report["tokenizer_matches_training"] = matches
                if not matches:
                    warnings.warn(
                        f"the tokenizer saved in {directory} encodes the validation text differently from training.",
                        stacklevel=2,
                    )
        Path(directory, "export.json").write_text(json.dumps(report, indent=2))
        say(trainer, export_summary(report, before, after))
        if self.verify and not report["reload_exact"]:
            approximate = [d for d in ("experts",) if any(getattr(u, d) is not None for u in units.values())]
            message = (
                f"the export in {directory} computes another model than the trained one: its {check.name} differ by "
                f"{check.relative:.3g} of their standard deviation ({check.without_epsilon or check.relative:.3g} with "
                f"the norms' epsilons set aside; tolerance {self.tolerance}), greedy tokens "
                f"{'agree' if check.greedy_match else 'differ'}; the figures are in its export.json."
            )
            if approximate:  # held at zero while training, a removed expert still takes a share of the routing
                warnings.warn(message + f" Removing {approximate} is approximate by design.", stacklevel=2)
            else:
                raise ValueError(message + " Report the model and the dimensions removed.")


def _shape(model: nn.Module) -> dict[str, Any]:
    """The config's integer sizes (layers, widths, heads …) of a ``transformers`` model: what a shrink changes."""
    config = getattr(model, "config", None)
    values = config.to_dict() if hasattr(config, "to_dict") else {}
    return {k: v for k, v in values.items() if isinstance(v, int) and not isinstance(v, bool)}


def export_summary(report: dict[str, Any], before: dict[str, Any], after: dict[str, Any]) -> str:
    """One line of what an export did: where, the config sizes that changed (``n_inner 512 → 256``), the parameters
    (and non-zero parameters) before → after, and the reload check when there is one."""
    changed = [f"{k} {before[k]} → {after[k]}" for k in before if k in after and before[k] != after[k]]
    shape = ", ".join(changed) if changed else "shape unchanged"
    total = report.get("parameters_before_shrink", report["parameters"])
    params = f"params {total:,} → {report['parameters']:,} ({report['nonzero']:,} non-zero)"
    checks = []
    for name in ("max_logit_difference", "max_hidden_state_difference"):
        if name in report:
            what = name.removeprefix("max_").removesuffix("_difference").replace("_", " ") + "s"
            verdict = {True: "exact", False: "NOT exact", None: "done"}[report.get("reload_exact")]
            greedy = {True: ", greedy same", False: ", greedy DIFFERS", None: ""}[report.get("greedy_tokens_match")]
            checks.append(f"reload {verdict} ({what} {report[name]:.3g} apart{greedy})")
    if "tokenizer_matches_training" in report:
        checks.append(f"tokenizer {'matches' if report['tokenizer_matches_training'] else 'DIFFERS from'} training")
    return f"exported to {report['directory']}: " + "; ".join([shape, params, *checks]) + "; see export.json"


def _inside(model: nn.Module, path: str) -> nn.Module:
    """The submodule at ``path`` (``model`` itself for ``""``, or where a merged copy no longer has that path)."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        return model


_TOKENIZER_CHECK_CHARS = 20_000  # characters of validation text encoded by both tokenizers


def tokenizer_matches(tokenizer: Any, directory: str | Path, text: str) -> bool:
    """Whether ``AutoTokenizer.from_pretrained(directory)`` gives ``text`` the ids training gave it."""
    import transformers

    saved = transformers.AutoTokenizer.from_pretrained(directory)
    saved.model_max_length = len(text) + 1  # the whole text at once, without the warning about the model's context
    expected = encode_corpus(build_tokenizer(tokenizer, ""), text).tolist()
    return list(saved.encode(text, add_special_tokens=False)) == expected


def reload_class(directory: str | Path) -> type:
    """The ``transformers`` class that reloads ``directory``: the one its config names, else ``AutoModel``.

    Raises:
        ValueError: if the config names a class that ``transformers`` does not have.
    """
    import transformers

    config = transformers.AutoConfig.from_pretrained(directory)
    names = getattr(config, "architectures", None) or []
    if not names:
        return transformers.AutoModel
    cls = getattr(transformers, names[0], None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise ValueError(
            f"{directory}/config.json names architecture {names[0]!r}, which this transformers "
            f"{transformers.__version__} does not have; upgrade transformers or fix 'architectures' in the config."
        )
    return cls


def _main_output(output: Any) -> tuple[str, torch.Tensor]:
    """``("logits", tensor)`` when the output has logits, else ``("last_hidden_state", tensor)``."""
    for name in ("logits", "last_hidden_state"):
        value = getattr(output, name, None)
        if value is not None:
            return name, value
    raise TypeError(
        f"cannot verify the export: the model's output {type(output).__name__} has neither logits nor "
        f"last_hidden_state; pass verify=False to ExportPretrained."
    )


@dataclass
class ReloadCheck:
    """The reloaded export beside the trained model on the same batch: the main output's largest difference,
    relative to the trained output's standard deviation, and whether a few greedy tokens with the cache agree."""

    name: str  # "logits" or "last_hidden_state"
    difference: float  # largest absolute difference
    relative: float  # difference / std of the trained model's output
    greedy_match: bool | None  # greedy continuations (with the cache) equal; None: not a generating model
    without_epsilon: float | None = None  # the relative difference with the norms' epsilons set aside (if compared)

    def report(self, tolerance: float) -> dict[str, Any]:
        """The figures for ``export.json`` (``reload_exact``: within ``tolerance``, or within it once the norms'
        epsilons are set aside — a norm over zeroed features is exact up to its epsilon — and the same greedy
        tokens where they are compared with the epsilons kept)."""
        close = self.relative <= tolerance or (self.without_epsilon is not None and self.without_epsilon <= tolerance)
        greedy = self.greedy_match is not False or self.relative > tolerance
        key = f"max_{'logit' if self.name == 'logits' else 'hidden_state'}_difference"
        return {
            key: self.difference,
            "relative_difference": self.relative,
            "relative_difference_without_epsilon": self.without_epsilon,
            "greedy_tokens_match": self.greedy_match,
            "reload_tolerance": tolerance,
            "reload_exact": close and greedy,
        }


_EPS = ("eps", "variance_epsilon", "epsilon")


@torch.no_grad()
def reload_check(
    model: torch.nn.Module, directory: str | Path, new_tokens: int = 8, epsilon_check: float = 0.0
) -> ReloadCheck:
    """Reload ``directory`` (see `reload_class`), compare its main output with ``model``'s on a seeded batch and, for a
    causal LM, its greedy continuation of a few tokens with the cache; beyond ``epsilon_check`` (relative), compare
    again with the norms' epsilons set aside (``without_epsilon``)."""
    reloaded = reload_class(directory).from_pretrained(directory).eval()
    config = reloaded.config
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 16
    length = min(16, context)
    ids = torch.randint(0, config.vocab_size, (2, length), generator=torch.Generator().manual_seed(0))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        name, ref = _main_output(model(input_ids=ids.to(device)))
        got = _main_output(reloaded(input_ids=ids))[1]
        greedy = None
        steps = min(new_tokens, context - length // 2)
        if name == "logits" and hasattr(reloaded, "generate") and steps > 0:
            prompt = ids[:, : length // 2]
            kwargs = dict(max_new_tokens=steps, do_sample=False, use_cache=True, pad_token_id=0)
            try:
                mine = model.generate(input_ids=prompt.to(device), **kwargs).cpu()
                theirs = reloaded.generate(input_ids=prompt, **kwargs)
                greedy = bool(torch.equal(mine, theirs))
            except (TypeError, ValueError, AttributeError, NotImplementedError):  # not a generating model
                greedy = None
    finally:
        model.train(was_training)
    difference = float((got.float() - ref.float().cpu()).abs().max())
    scale = float(ref.float().std()) or 1.0
    check = ReloadCheck(name, difference, difference / scale, greedy)
    if check.relative > epsilon_check and any(
        isinstance(getattr(m, n, None), float) for m in model.modules() for n in _EPS
    ):
        # a norm over zeroed features is exact up to its epsilon: compare again with the epsilons set aside
        mine, theirs = without_epsilon_(copy.deepcopy(model).eval()), without_epsilon_(reloaded)
        ref = _main_output(mine(input_ids=ids.to(device)))[1].float().cpu()
        got = _main_output(theirs(input_ids=ids))[1].float()
        check.without_epsilon = float((got - ref).abs().max()) / (float(ref.std()) or 1.0)
    return check


@torch.no_grad()
def reload_difference(model: torch.nn.Module, directory: str | Path) -> tuple[str, float]:
    """Reload ``directory`` (see `reload_class`) and compare its main output with ``model``'s on a random batch.

    Returns:
        ``(name, difference)``: the output compared (``"logits"``, or ``"last_hidden_state"`` for an encoder without
        a head) and the largest absolute difference.
    """
    reloaded = reload_class(directory).from_pretrained(directory).eval()
    config = reloaded.config
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 16
    ids = torch.randint(0, config.vocab_size, (2, min(16, context)), generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    try:
        name, ref = _main_output(model(input_ids=ids.to(next(model.parameters()).device)))
    finally:
        model.train(was_training)
    got = _main_output(reloaded(input_ids=ids))[1]
    return name, float((got.float() - ref.float().cpu()).abs().max())

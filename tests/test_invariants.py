"""Invariants over composed configurations, drawn by hypothesis.

Each draw composes a model and its parameters (MultiheadAttention + MLP with norms, a transformers GPT-2 with a tied
head, a PEFT/LoRA Llama; frozen, shared or 1-D parameters), a criterion, scope, pattern and bounds (cap, layer
spread), a schedule in epochs or steps, other writers (NeuronPruning), a precision, an optimizer (AdamW, SGD with
momentum, fused AdamW), gradient accumulation, the statistics' dtype, weight averaging, and a lifecycle point (a
plain fit, a resume after any epoch, a second fit, ``validate`` with ``ckpt_path`` before and after fit). Every
draw checks the same invariants:

- a configuration that cannot work is refused before the first optimizer step, with a message that says what to do;
- pruned entries are exactly zero after every step, in the weights and the optimizer state, and in checkpoints;
- the count is exact: round(target · N) for the unstructured patterns (other writers' zeros counted once), exactly
  the N:M count in every group, whole rows for the row pattern;
- nothing non-finite is introduced;
- ``validate`` changes neither weights nor callback state, with or without ``ckpt_path``;
- a resumed run ends bit for bit where the uninterrupted one does (weights, masks, statistics).

The draws are derandomized (a fixed seed). ``LIGHTNING_PRUNE_DRAWS`` sets their number (CI: 60); a larger value is
the long profile, e.g. ``LIGHTNING_PRUNE_DRAWS=300 python -m pytest tests/test_invariants.py``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import lightning.pytorch as pl
import pytest
import torch
from helpers import TinyLM, drawn, token_loader, trainer
from hypothesis import event, given, settings
from hypothesis import strategies as st
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint
from test_neurons import CFG, _loader
from test_resume import StopAfter
from torch import nn

from lightning_prune import AtEpochs, Cubic, ImportanceTracking, NeuronPruning, ScheduledPruning
from lightning_prune._registry import registry_of
from lightning_prune.lm import CausalLM

DRAWS = int(os.environ.get("LIGHTNING_PRUNE_DRAWS", "60"))
GRADIENT = ("taylor", "platon", "movement", "gradient")
EPOCHS, BATCHES = 4, 4  # batches per epoch


@dataclass(frozen=True)
class Draw:
    model: str  # "tiny" (MultiheadAttention + MLP), "gpt2" (transformers, tied head), "lora" (PEFT Llama)
    kind: (
        str  # parameters: "default", "frozen" (a frozen block, default selection), "frozen_named", "shared", "with_1d"
    )
    criterion: str
    scope: str
    pattern: str
    bound: str  # "none", "cap", "spread"
    target: float
    unit: str  # schedule in "epoch" or "step"
    neurons: bool  # NeuronPruning beside (GPT-2)
    precision: str
    optimizer: str  # "adamw", "sgd", "fused"
    accumulate: int
    stats_dtype: str
    averaging: bool  # EMAWeightAveraging beside
    lifecycle: str  # "plain", "resume", "second_fit", "validate"
    stop_after: int  # the interrupted run of "resume" stops after this epoch


@st.composite
def draws(draw: st.DrawFn) -> Draw:
    model = draw(st.sampled_from(["tiny", "tiny", "gpt2", "gpt2", "lora"]))
    kinds = ["default", "frozen", "frozen_named", "shared", "with_1d"] if model == "tiny" else ["default"]
    lifecycle = draw(st.sampled_from(["plain", "resume", "second_fit", "validate"]))
    return Draw(
        model=model,
        kind=draw(st.sampled_from(kinds)),
        criterion=draw(
            st.sampled_from(["magnitude", "running_magnitude", "taylor", "platon", "wanda", "movement", "random"])
        ),
        scope=draw(st.sampled_from(["global", "global", "global", "layer", "output"])),
        pattern=draw(st.sampled_from(["unstructured", "unstructured", "unstructured", "2:4", "row"])),
        bound=draw(st.sampled_from(["none", "none", "cap", "spread"])),
        target=draw(st.sampled_from([0.3, 0.45, 0.5, 0.6, 0.75])),
        unit=draw(st.sampled_from(["epoch", "step"])),
        neurons=model == "gpt2" and draw(st.booleans()),
        precision=draw(st.sampled_from(["32-true", "32-true", "bf16-mixed", "bf16-true", "16-true"])),
        optimizer=draw(st.sampled_from(["adamw", "sgd", "fused"])),
        accumulate=draw(st.sampled_from([1, 2])),
        stats_dtype=draw(st.sampled_from(["float32", "bfloat16"])),
        averaging=lifecycle in ("plain", "validate") and draw(st.booleans()),
        lifecycle=lifecycle,
        stop_after=draw(st.integers(0, 2)),
    )


# ---- models and parameters as users have them ---------------------------------------------------------------


def _optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    params = list(params)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=0.01)
    eps = 1e-4 if params[0].dtype == torch.float16 else 1e-8  # float16 weights: an eps that float16 can hold
    return torch.optim.AdamW(params, lr=lr, eps=eps, weight_decay=0.1, fused=name == "fused")


class Tiny(TinyLM):
    def __init__(self, kind: str, optimizer: str) -> None:
        super().__init__(optimizer=optimizer)
        if kind in ("frozen", "frozen_named"):
            self.blocks[0].requires_grad_(False)
        if kind == "shared":
            self.blocks[1].fc1.weight = self.blocks[0].fc1.weight

    def configure_optimizers(self):
        return _optimizer(self.optimizer, [p for p in self.parameters() if p.requires_grad], self.lr)

    def test_step(self, batch, batch_idx):
        return self.validation_step(batch, batch_idx)


class LM(CausalLM):
    def __init__(self, optimizer: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.optimizer = optimizer

    def configure_optimizers(self):
        return _optimizer(self.optimizer, [p for p in self.parameters() if p.requires_grad], 1e-2)

    def test_step(self, batch, batch_idx):
        self.log("test/loss", self(batch["input_ids"], batch["labels"]).loss)


def _gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = {k: v for k, v in CFG.items() if k != "warmup_steps"}
    config = GPT2Config(**cfg, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # no dropout: resumes replay exactly
    return GPT2LMHeadModel(config)


def _lora() -> nn.Module:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        num_hidden_layers=2,
        hidden_size=16,
        intermediate_size=32,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=32,
        max_position_embeddings=16,
    )
    return get_peft_model(LlamaForCausalLM(config), LoraConfig(r=2, target_modules=["q_proj", "v_proj", "up_proj"]))


def _model(d: Draw) -> pl.LightningModule:
    pl.seed_everything(0, verbose=False)
    if d.model == "tiny":
        return Tiny(d.kind, d.optimizer)
    return LM(d.optimizer, model=_gpt2() if d.model == "gpt2" else _lora())


def _data(d: Draw):
    return token_loader(n=4 * 8, batch_size=8) if d.model == "tiny" else _loader(n=4 * 4)


# ---- the callbacks a draw composes ----------------------------------------------------------------------------


def _schedule(d: Draw):
    if d.unit == "epoch":
        return AtEpochs({1: round(d.target / 2, 3), 2: d.target})
    per_epoch = BATCHES // d.accumulate
    return Cubic(d.target, start=per_epoch, end=2 * per_epoch, every=max(1, per_epoch // 2))


def _selection(d: Draw) -> dict:
    if d.kind == "frozen_named":
        return {"parameters": ["*.fc1.weight", "*.fc2.weight"]}  # names the frozen block's weights too
    if d.kind == "with_1d":
        return {"parameters": ["*.fc1.weight", "*.fc1.bias", "*.fc2.weight"]}
    return {}


def _callbacks(d: Draw) -> list[pl.Callback]:
    bound = {"cap": {"max_layer_sparsity": min(0.95, d.target + 0.15)}, "spread": {"layer_spread": 0.1}}
    pruning = ScheduledPruning(
        _schedule(d), d.criterion, d.scope, d.pattern, **bound.get(d.bound, {}), **_selection(d), log_histograms=False
    )
    callbacks = [ImportanceTracking(dtype=d.stats_dtype), pruning]
    if d.neurons:
        callbacks.insert(1, NeuronPruning(AtEpochs({1: 0.25}), "activation"))
    if d.averaging:
        callbacks.insert(0, EMAWeightAveraging(decay=0.5))
    return callbacks


def _refusal(d: Draw) -> str | None:
    """Why a draw cannot work (it must be refused before training), or None."""
    if d.pattern == "2:4" and d.target > 0.5:
        return "allows at most"
    if d.scope == "output" and d.pattern != "unstructured":
        return "use it with pattern 'unstructured'"
    if d.bound == "spread" and (d.scope != "global" or d.pattern != "unstructured"):
        return "layer_spread must be in"
    if d.criterion in GRADIENT and (d.kind == "frozen_named" or d.model == "lora"):
        return "frozen"
    if d.kind == "with_1d" and (d.pattern != "unstructured" or d.scope == "output"):
        return "not 2-D"
    if d.criterion == "wanda" and d.kind == "with_1d":
        return "not such a weight"
    if d.criterion == "wanda" and d.model == "tiny" and d.kind != "frozen_named":
        return "read by nn.MultiheadAttention"
    return None


def _trainer(d: Draw, callbacks, **kwargs) -> pl.Trainer:
    kwargs.setdefault("max_epochs", EPOCHS)
    return trainer(callbacks=callbacks, precision=d.precision, accumulate_grad_batches=d.accumulate, **kwargs)


# ---- what every draw checks ------------------------------------------------------------------------------------


class Watch(pl.Callback):
    """After every batch: pruned entries exactly zero in the weights and the optimizer state; all finite."""

    def __init__(self) -> None:
        self.checked = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        registry = registry_of(pl_module)
        states = [o.state for o in trainer.optimizers]
        for fqn, keep in registry.keep.items():
            param = registry.params[fqn]
            assert torch.all(param.detach()[~keep] == 0), fqn
            for state in states:
                for value in state.get(param, {}).values():
                    if isinstance(value, torch.Tensor) and value.shape == keep.shape:
                        assert torch.all(value[~keep] == 0), fqn
            self.checked += 1


def _finite(d: Draw, model: nn.Module) -> None:
    """Nothing non-finite introduced: a non-finite weight is allowed only if the same run without pruning has one too
    (e.g. AdamW's eps underflowing in float16: the user's arithmetic, not the masks')."""
    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        dense = _model(d)
        pl.seed_everything(0, verbose=False)
        _trainer(d, []).fit(dense, _data(d))
        assert any(not bool(torch.isfinite(p).all()) for p in dense.parameters()), bad[:3]


def _check_counts(d: Draw, pruning: ScheduledPruning, model: nn.Module) -> None:
    registry = registry_of(model)
    params = registry.params
    fqns = list(pruning.masks)
    assert fqns and pruning.sparsity == d.target
    total = sum(params[f].numel() for f in fqns)
    union = sum(int((~registry.keep[f]).sum()) for f in fqns)
    zeros = sum(int((params[f] == 0).sum()) for f in fqns)
    assert zeros >= union  # every pruned entry is a zero
    if d.pattern == "unstructured" and not (d.scope == "output" and d.neurons):
        assert union == round(d.target * total), (union, round(d.target * total))
    elif d.pattern == "2:4":
        want = min(round(d.target * 4), 2)
        for f, keep in pruning.masks.items():  # this writer's own mask: exactly `want` of every group of 4
            groups = (~keep).movedim(pruning._in_dims[f], -1).reshape(-1, 4).sum(1)
            assert torch.all(groups == want), f
    elif d.pattern == "row":
        for f, keep in pruning.masks.items():  # whole output rows
            rows = keep.movedim(1 - pruning._in_dims[f], 0).flatten(1)
            assert torch.all(rows.all(1) | (~rows).all(1)), f
    if d.bound == "spread" and not d.neurons:
        for f in fqns:
            pruned, n = int((~registry.keep[f]).sum()), params[f].numel()
            assert math.floor((d.target - 0.1) * n) <= pruned <= math.ceil((d.target + 0.1) * n), f


def _checkpoint_holds_zeros(path, pruning: ScheduledPruning) -> None:
    ckpt = torch.load(path, weights_only=False)
    state = ckpt["callbacks"][pruning.state_key]
    from lightning_prune.callbacks.pruning import masks_in_state

    masks = masks_in_state(state, {f: tuple(s) for f, s in state["shapes"].items()})
    for weights in (ckpt["state_dict"], ckpt.get("current_model_state", {})):  # (averaged and trained weights)
        for f, keep in masks.items():
            assert f not in weights or torch.all(weights[f][~keep] == 0), f


def _states(callbacks) -> list[dict]:
    return [cb.state_dict() for cb in callbacks if isinstance(cb, (ImportanceTracking, ScheduledPruning))]


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


# ---- lifecycle points -----------------------------------------------------------------------------------------


def _fit(d: Draw, tmp_path, stop_after=None, ckpt_path=None, model=None, callbacks=None):
    model = model if model is not None else _model(d)
    callbacks = callbacks if callbacks is not None else _callbacks(d)
    watch = Watch()
    save = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1, save_last=True)
    extra = [StopAfter(stop_after)] if stop_after is not None else []
    t = _trainer(d, [*callbacks, watch, save, *extra], enable_checkpointing=True)
    pl.seed_everything(0, verbose=False)
    t.fit(model, _data(d), ckpt_path=ckpt_path)
    return t, model, callbacks, watch


def _pruning(callbacks) -> ScheduledPruning:
    return next(cb for cb in callbacks if isinstance(cb, ScheduledPruning))


def _tracking(callbacks) -> ImportanceTracking:
    return next(cb for cb in callbacks if isinstance(cb, ImportanceTracking))


def _run(d: Draw, tmp_path) -> None:
    t, model, callbacks, watch = _fit(d, tmp_path / "a")
    pruning = _pruning(callbacks)
    assert watch.checked > 0
    _check_counts(d, pruning, model)
    _finite(d, model)
    _checkpoint_holds_zeros(tmp_path / "a" / "last.ckpt", pruning)
    if d.lifecycle == "resume":
        _fit(d, tmp_path / "b", stop_after=d.stop_after)
        _, resumed, again, _ = _fit(d, tmp_path / "c", ckpt_path=tmp_path / "b" / "last.ckpt")
        for (name, a), (_, b) in zip(model.state_dict().items(), resumed.state_dict().items()):
            assert torch.equal(a, b), name
        assert _same(_states(callbacks), _states(again))
    elif d.lifecycle == "second_fit":
        masks = {f: m.clone() for f, m in pruning.masks.items()}
        steps = _tracking(callbacks).stats.steps
        _fit(d, tmp_path / "d", model=model, callbacks=callbacks)
        assert _tracking(callbacks).stats.steps == 2 * steps  # continued
        assert all(torch.equal(pruning.masks[f], masks[f]) for f in masks)  # nothing pruned twice, nothing freed
        _check_counts(d, pruning, model)
    elif d.lifecycle == "validate":
        before = _states(callbacks)
        early = tmp_path / "a" / "epoch=0.ckpt"
        t.validate(model, _data(d), ckpt_path=early, verbose=False)
        ckpt = torch.load(early, weights_only=False)
        saved = ckpt.get("current_model_state", ckpt["state_dict"])  # weight averaging keeps the trained weights aside
        for name, value in model.state_dict().items():
            assert torch.equal(value, saved[name].to(value.dtype)), name
        assert _same(before, _states(callbacks))
        weights = {n: v.clone() for n, v in model.state_dict().items()}
        t.test(model, _data(d), verbose=False)  # and test without ckpt_path: nothing changes either
        assert all(torch.equal(v, weights[n]) for n, v in model.state_dict().items())
        assert _same(before, _states(callbacks))
        fresh, new = _model(d), _callbacks(d)
        _trainer(d, new).validate(fresh, _data(d), ckpt_path=early, verbose=False)  # before any fit
        for n, v in fresh.state_dict().items():  # as Lightning loads it (an averaged copy may be kept in float32)
            assert torch.equal(v, ckpt["state_dict"][n].to(v.dtype)), n
        assert _same(_states(new), _states(_callbacks(d)))


@drawn(DRAWS)
@given(d=draws())
def test_every_composed_configuration_keeps_the_invariants(d: Draw, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("draw")
    why = _refusal(d)
    event("refused" if why else f"ran: {d.lifecycle}")
    if why is None:
        _run(d, tmp_path)
        return
    steps = []

    class Count(pl.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            steps.append(trainer.global_step)

    with pytest.raises(ValueError, match=why):
        callbacks = _callbacks(d)
        _trainer(d, [*callbacks, Count()]).fit(_model(d), _data(d))
    assert not steps  # refused before any training


def test_the_draws_cover_every_axis():
    """The CI profile's draws reach every value of every axis at least once across a larger sample."""
    seen: dict[str, set] = {}

    @settings(max_examples=300, derandomize=True, database=None, deadline=None)
    @given(d=draws())
    def collect(d: Draw) -> None:
        for field, value in vars(d).items():
            seen.setdefault(field, set()).add(value)

    collect()
    assert seen["precision"] == {"32-true", "bf16-mixed", "bf16-true", "16-true"}
    assert seen["lifecycle"] == {"plain", "resume", "second_fit", "validate"}
    assert {"tiny", "gpt2", "lora"} <= seen["model"] and {True, False} == seen["neurons"]
    assert seen["kind"] == {"default", "frozen", "frozen_named", "shared", "with_1d"}

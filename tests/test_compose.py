"""Writers combined: what one removes the others read, a shrink renames every record, recovery reads every writer's
checkpoint state, and what cannot work is refused at setup."""

import json

import lightning.pytorch as pl
import pytest
import torch
from helpers import trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from test_structure_core import gpt2, llama
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM

from lightning_prune import (
    AtSteps,
    Cubic,
    ExportPretrained,
    FineTune,
    HoldMasks,
    NeuronPruning,
    ScheduledPruning,
    SizeTarget,
    StructuredPruning,
)
from lightning_prune._registry import registry_of
from lightning_prune.finetune import masks_from_checkpoint
from lightning_prune.lm import CausalLM
from lightning_prune.structured import SizeModel


def _loader(n=24, seed=0, vocab=32):
    ids = torch.randint(0, vocab, (n, 16), generator=torch.Generator().manual_seed(seed))
    return DataLoader([{"input_ids": x, "labels": x} for x in ids], batch_size=4)


def _zeros(module, fqn):
    return float((dict(module.named_parameters())[fqn] == 0).float().mean())


def test_a_shrink_renames_every_writers_masks_so_a_kept_block_keeps_its_own():
    pl.seed_everything(0, verbose=False)
    module = CausalLM(model=llama(num_hidden_layers=3, intermediate_size=32), warmup_steps=2)
    size = SizeModel.from_model(module.model)
    two_blocks = size.params(size.full.__class__(**{**size.full.__dict__, "layers": (True, False, True)}))
    weights = ScheduledPruning(AtSteps({2: 0.1}), "magnitude", scope="layer")
    layers = StructuredPruning(SizeTarget(params=two_blocks), AtSteps({3: 1.0}), dims=("layers",), loss_batches=0)
    trainer(max_steps=5, callbacks=[weights, layers]).fit(module, _loader())
    removed = [i for i, keep in enumerate(layers.units.layers.tolist()) if not keep]
    assert len(removed) == 1
    last = "model.model.layers.2.mlp.down_proj.weight"
    before = _zeros(module, last)
    assert 0.05 < before < 0.2
    layers.shrink_()
    registry = registry_of(module)
    moved = f"model.model.layers.{2 - 1}.mlp.down_proj.weight" if removed[0] < 2 else last
    # the mask that now sits under the kept block's new name is that block's own
    assert float((~registry.keep[moved]).float().mean()) == pytest.approx(before)
    trainer(max_steps=2, callbacks=[HoldMasks(masks=dict(registry.keep))]).fit(module, _loader())
    assert _zeros(module, moved) == pytest.approx(before)


@pytest.mark.parametrize("neurons_first", [True, False], ids=["neurons-first", "structured-first"])
def test_neuron_and_structured_pruning_count_each_others_neurons_and_export(tmp_path, neurons_first):
    pl.seed_everything(0, verbose=False)
    module = CausalLM(model=gpt2(n_embd=16, n_inner=32, n_positions=16, vocab_size=32), warmup_steps=2)
    size = SizeModel.from_model(module.model)
    half = size.params(size.full.__class__(**{**size.full.__dict__, "neurons": 16}))
    at = (2, 3) if neurons_first else (3, 2)
    neurons = NeuronPruning(AtSteps({at[0]: 0.25 if neurons_first else 0.625}), "activation")
    structured = StructuredPruning(SizeTarget(params=half), AtSteps({at[1]: 1.0}), dims=("neurons",), loss_batches=0)
    trainer(max_steps=5, callbacks=[neurons, structured, ExportPretrained(str(tmp_path))]).fit(module, _loader())
    union = [n & s for n, s in zip(neurons.masks, structured.units.neurons)]
    kept = [int(u.sum()) for u in union]
    assert kept == ([16, 16] if neurons_first else [12, 12])  # each counted the other's; one count per block
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.n_inner == kept[0]
    ids = torch.randint(0, 32, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, module.model.eval()(input_ids=ids).logits)


def test_n_m_weights_beside_structured_width_are_refused_at_setup():
    module = CausalLM(model=gpt2(n_embd=16, n_inner=32, n_positions=16, vocab_size=32), warmup_steps=2)
    callbacks = [ScheduledPruning(AtSteps({2: 0.5}), pattern="2:4"), StructuredPruning(0.7, AtSteps({3: 1.0}))]
    with pytest.raises(ValueError, match="2:4.*StructuredPruning|StructuredPruning.*2:4"):
        trainer(max_steps=5, callbacks=callbacks).fit(module, _loader())


def test_a_structured_checkpoint_is_recovered_by_hold_masks_finetune_and_masks_from_checkpoint(tmp_path):
    pl.seed_everything(0, verbose=False)
    module = CausalLM(model=gpt2(n_layer=3, n_embd=16, n_inner=16, n_positions=16, vocab_size=32), warmup_steps=2)
    size = SizeModel.from_model(module.model)
    two = size.params(size.full.__class__(**{**size.full.__dict__, "layers": (True, False, True)}))
    structured = StructuredPruning(SizeTarget(params=two), AtSteps({2: 1.0}), dims=("layers",), loss_batches=0)
    saver = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    trainer(max_steps=4, callbacks=[structured, saver], enable_checkpointing=True).fit(module, _loader())
    gone = int((~structured.units.layers).nonzero()[0])
    bias = f"model.transformer.h.{gone}.mlp.c_proj.bias"
    masks = masks_from_checkpoint(tmp_path / "last.ckpt")
    assert not bool(masks[bias].any())  # the removed block's output bias is held
    again = CausalLM(model=gpt2(n_layer=3, n_embd=16, n_inner=16, n_positions=16, vocab_size=32), warmup_steps=2)
    again.load_state_dict(module.state_dict())
    trainer(max_steps=3, callbacks=[HoldMasks(checkpoint=tmp_path / "last.ckpt")]).fit(again, _loader(seed=1))
    assert _zeros(again, bias) == 1.0
    ft = FineTune(
        checkpoint=str(tmp_path / "last.ckpt"),
        model=gpt2(n_layer=3, n_embd=16, n_inner=16, n_positions=16, vocab_size=32),
        warmup_steps=2,
    )
    trainer(max_steps=3).fit(ft, _loader(seed=1))
    assert _zeros(ft, bias) == 1.0


def test_a_second_shorter_fit_after_the_target_continues():
    pl.seed_everything(0, verbose=False)
    module = CausalLM(model=gpt2(n_embd=16, n_inner=16, n_positions=16, vocab_size=32), warmup_steps=2)
    weights = ScheduledPruning(AtSteps({2: 0.5}), "magnitude")
    structured = StructuredPruning(0.8, AtSteps({3: 1.0}), dims=("neurons",), loss_batches=0)
    trainer(max_steps=5, callbacks=[weights, structured]).fit(module, _loader())
    reached = (weights.sparsity, structured.reached, structured.units.to_dict()["neurons"])
    trainer(max_steps=2, callbacks=[weights, structured]).fit(module, _loader())
    assert (weights.sparsity, structured.reached) == reached[:2]
    assert all(torch.equal(a, b) for a, b in zip(structured.units.neurons, reached[2]))


def test_frozen_lower_layers_with_a_gradient_criterion_are_refused_at_setup():
    model = llama(num_hidden_layers=2)
    model.model.embed_tokens.requires_grad_(False)
    model.model.layers[0].requires_grad_(False)
    module = CausalLM(model=model, warmup_steps=2)
    with pytest.raises(ValueError, match=r"criterion='activation'"):
        trainer(max_steps=5, callbacks=[StructuredPruning(0.7, AtSteps({3: 1.0}))]).fit(module, _loader())


def test_the_cli_dense_reference_drops_every_pruning_callback():
    from lightning_prune import Distillation, ImportanceTracking, PruningReport
    from lightning_prune.cli import without_pruning

    writers = [
        ImportanceTracking(),
        ScheduledPruning(AtSteps({2: 0.5})),
        NeuronPruning(AtSteps({2: 0.5})),
        StructuredPruning(0.5, AtSteps({3: 1.0})),
        HoldMasks(masks={"w": torch.ones(2, dtype=torch.bool)}),
    ]
    kept = [PruningReport(), ExportPretrained("out"), Distillation("copy")]
    assert without_pruning([*writers, *kept]) == kept


def test_a_structured_schedule_may_end_at_the_whole_way():
    assert StructuredPruning(0.5, Cubic(1.0, start=1, end=4)).progress(4) == 1.0
    assert StructuredPruning(0.5, AtSteps({2: 1.0})).progress(2) == 1.0
    with pytest.raises(ValueError, match="would prune every"):
        ScheduledPruning(AtSteps({2: 1.0}))


@pytest.mark.parametrize(
    "targets, dims",
    [(["q_proj", "v_proj"], ("neurons",)), (["q_proj", "o_proj", "up_proj", "down_proj"], ("neurons", "heads"))],
    ids=["attention-adapters", "adapters-on-cut-layers"],
)
def test_lora_models_are_found_through_the_adapter_and_adapters_are_not_counted(tmp_path, targets, dims):
    peft = pytest.importorskip("peft")
    pl.seed_everything(0, verbose=False)
    base = llama(num_hidden_layers=2, intermediate_size=32)
    dense = sum(p.numel() for p in base.parameters())
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=targets, init_lora_weights=False))
    module = CausalLM(model=model, warmup_steps=2)
    structured = StructuredPruning(0.7, AtSteps({3: 1.0}), dims=dims, criterion="activation", loss_batches=0)
    trainer(max_steps=5, callbacks=[structured, ExportPretrained(str(tmp_path))]).fit(module, _loader())
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    n = sum(p.numel() for p in reloaded.parameters())
    assert abs(n / (0.7 * dense) - 1) <= 0.011, (n, dense)  # the base model's size: adapters are merged
    assert json.loads((tmp_path / "export.json").read_text())["removed"]["base_model.model"]["neurons"]
    ids = torch.randint(0, 32, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(input_ids=ids).logits, module.model.eval()(input_ids=ids).logits)

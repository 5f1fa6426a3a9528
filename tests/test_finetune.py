"""FineTune: masks frozen through bf16-mixed fine-tuning and distillation; checkpoint masks; rewinding."""

import lightning.pytorch as pl
import pytest
import torch
from helpers import trainer
from torch.utils.data import DataLoader

from lightning_prune import ScheduledPruning
from lightning_prune.finetune import FineTune, distillation_loss, masks_from_checkpoint
from lightning_prune.lm import CausalLM, warmup_cosine

CFG = dict(vocab_size=32, n_layer=2, n_embd=16, n_head=2, n_positions=16, warmup_steps=2)


def _loader(n=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 32, (n, 16), generator=gen)
    return DataLoader([{"input_ids": x, "labels": x} for x in ids], batch_size=4)


def _random_masks(model, sparsity=0.5):
    gen = torch.Generator().manual_seed(1)
    return {
        f"model.{n}": torch.rand(p.shape, generator=gen) >= sparsity
        for n, p in model.model.named_parameters()
        if n.endswith(("c_fc.weight", "c_proj.weight", "c_attn.weight"))
    }


def test_warmup_cosine_by_formula():
    assert warmup_cosine(0, 10, 110) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 110) == pytest.approx(1.0)
    assert warmup_cosine(60, 10, 110, floor=0.0) == pytest.approx(0.5)
    assert warmup_cosine(110, 10, 110, floor=0.1) == pytest.approx(0.1)


def test_distillation_loss_is_zero_for_equal_logits_and_matches_kl():
    s, t = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    assert distillation_loss(s, s, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    p_t = torch.softmax(t / 2, -1)
    kl = (p_t * (torch.log_softmax(t / 2, -1) - torch.log_softmax(s / 2, -1))).sum(-1).mean() * 4
    assert distillation_loss(s, t, 2.0).item() == pytest.approx(kl.item(), rel=1e-5)


@pytest.mark.parametrize("distill", [0.0, 0.5])
def test_masks_stay_exact_through_bf16_mixed_fine_tuning(distill):
    pl.seed_everything(0, verbose=False)
    dense = CausalLM(**CFG)
    masks = _random_masks(dense)
    ft = FineTune(masks=masks, teacher="copy", distill_weight=distill, model=dense.model, **CFG)
    before = {f: p.detach().clone() for f, p in ft.masked_parameters().items()}
    trainer(max_epochs=2, precision="bf16-mixed").fit(ft, _loader())
    for f, p in ft.masked_parameters().items():
        keep = ft.masks[f]
        assert torch.all(p[~keep] == 0), f
        assert not torch.equal(p[keep], before[f][keep]), f  # the survivors trained
    if distill:
        assert ft.teacher is not None and not any(t is ft.teacher for t in ft.modules())


def test_fine_tune_from_a_checkpoint_of_several_pruning_callbacks_holds_them_all(tmp_path):
    pl.seed_everything(0, verbose=False)
    lm = CausalLM(**CFG)
    mlp = ScheduledPruning({1: 0.5}, parameters=["*mlp*.weight"], name="mlp")
    attn = ScheduledPruning({1: 0.3}, parameters=["*attn*.weight"], name="attn")
    t = trainer(max_epochs=2, callbacks=[mlp, attn])
    t.fit(lm, _loader())
    t.save_checkpoint(tmp_path / "pruned.ckpt")
    masks = masks_from_checkpoint(tmp_path / "pruned.ckpt")
    assert set(masks) == set(mlp.masks) | set(attn.masks)
    assert set(masks_from_checkpoint(tmp_path / "pruned.ckpt", mlp.state_key)) == set(mlp.masks)
    ft = FineTune(checkpoint=str(tmp_path / "pruned.ckpt"), **CFG)
    trainer(max_epochs=1).fit(ft, _loader())
    for fqn, keep in masks.items():
        assert torch.all(ft.masked_parameters()[fqn.removeprefix("model.")][~keep] == 0), fqn


def test_fine_tune_from_a_pruning_checkpoint(tmp_path):
    pl.seed_everything(0, verbose=False)
    lm = CausalLM(**CFG)
    t = trainer(max_epochs=2, callbacks=[ScheduledPruning({1: 0.5})])
    t.fit(lm, _loader())
    t.save_checkpoint(tmp_path / "pruned.ckpt")
    masks = masks_from_checkpoint(tmp_path / "pruned.ckpt")
    ft = FineTune(checkpoint=str(tmp_path / "pruned.ckpt"), **CFG)
    for fqn, keep in masks.items():
        p = ft.masked_parameters()[fqn.removeprefix("model.")]
        assert torch.equal(p.detach(), lm.get_parameter(fqn).detach())  # weights came from the checkpoint
        assert torch.all(p[~keep] == 0)
    trainer(max_epochs=1).fit(ft, _loader())
    for f, p in ft.masked_parameters().items():
        assert torch.all(p[~ft.masks[f]] == 0)


def test_fine_tune_checkpoint_keeps_masks(tmp_path):
    pl.seed_everything(0, verbose=False)
    dense = CausalLM(**CFG)
    ft = FineTune(masks=_random_masks(dense), model=dense.model, **CFG)
    t = trainer(max_epochs=1)
    t.fit(ft, _loader())
    t.save_checkpoint(tmp_path / "ft.ckpt")
    assert set(torch.load(tmp_path / "ft.ckpt", weights_only=False)["masks"]) == set(ft.masks)


def test_rewinding_resets_survivors_to_early_weights():
    pl.seed_everything(0, verbose=False)
    dense = CausalLM(**CFG)
    early = {k: v.clone() for k, v in dense.model.state_dict().items()}
    with torch.no_grad():
        for p in dense.model.parameters():
            p.add_(1.0)
    masks = _random_masks(dense)
    ft = FineTune(masks=masks, model=dense.model, rewind_to=early, **CFG)
    for f, p in ft.masked_parameters().items():
        keep = ft.masks[f]
        assert torch.equal(p[keep], early[f][keep]) and torch.all(p[~keep] == 0)


def test_bad_masks_and_arguments_are_rejected(tmp_path):
    dense = CausalLM(**CFG)
    with pytest.raises(ValueError, match="masks do not fit the model"):
        FineTune(masks={"model.transformer.h.0.mlp.c_fc.weight": torch.ones(3, 3, dtype=torch.bool)}, model=dense.model)
    with pytest.raises(ValueError, match="masks do not fit the model"):
        FineTune(masks={"nope.weight": torch.ones(3, dtype=torch.bool)}, model=dense.model)
    with pytest.raises(ValueError, match="needs masks"):
        FineTune(model=dense.model)
    with pytest.raises(ValueError, match=r"distill_weight must be in \[0, 1\]"):
        FineTune(masks={}, model=dense.model, distill_weight=2.0)
    torch.save({"callbacks": {}, "state_dict": {}}, tmp_path / "empty.ckpt")
    with pytest.raises(KeyError, match="holds no pruning callback's state"):
        masks_from_checkpoint(tmp_path / "empty.ckpt")
    with pytest.raises(KeyError, match="holds no 'ScheduledPruning\\[mine\\]' state"):
        masks_from_checkpoint(tmp_path / "empty.ckpt", "ScheduledPruning[mine]")


def test_distillation_mixes_the_lm_loss_and_the_kl_by_its_weight():
    pl.seed_everything(0, verbose=False)
    dense = CausalLM(**CFG)
    ft = FineTune(masks=_random_masks(dense), teacher="copy", distill_weight=0.25, model=dense.model, **CFG)
    batch = next(iter(_loader()))
    ft.eval()  # no dropout: the two student passes below must agree
    with torch.no_grad():
        loss, logits = ft.loss(batch)
        lm_loss = ft(batch["input_ids"], batch["labels"]).loss
        teacher_logits = ft.teacher(input_ids=batch["input_ids"]).logits
    kd = distillation_loss(logits, teacher_logits, ft.temperature)
    assert kd > 0  # the teacher is the dense copy, the student is masked: they differ
    torch.testing.assert_close(loss, 0.75 * lm_loss + 0.25 * kd)

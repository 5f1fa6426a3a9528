"""Distillation on a user's own LightningModule: the mixed loss against a hand computation, a teacher that never
reaches a checkpoint, and distillation beside weight pruning."""

import math

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers import trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from test_structure_core import gpt2
from torch.utils.data import DataLoader

from lightning_prune import AtSteps, Distillation, ImportanceTracking, ScheduledPruning
from lightning_prune._registry import registry_of


class OwnModule(pl.LightningModule):
    """A user's module: the transformer under ``net``, batches of one id tensor, loss returned in a dict."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def training_step(self, batch, batch_idx):
        (ids,) = batch
        return {"loss": self.net(ids, labels=ids).loss}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader(n=8):
    ids = torch.randint(0, 16, (n, 8), generator=torch.Generator().manual_seed(0))
    return DataLoader([(x,) for x in ids], batch_size=4)


class Losses(Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())


def _by_hand(student, teacher, ids, alpha, t, beta=0.0):
    """(1 − α)·CE + α·T²·mean over tokens of Σ_v p_t (log p_t − log p_s) + β·MSE(last block outputs)."""
    with torch.no_grad():
        s = student(ids, labels=ids, output_hidden_states=True)
        th = teacher(ids, output_hidden_states=True)
        log_ps, log_pt = F.log_softmax(s.logits / t, -1), F.log_softmax(th.logits / t, -1)
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean()
        block = lambda m, x: m.transformer.h[-1](x)  # noqa: E731 - the last block's output, before the final norm
        mse = F.mse_loss(block(student, s.hidden_states[-2]), block(teacher, th.hidden_states[-2]))
    return (1 - alpha) * s.loss.item() + alpha * t * t * kl.item() + beta * mse.item()


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_the_mixed_loss_equals_a_hand_computation(beta):
    torch.manual_seed(0)
    student, teacher = gpt2(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0), gpt2()
    module, losses = OwnModule(student), Losses()
    ids = next(iter(_loader()))[0]
    expected = _by_hand(student.eval(), teacher.eval(), ids, 0.3, 2.0, beta)
    layers = (-1,) if beta else ()
    distill = Distillation(teacher, weight=0.3, temperature=2.0, hidden_weight=beta, hidden_layers=layers)
    hooks = lambda: [len(m._forward_hooks) for model in (student, teacher) for m in model.modules()]  # noqa: E731
    before = hooks()
    trainer(max_steps=1, callbacks=[distill, losses]).fit(module, _loader())
    assert losses.losses[0] == pytest.approx(expected, rel=1e-5)
    assert "training_step" not in module.__dict__  # the module's own step is back after the fit
    assert hooks() == before  # every hook removed


def test_a_copied_teacher_is_frozen_on_the_device_and_never_checkpointed(tmp_path):
    torch.manual_seed(0)
    module = OwnModule(gpt2())
    start = {n: p.clone() for n, p in module.net.named_parameters()}
    distill = Distillation("copy", weight=0.5)
    saver = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    trainer(max_steps=3, callbacks=[distill, saver], enable_checkpointing=True).fit(module, _loader())
    teacher = distill.teacher
    assert all(torch.equal(p, start[n]) for n, p in teacher.named_parameters())  # the model as fit began
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    assert next(teacher.parameters()).device == module.device
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert set(ckpt["state_dict"]) == set(module.state_dict())  # no teacher tensors among the weights
    state = ckpt["callbacks"][distill.state_key]
    assert not any(isinstance(v, torch.Tensor) for v in state.values()) and state["weight"] == 0.5
    assert not any(id(p) in {id(q) for q in teacher.parameters()} for p in module.parameters())


def test_distillation_beside_weight_pruning_holds_the_masks_and_leaves_the_teacher_dense():
    torch.manual_seed(0)
    module, losses = OwnModule(gpt2()), Losses()
    pruning = ScheduledPruning(AtSteps({1: 0.5}), "taylor", log_histograms=False)
    distill = Distillation("copy", weight=0.5)
    trainer(max_steps=4, callbacks=[ImportanceTracking(), pruning, distill, losses]).fit(module, _loader(16))
    registry = registry_of(module)
    params = dict(module.named_parameters())
    assert registry.keep and all(torch.all(params[f][~k] == 0) for f, k in registry.keep.items())
    assert not any(f.startswith("teacher") for f in registry.params) and all(
        f.startswith("net.") for f in pruning.masks
    )
    teacher = dict(distill.teacher.named_parameters())
    assert all(bool((teacher[f.removeprefix("net.")] != 0).all()) for f in pruning.masks)
    assert all(math.isfinite(x) for x in losses.losses)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="weight must be in \\[0, 1\\], got 1.5"):
        Distillation(weight=1.5)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        Distillation(temperature=0)
    with pytest.raises(ValueError, match="hidden_weight \\(>= 0\\) and hidden_layers go together"):
        Distillation(hidden_weight=1.0)
    with pytest.raises(ValueError, match="teacher must be an nn.Module or 'copy'"):
        Distillation(teacher="dense")


def _lm_loader(n=16, seed=0):
    ids = torch.randint(0, 16, (n, 8), generator=torch.Generator().manual_seed(seed))
    return DataLoader([(x,) for x in ids], batch_size=4)


def _fit(module, callbacks, steps):
    trainer(max_steps=steps, callbacks=callbacks).fit(module, _lm_loader())


def test_the_next_token_loss_of_a_pass_is_the_causal_lms_own():
    from lightning_prune.callbacks.distillation import lm_loss

    model = gpt2().eval()
    ids = torch.randint(0, 16, (2, 8), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :3] = -100
    with torch.no_grad():
        out, masked = model(ids, labels=ids), model(ids, labels=labels)
    torch.testing.assert_close(lm_loss(out.logits, {"input_ids": ids}), out.loss)
    torch.testing.assert_close(lm_loss(out.logits, {"input_ids": ids, "labels": labels}), masked.loss)
    assert lm_loss(out.logits[:, 0], {"input_ids": ids}) is None  # not (B, T, V): no loss to compare


def test_a_teacher_worse_than_the_student_on_the_training_batches_is_reported_once():
    pl.seed_everything(0, verbose=False)
    student = OwnModule(gpt2())
    _fit(student, [], 40)  # the student has learned the data; a fresh model has not
    with pytest.warns(
        UserWarning, match=r"teacher's next-token loss .* (\d\.\d{4}) .* above the student's, \d\.\d{4}"
    ) as seen:
        _fit(student, [Distillation(gpt2(), weight=0.5, check_steps=4)], 12)
    assert sum("teacher's next-token loss" in str(w.message) for w in seen) == 1
    assert "corrected=True" in str(next(w.message for w in seen if "teacher's" in str(w.message)))


def test_a_corrected_teacher_trains_on_the_student_batches_and_resumes(tmp_path):
    pl.seed_everything(0, verbose=False)
    student = OwnModule(gpt2())
    distill = Distillation("copy", weight=0.5, corrected=True, teacher_lr=1e-2, check_steps=0)
    saver = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    ids = next(iter(_lm_loader()))[0]
    t = trainer(max_steps=10, callbacks=[distill, saver], enable_checkpointing=True)
    t.fit(student, _lm_loader())
    with torch.no_grad():
        trained = distill.teacher(ids, labels=ids).loss.item()
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)["callbacks"]
    (key,) = [k for k in state if "Distillation" in str(k)]
    assert set(state[key]) >= {"teacher", "optimizer"}  # a trained teacher is part of the run
    assert distill.teacher.training is False and all(p.requires_grad for p in distill.teacher.parameters())
    fresh = Distillation("copy", weight=0.5, corrected=True, teacher_lr=1e-2, check_steps=0)
    resumed = OwnModule(gpt2())
    trainer(max_steps=10, callbacks=[fresh], enable_checkpointing=False).fit(
        resumed, _lm_loader(), ckpt_path=tmp_path / "last.ckpt"
    )
    for (name, a), b in zip(distill.teacher.state_dict().items(), fresh.teacher.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)  # the checkpoint's teacher, not a new copy
    assert trained < math.log(16)  # it learned the batches (below a uniform guess)


def test_before_start_step_the_loss_is_the_students_own():
    def run(callbacks):
        pl.seed_everything(0, verbose=False)
        module = OwnModule(gpt2())
        _fit(module, callbacks, 6)
        return module

    plain, late = run([]), run([Distillation(gpt2(), weight=0.9, start_step=100, check_steps=0)])
    for (name, a), b in zip(plain.state_dict().items(), late.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)

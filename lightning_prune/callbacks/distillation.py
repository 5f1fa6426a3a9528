"""``Distillation``: add a distillation loss from a frozen teacher to any LightningModule's training step."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from lightning_prune.callbacks._console import say
from lightning_prune.callbacks.export import find_pretrained
from lightning_prune.distill import distillation_loss
from lightning_prune.structured.layout import blocks_of

__all__ = ["Distillation", "lm_loss"]


def _first(value: Any) -> Tensor:
    return value[0] if isinstance(value, (tuple, list)) else value


def lm_loss(logits: Tensor, inputs: dict[str, Any]) -> Tensor | None:
    """The next-token loss of ``logits (B, T, V)`` against the pass's ``labels`` (``-100`` ignored), else its
    ``input_ids``, as ``transformers`` causal models compute it; None when the pass has neither."""
    targets = inputs.get("labels")
    targets = inputs.get("input_ids") if targets is None else targets
    if not isinstance(targets, Tensor) or logits.dim() != 3 or targets.shape != logits.shape[:2]:
        return None
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets[:, 1:].flatten(), ignore_index=-100)


def _logits(output: Any) -> Tensor:
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Tensor):
        logits = output
    if logits is None:
        raise TypeError(
            f"Distillation needs the model's logits: its output {type(output).__name__} has no .logits and is no "
            "tensor; pass attr= naming the language model inside the LightningModule."
        )
    return logits


class Distillation(Callback):
    """Mix a distillation loss into the training loss of any LightningModule whose training step calls a language
    model (a ``transformers`` model or any module returning logits).

    A forward hook on the model captures the student's inputs and logits of each training pass (and, for the
    hidden-state loss, the outputs of the chosen blocks). For the fit, the module's ``training_step`` is wrapped
    (an attribute of the instance, removed again at teardown): it runs the original step, runs the frozen teacher on
    the same inputs without gradients, and returns

        loss = (1 − α)·loss + α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) + β·mean_l MSE(h_s,l, h_t,l)

    with [`lightning_prune.finetune.distillation_loss`][lightning_prune.finetune.distillation_loss], α = ``weight``, T =
    ``temperature`` and β = ``hidden_weight`` over the outputs of blocks ``hidden_layers``. The teacher lives on this
    callback, outside the module tree: it is never optimized, selected for pruning, or saved in a checkpoint (this
    callback's state holds only its settings). It is moved to the module's device at the start of every fit.

    Teacher correction (``corrected=True``, Minitron's): a teacher that does not know the data the student trains
    on pulls it away from that data (a copy of a model pretrained elsewhere, fine-tuned on new text). With
    ``corrected`` the teacher trains alongside the student on the same batches — its own next-token loss, its own
    AdamW at ``teacher_lr`` — so the student distils from a teacher that learns the task with it; from
    ``start_step`` on the distillation term is mixed in (before it, the teacher only learns). It costs a forward and
    a backward of the teacher per step (measured in ``docs/RESULTS.md``, "What distillation costs per step") and the
    teacher's weights and optimizer state in the checkpoint (so a resume continues it). Under several processes the
    teacher's gradients are averaged over them.

    Whatever the teacher, its next-token loss on the training batches is compared with the student's: their means
    over the first ``check_steps`` steps of the callback's life (summed on the device, one host sync at the check)
    are compared once, and a teacher worse than the student is reported with both losses and the fix
    (``corrected=True``, or a teacher fine-tuned on this data, or no distillation).

    It prints a line when it switches on (at the start of the fit, with the loss it mixes in) and when it switches off
    (at the end of training, with the KD term of the last step and its mean over the fit); the KD term is logged as
    ``distill/kd`` at every logged step.

    Args:
        teacher: the frozen teacher (a module called like the student), or ``"copy"``: a copy of the student as it is
            when fit is set up (before a checkpoint is restored: on a resume, the model the run was built from).
        weight: α in [0, 1], the weight of the logit distillation.
        temperature: T > 0 of the softened distributions.
        hidden_weight: β >= 0, the weight of the hidden-state loss (needs ``hidden_layers``).
        hidden_layers: blocks whose outputs are compared (student and teacher of the same width).
        attr: the attribute path of the student model in the LightningModule (default: the ``transformers`` model
            found in it).
        corrected: train the teacher on the same batches alongside the student (see above).
        teacher_lr: the teacher's learning rate with ``corrected`` (default: the student's first optimizer's, read at
            each step).
        start_step: the optimizer step from which the distillation term is mixed in (0: from the start).
        check_steps: steps after which a teacher worse than the student on the training batches is reported (0: never).

    Raises:
        ValueError: for α, T or β out of range, a hidden weight without layers (or the reverse), a teacher that is
            neither a module nor ``"copy"``, a module with manual optimization, or a model it cannot find.

    Examples:
        >>> schedule = AtSteps({100: 0.5, 200: 1.0})
        >>> trainer = pl.Trainer(callbacks=[Distillation("copy", weight=0.5), StructuredPruning(0.5, schedule)])
    """

    def __init__(
        self,
        teacher: nn.Module | str = "copy",
        weight: float = 0.5,
        temperature: float = 2.0,
        hidden_weight: float = 0.0,
        hidden_layers: Sequence[int] = (),
        attr: str | None = None,
        corrected: bool = False,
        teacher_lr: float | None = None,
        start_step: int = 0,
        check_steps: int = 20,
    ) -> None:
        if not (isinstance(teacher, nn.Module) or teacher == "copy"):
            raise ValueError(f"teacher must be an nn.Module or 'copy', got {teacher!r}.")
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"weight must be in [0, 1], got {weight!r}.")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}.")
        if hidden_weight < 0 or bool(hidden_weight) != bool(hidden_layers):
            raise ValueError(
                f"hidden_weight (>= 0) and hidden_layers go together: got hidden_weight={hidden_weight!r} and "
                f"hidden_layers={tuple(hidden_layers)!r}; give both (e.g. 1.0 and (-1,)) or neither."
            )
        if teacher_lr is not None and not teacher_lr > 0:
            raise ValueError(f"teacher_lr must be > 0, got {teacher_lr!r}.")
        if isinstance(start_step, bool) or not isinstance(start_step, int) or start_step < 0:
            raise ValueError(f"start_step is an optimizer step >= 0, got {start_step!r}.")
        if isinstance(check_steps, bool) or not isinstance(check_steps, int) or check_steps < 0:
            raise ValueError(f"check_steps is a number of steps >= 0 (0: no check), got {check_steps!r}.")
        self.corrected, self.teacher_lr, self.start_step, self.check_steps = (
            corrected,
            teacher_lr,
            start_step,
            check_steps,
        )
        self._optimizer: torch.optim.Optimizer | None = None
        self._pending: dict[str, Any] | None = None  # a checkpoint's corrected teacher, applied at fit start
        self._losses: Tensor | None = None  # sums of the [teacher, student] next-token losses, on the device
        self._loss_steps = 0
        self.weight, self.temperature = weight, temperature
        self.hidden_weight, self.hidden_layers, self.attr = hidden_weight, tuple(hidden_layers), attr
        self._teacher = [teacher] if isinstance(teacher, nn.Module) else []  # a list: never a submodule
        self._copy = teacher == "copy"
        self._handles: list[Any] = []
        self._seen: dict[str, Any] = {}
        self._wrapped: pl.LightningModule | None = None
        self._kd: list[Tensor] = []  # [last KD term, their sum] of this fit
        self._kd_steps = 0

    @property
    def teacher(self) -> nn.Module | None:
        """The frozen teacher (None before a ``"copy"`` is made)."""
        return self._teacher[0] if self._teacher else None

    def _student(self, pl_module: pl.LightningModule) -> nn.Module:
        return find_pretrained(pl_module, self.attr)[1]

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not pl_module.automatic_optimization:
            raise ValueError(
                "Distillation wraps training_step under automatic optimization; with manual optimization add "
                "lightning_prune.finetune.distillation_loss to your loss yourself."
            )
        if self._copy and not self._teacher:
            self._teacher = [copy.deepcopy(self._student(pl_module))]
        self.teacher.requires_grad_(self.corrected).eval()

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.teacher.to(pl_module.device)
        if self.corrected:
            self._optimizer = torch.optim.AdamW(self.teacher.parameters(), lr=self.teacher_lr or 1e-4, weight_decay=0.0)
            if self._pending is not None:
                self.teacher.load_state_dict(self._pending["teacher"])
                self._optimizer.load_state_dict(self._pending["optimizer"])
                self._pending = None
        student = self._student(pl_module)
        self._handles.append(student.register_forward_hook(self._capture(), with_kwargs=True))
        if self.hidden_layers:
            for name, model in (("student", student), ("teacher", self.teacher)):
                blocks = blocks_of(model)
                for i in self.hidden_layers:
                    self._handles.append(blocks[i].register_forward_hook(self._block(name, i % len(blocks))))
        self._wrap(pl_module)
        self._kd, self._kd_steps = [], 0
        hidden = f" + {self.hidden_weight:g}·hidden MSE of blocks {list(self.hidden_layers)}" * bool(self.hidden_layers)
        teacher = "a copy of the model at fit setup" if self._copy else type(self.teacher).__name__
        teacher += ", trained on the same batches (corrected)" if self.corrected else ""
        hidden += f", from step {self.start_step}" if self.start_step else ""
        say(
            trainer,
            f"Distillation: on from step {trainer.global_step} (epoch {trainer.current_epoch}): loss = "
            f"{1 - self.weight:g}·loss + {self.weight:g}·KD (T={self.temperature:g}){hidden}; teacher {teacher}",
        )

    def _capture(self) -> Any:
        seen = self._seen  # hooks are closures, not bound methods: a deepcopy of the model never copies this callback

        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            if torch.is_grad_enabled():  # a training pass: validation and the teacher run without gradients
                inputs = {k: v for k, v in kwargs.items() if k != "labels" and (isinstance(v, Tensor) or v is None)}
                if args:
                    inputs["input_ids"] = args[0]
                seen["inputs"], seen["logits"] = inputs, _logits(output)
                seen["labels"] = kwargs.get("labels")

        return hook

    def _block(self, who: str, index: int) -> Any:
        seen = self._seen

        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if who == "teacher" or torch.is_grad_enabled():
                seen.setdefault(who, {})[index] = _first(output)

        return hook

    def _wrap(self, pl_module: pl.LightningModule) -> None:
        original = pl_module.training_step

        def training_step(*args: Any, **kwargs: Any) -> Any:
            self._seen.clear()
            out = original(*args, **kwargs)
            loss = out["loss"] if isinstance(out, dict) else out
            if loss is None or "logits" not in self._seen:
                return out
            mixed = self.loss(pl_module, loss)
            self._seen.clear()  # no activations kept past the step
            return {**out, "loss": mixed} if isinstance(out, dict) else mixed

        pl_module.training_step = training_step  # an instance attribute, shadowing the method for this fit
        self._wrapped = pl_module

    def loss(self, pl_module: pl.LightningModule, loss: Tensor) -> Tensor:
        """The training loss mixed with the distillation terms of the pass just captured."""
        inputs, student_logits = self._seen["inputs"], self._seen["logits"]
        targets = {**inputs, "labels": self._seen.get("labels")}
        self._seen.pop("teacher", None)
        with torch.set_grad_enabled(self.corrected):
            teacher_logits = _logits(self.teacher(**inputs))
        teacher_loss = lm_loss(teacher_logits, targets)
        if self.corrected and teacher_loss is not None:
            self._correct_(teacher_loss, pl_module)
        teacher_logits = teacher_logits.detach()
        self._compare(teacher_loss, student_logits, targets)
        kd = distillation_loss(student_logits, teacher_logits, self.temperature)
        weight = self.weight if pl_module.trainer.global_step >= self.start_step else 0.0
        total = (1 - weight) * loss + weight * kd
        pl_module.log("distill/kd", kd.detach(), on_step=True, on_epoch=False)
        self._kd = [kd.detach(), self._kd[1] + kd.detach() if self._kd else kd.detach()]  # no sync with the device
        self._kd_steps += 1
        if self.hidden_layers:
            student, teacher = self._seen.get("student", {}), self._seen.get("teacher", {})
            mse = torch.stack([F.mse_loss(student[i].float(), teacher[i].float()) for i in sorted(student)]).mean()
            total = total + self.hidden_weight * mse
            pl_module.log("distill/hidden_mse", mse.detach(), on_step=True, on_epoch=False)
        return total

    def _correct_(self, teacher_loss: Tensor, pl_module: pl.LightningModule) -> None:
        """One step of the teacher on this batch's next-token loss (gradients averaged over the processes)."""
        trainer = pl_module.trainer
        if self.teacher_lr is None and trainer.optimizers:
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            for group in self._optimizer.param_groups:
                group["lr"] = lr
        self._optimizer.zero_grad(set_to_none=True)
        teacher_loss.backward()
        if trainer.world_size > 1:
            for p in self.teacher.parameters():
                if p.grad is not None:
                    p.grad.copy_(trainer.strategy.reduce(p.grad, reduce_op="mean"))
        self._optimizer.step()
        self._optimizer.zero_grad(set_to_none=True)

    def _compare(self, teacher_loss: Tensor | None, student_logits: Tensor, targets: dict[str, Any]) -> None:
        """Sum both next-token losses over the first ``check_steps`` steps on the device (no host sync), then compare
        their means once and report a teacher worse than the student; nothing is computed after that."""
        if not self.check_steps or self._loss_steps >= self.check_steps or teacher_loss is None:
            return
        with torch.no_grad():
            student_loss = lm_loss(student_logits.detach(), targets)
            if student_loss is None:
                return
            pair = torch.stack([teacher_loss.detach().float(), student_loss.float()])
            self._losses = pair if self._loss_steps == 0 else self._losses + pair
        self._loss_steps += 1
        if self._loss_steps < self.check_steps:
            return
        teacher, student = (self._losses / self._loss_steps).tolist()  # the one sync, at the check
        if teacher > student:
            rank_zero_warn(
                f"Distillation: the teacher's next-token loss on the training batches, {teacher:.4f} (mean "
                f"of {self._loss_steps} steps), is above the student's, {student:.4f}: it knows this data "
                "less than the student and pulls it away from it. Train the teacher alongside (Distillation(..., "
                "corrected=True)), pass a teacher fine-tuned on this data, or leave distillation out."
            )

    def _unwrap(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._seen.clear()
        if self._wrapped is not None:
            self._wrapped.__dict__.pop("training_step", None)
            self._wrapped = None

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._unwrap()  # before on_fit_end, where an export may copy the model
        kd = (
            f"KD term {float(self._kd[0]):.4f} at the last step, mean {float(self._kd[1]) / self._kd_steps:.4f} over "
            f"{self._kd_steps} steps"
            if self._kd
            else "no KD term computed"
        )
        say(trainer, f"Distillation: off after step {trainer.global_step} (the end of training): {kd}")

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._unwrap()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._unwrap()

    @override
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "weight": self.weight,
            "temperature": self.temperature,
            "hidden_weight": self.hidden_weight,
        }
        if self.corrected and self._optimizer is not None:  # a trained teacher is part of the run
            state["teacher"] = {k: v.detach().cpu().clone() for k, v in self.teacher.state_dict().items()}
            state["optimizer"] = self._optimizer.state_dict()
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.corrected and "teacher" in state_dict:
            self._pending = {"teacher": state_dict["teacher"], "optimizer": state_dict["optimizer"]}

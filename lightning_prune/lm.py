"""``CausalLM``: a LightningModule around a ``transformers`` causal language model.

The model comes from one of: a GPT-2-shaped config built from a few numbers (trained from scratch, runs
offline), a name or directory for ``AutoModelForCausalLM.from_pretrained`` (the hub path, for users with
internet), or any ``nn.Module`` whose forward takes ``input_ids`` and ``labels`` and returns an object with
``.loss`` and ``.logits``. AdamW with linear warm-up and cosine decay; validation loss and perplexity
(torchmetrics) logged every validation epoch.

Examples:
    >>> lm = CausalLM(vocab_size=256, n_layer=2, n_embd=64, n_head=2, n_positions=128)
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torchmetrics.text import Perplexity
from typing_extensions import override

__all__ = ["CausalLM", "gpt2", "warmup_cosine"]


def gpt2(
    vocab_size: int, n_layer: int, n_embd: int, n_head: int, n_positions: int, n_inner: int | None = None
) -> nn.Module:
    """A randomly initialised GPT-2 from a config (no download)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    special = 50256 if vocab_size > 50256 else vocab_size - 1  # GPT-2's <|endoftext|>, or the last id
    config = GPT2Config(
        vocab_size=vocab_size,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_positions=n_positions,
        n_inner=n_inner,
        bos_token_id=special,
        eos_token_id=special,
    )
    return GPT2LMHeadModel(config)


def _from_pretrained(name: str) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained(name)``: a hub name (needs network or its cache) or a directory."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(name)


def warmup_cosine(step: int, warmup: int, total: int, floor: float = 0.1) -> float:
    """LR multiplier: linear from 0 to 1 over ``warmup`` steps, then cosine from 1 down to ``floor`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup  # 1. warm-up
    progress = min(1.0, (step - warmup) / max(1, total - warmup))  # 2. fraction of the decay done
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))  # 3. cosine to the floor


class CausalLM(pl.LightningModule):
    """Train or fine-tune a causal LM on ``{"input_ids", "labels"}`` batches.

    Args:
        model: a ready model (``nn.Module`` with ``forward(input_ids=..., labels=...)``); overrides the rest.
        pretrained: name or directory for ``AutoModelForCausalLM.from_pretrained``.
        vocab_size: vocabulary of the GPT-2 config trained from scratch (when no model or name is given).
        n_layer: its blocks.
        n_embd: its width.
        n_head: its attention heads.
        n_positions: its context length.
        n_inner: its feed-forward width (None: 4 × ``n_embd``).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW's decoupled weight decay.
        warmup_steps: linear warm-up length in optimizer steps.
        min_lr_ratio: the cosine decay ends at ``lr * min_lr_ratio`` at the end of the run.

    Raises:
        ValueError: if neither a model, a pretrained name nor a complete config is given.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        pretrained: str | None = None,
        vocab_size: int = 256,
        n_layer: int = 4,
        n_embd: int = 128,
        n_head: int = 4,
        n_positions: int = 256,
        n_inner: int | None = None,
        lr: float = 3e-3,
        weight_decay: float = 0.1,
        warmup_steps: int = 50,
        min_lr_ratio: float = 0.1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        if model is not None:
            self.model = model
        elif pretrained is not None:
            self.model = _from_pretrained(pretrained)
        else:
            self.model = gpt2(vocab_size, n_layer, n_embd, n_head, n_positions, n_inner)
        self.val_perplexity = Perplexity()

    @property
    def context(self) -> int | None:
        """The model's context length, where its config says."""
        config = getattr(self.model, "config", None)
        return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)

    @override
    def forward(self, input_ids: Tensor, labels: Tensor | None = None) -> Any:
        return self.model(input_ids=input_ids, labels=labels)

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(loss, logits) of a batch; subclasses add terms (distillation)."""
        out = self(batch["input_ids"], batch["labels"])
        return out.loss, out.logits

    @override
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, _ = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    @override
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        out = self(batch["input_ids"], batch["labels"])
        logits = out.logits[:, :-1].float()  # (B, T-1, V): predicts the next token
        self.val_perplexity.update(logits, batch["labels"][:, 1:])
        self.log("val/loss", out.loss, prog_bar=True, sync_dist=True)

    @override
    def on_validation_epoch_end(self) -> None:
        self.log("val/ppl", self.val_perplexity.compute(), prog_bar=True)
        self.val_perplexity.reset()

    @override
    def configure_optimizers(self) -> Any:
        decay = [p for n, p in self.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in self.named_parameters() if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": self.hparams.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=self.hparams.lr, betas=(0.9, 0.95))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(self.hparams.warmup_steps, total)

        def factor(step: int) -> float:
            return warmup_cosine(step, warmup, total, self.hparams.min_lr_ratio)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

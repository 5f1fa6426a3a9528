"""Tiny models of the benchmarks: GPT-2 and Llama configs of ``transformers`` on a byte vocabulary, ``TinyGPT`` (a
plain pre-LayerNorm GPT of ``nn.Linear`` layers that ``torch.nn.utils.prune`` handles too), and a minimal
LightningModule around a causal LM."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from typing_extensions import override

__all__ = ["GPT2Module", "LMOutput", "TinyGPT", "gpt2", "llama"]

BYTES = 256  # byte-level vocabulary: keeps the embedding and the LM head small


def gpt2(**config: Any) -> GPT2LMHeadModel:
    """A randomly initialised GPT-2 of ``GPT2Config(**config)``, by default on the byte vocabulary (token 0 as BOS
    and EOS)."""
    return GPT2LMHeadModel(GPT2Config(**{"vocab_size": BYTES, "bos_token_id": 0, "eos_token_id": 0, **config}))


def llama(**config: Any) -> LlamaForCausalLM:
    """A randomly initialised Llama of ``LlamaConfig(**config)``, by default on the byte vocabulary."""
    return LlamaForCausalLM(LlamaConfig(**{"vocab_size": BYTES, **config}))


@dataclass
class LMOutput:
    loss: Tensor | None  # mean next-token cross-entropy, or None without labels
    logits: Tensor  # (B, T, V)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: causal self-attention and a 4× GELU MLP, all plain ``nn.Linear``."""

    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln_1, self.ln_2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.fc = nn.Linear(n_embd, 4 * n_embd)
        self.out = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(C, dim=2)  # (B, T, C) each
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.out(F.gelu(self.fc(self.ln_2(x))))


class TinyGPT(nn.Module):
    """A small causal LM with the ``transformers`` calling convention (``input_ids``, ``labels`` shifted inside).

    Pure PyTorch (``nn.Linear`` layers and ``F.scaled_dot_product_attention``, no ``nn.MultiheadAttention``, which
    ``torch.nn.utils.prune`` breaks), so Lightning's ``ModelPruning`` and our callbacks see the same weights.
    """

    def __init__(self, vocab_size: int, n_layer: int, n_embd: int, n_head: int, n_positions: int) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab_size, n_embd), nn.Embedding(n_positions, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("proj.weight", "out.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)  # GPT-2 initialisation
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, input_ids: Tensor, labels: Tensor | None = None) -> LMOutput:
        T = input_ids.shape[1]
        x = self.wte(input_ids) + self.wpe(torch.arange(T, device=input_ids.device))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        return LMOutput(loss, logits)


class GPT2Module(pl.LightningModule):
    """Minimal causal-LM LightningModule: ``model`` (called with ``input_ids`` and ``labels``) trained by AdamW on
    batches of one ``(B, T)`` tensor of token ids, no logging."""

    def __init__(self, model: nn.Module, lr: float = 1e-3) -> None:
        super().__init__()
        self.model = model
        self.lr = lr

    @override
    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        (ids,) = batch  # (B, T)
        return self.model(input_ids=ids, labels=ids).loss

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr)

"""Export: masks made permanent, save_pretrained, reload in plain transformers with the same logits."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from lightning_prune.export import export_pretrained, make_permanent_
from lightning_prune.lm import gpt2


def test_export_round_trip_reloads_with_identical_logits_and_reports_nonzeros(tmp_path):
    torch.manual_seed(0)
    model = gpt2(vocab_size=64, n_layer=2, n_embd=32, n_head=2, n_positions=32).eval()
    masks = {f"model.transformer.h.{i}.mlp.c_fc.weight": torch.rand(32, 128) > 0.7 for i in range(2)}
    report = export_pretrained(model, tmp_path / "out", masks)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(0, 64, (2, 10))
    assert torch.equal(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)
    for i in range(2):
        w = reloaded.transformer.h[i].mlp.c_fc.weight
        assert torch.all(w[~masks[f"model.transformer.h.{i}.mlp.c_fc.weight"]] == 0)
    pruned = sum(int((~m).sum()) for m in masks.values())
    assert report["nonzero"] == sum(int((p != 0).sum()) for p in reloaded.parameters())
    assert report["nonzero"] <= report["parameters"] - pruned  # (GPT-2's biases start at zero too)
    assert report["bytes_on_disk"] == (tmp_path / "out" / "model.safetensors").stat().st_size


def test_masks_that_do_not_fit_are_rejected():
    model = gpt2(vocab_size=64, n_layer=1, n_embd=32, n_head=2, n_positions=32)
    with pytest.raises(ValueError, match="does not fit"):
        make_permanent_(model, {"transformer.h.0.mlp.c_fc.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(TypeError, match="no save_pretrained"):
        export_pretrained(torch.nn.Linear(2, 2), "unused")

"""Hardware-ready shapes: every reduced count a multiple of its dimension's multiple, the target still met."""

import json

import lightning.pytorch as pl
import pytest
import torch
from helpers import trainer
from test_structure_core import llama
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM

from lightning_prune import AtSteps, ExportPretrained, SizeTarget, StructuredPruning
from lightning_prune.callbacks.structure import rounding
from lightning_prune.lm import CausalLM
from lightning_prune.structured import SizeModel


def _loader():
    ids = torch.randint(0, 32, (16, 16), generator=torch.Generator().manual_seed(0))
    return DataLoader([{"input_ids": x, "labels": x} for x in ids], batch_size=4)


@pytest.mark.parametrize("multiple, ffn", [({"neurons": 16}, 96), (None, 4096)], ids=["given", "default"])
def test_reduced_counts_keep_their_multiple_and_the_target(tmp_path, multiple, ffn):
    pl.seed_everything(0, verbose=False)
    module = CausalLM(model=llama(intermediate_size=ffn, hidden_size=16, num_attention_heads=2, num_key_value_heads=1))
    size = SizeModel.from_model(module.model)
    pruning = StructuredPruning(
        SizeTarget(keep=0.6), AtSteps({2: 1.0}), dims=("neurons",), criterion="activation", loss_batches=0,
        tolerance=0.05, multiple_of=multiple,
    )  # fmt: skip
    trainer(max_steps=4, callbacks=[pruning, ExportPretrained(str(tmp_path))]).fit(module, _loader())
    kept = AutoModelForCausalLM.from_pretrained(tmp_path).config.intermediate_size
    step = (multiple or {"neurons": 128})["neurons"]
    assert kept < ffn and kept % step == 0, kept
    goal = 0.6 * size.params(size.full)
    assert abs(pruning.measure()["params"] / goal - 1) <= 0.05
    assert json.loads((tmp_path / "export.json").read_text())["reload_exact"]
    assert pruning.report()["multiple_of"] == (multiple or {"neurons": 128})


def test_the_default_rounds_only_dimensions_large_enough_and_bad_multiples_are_refused():
    from lightning_prune.structured import Counts

    full = Counts(neurons=11008, groups=8, layers=(True,) * 4, hidden=4096, experts=0)
    assert rounding(full, None) == {"neurons": 128, "hidden": 64}
    assert rounding(Counts(neurons=256, groups=2, layers=(True,), hidden=64, experts=8), None) == {}
    assert rounding(full, {}) == {}
    with pytest.raises(ValueError, match=r"multiple_of maps \('neurons', 'hidden', 'experts'\) to positive ints"):
        StructuredPruning(0.5, AtSteps({2: 1.0}), multiple_of={"heads": 2})
    with pytest.raises(ValueError, match="to positive ints"):
        StructuredPruning(0.5, AtSteps({2: 1.0}), multiple_of={"neurons": 0})

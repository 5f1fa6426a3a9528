"""PruningReport: records, labels of the dense and the final model, JSON and table."""

import json

import lightning.pytorch as pl
import pytest
import torch
from helpers import trainer
from torch.utils.data import DataLoader

from lightning_prune import AtEpochs, NeuronPruning, PruningReport, ScheduledPruning
from lightning_prune.callbacks.report import pruned_label
from lightning_prune.lm import CausalLM

CFG = dict(vocab_size=32, n_layer=2, n_embd=16, n_head=2, n_positions=16, n_inner=32, warmup_steps=2)


def _loader(n=16, seed=0):
    ids = torch.randint(0, 32, (n, 16), generator=torch.Generator().manual_seed(seed))
    return DataLoader([{"input_ids": x, "labels": x} for x in ids], batch_size=4)


def _fit(tmp_path, callbacks):
    pl.seed_everything(0, verbose=False)
    report = PruningReport(str(tmp_path))
    t = trainer(max_epochs=3, callbacks=[*callbacks, report], num_sanity_val_steps=0)
    t.fit(CausalLM(**CFG), _loader(), _loader(8, seed=1))
    return report, json.loads((tmp_path / "report.json").read_text())


@pytest.mark.parametrize(
    ("make", "label"),
    [
        (lambda: [NeuronPruning(AtEpochs({1: 0.5}))], "neurons removed"),
        (lambda: [ScheduledPruning(AtEpochs({1: 0.5}))], "weights pruned"),
        (
            lambda: [NeuronPruning(AtEpochs({1: 0.25})), ScheduledPruning(AtEpochs({2: 0.5}))],
            "weights pruned + neurons removed",
        ),
    ],
    ids=["neurons-only", "weights-only", "both"],
)
def test_final_model_is_labelled_by_what_happened_and_dense_is_before_it(tmp_path, make, label):
    report, summary = _fit(tmp_path, make())
    assert [r["epoch"] for r in summary["records"]] == [0, 1, 2]
    assert summary["dense"]["epoch"] == 0  # the validation before any change, never the pruned model
    assert summary["pruned"]["epoch"] == 2 and summary["pruned_label"] == label
    rows = report.table(summary)
    assert [r[0] for r in rows[1:]] == ["dense (epoch 0)", f"{label} (epoch 2)"]
    if "neurons" in label:
        assert summary["pruned"]["neurons_removed"] > 0.0 and rows[2][4] != "0.0%"
    else:
        assert summary["pruned"]["neurons_removed"] == 0.0


def test_without_pruning_the_single_row_is_dense(tmp_path):
    report, summary = _fit(tmp_path, [])
    assert summary["pruned_label"] == "dense" and summary["dense"] == summary["pruned"]
    assert [r[0] for r in report.table(summary)[1:]] == ["dense (epoch 2)"]


def test_pruned_label():
    assert pruned_label({"sparsity": 0.0, "neurons_removed": 0.0}) == "dense"
    assert pruned_label({"sparsity": 0.0}) == "dense"  # records without the neuron field
    assert pruned_label({"sparsity": 0.3, "neurons_removed": 0.0}) == "weights pruned"
    assert pruned_label({"sparsity": 0.0, "neurons_removed": 0.5}) == "neurons removed"
    assert pruned_label({"sparsity": 0.3, "neurons_removed": 0.5}) == "weights pruned + neurons removed"

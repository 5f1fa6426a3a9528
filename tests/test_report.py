"""PruningReport: records, labels of the dense and the final model, the same-budget reference, samples, JSON, table
and the plot's steps."""

import copy
import json

import lightning.pytorch as pl
import pytest
import torch
from helpers import trainer
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from lightning_prune import AtEpochs, NeuronPruning, PruningReport, ScheduledPruning, StructuredPruning
from lightning_prune.callbacks.report import greedy_continuation, pruned_label, spread
from lightning_prune.data import TextDataModule
from lightning_prune.lm import CausalLM
from lightning_prune.tokenizers import ByteTokenizer

CFG = dict(vocab_size=32, n_layer=2, n_embd=16, n_head=2, n_positions=16, n_inner=32, warmup_steps=2)


def _loader(n=16, seed=0):
    ids = torch.randint(0, 32, (n, 16), generator=torch.Generator().manual_seed(seed))
    return DataLoader([{"input_ids": x, "labels": x} for x in ids], batch_size=4)  # 4 steps an epoch


def _fit(tmp_path, callbacks, max_epochs=3, **report_args):
    pl.seed_everything(0, verbose=False)
    report = PruningReport(str(tmp_path), **report_args)
    t = trainer(max_epochs=max_epochs, callbacks=[*callbacks, report], num_sanity_val_steps=0)
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
    assert summary["dense_before_pruning"]["epoch"] == 0  # the validation before any change, never the pruned model
    assert summary["final"]["epoch"] == 2 and summary["final_label"] == label
    rows = report.table(summary)
    assert [r[0] for r in rows[1:]] == [
        "dense, before first pruning (epoch 0, this run)",
        f"{label} (epoch 2, this run)",
    ]
    # a column for each change some row has, none for one that does not apply, and no wall time
    columns = {"weights pruned": "sparsity (pruned weights)", "neurons removed": "neurons removed"}
    assert rows[0] == ("model", "val ppl", "val loss", *(columns[k] for k in columns if k in label), "non-zero params")
    if "neurons" in label:
        assert summary["final"]["neurons_removed"] > 0.0 and rows[2][rows[0].index("neurons removed")] != "0.0%"
    else:
        assert summary["final"]["neurons_removed"] == 0.0
    # without a reference the report says there is no same-budget comparison, and that the dense row trained less
    assert summary["dense_same_budget"] is None and summary["reference"]["used"] is False
    text = report.text(summary)
    assert "No dense model of the same budget to compare with: no reference given" in text
    assert "it trained fewer steps than the final model" in text


def test_structured_removal_is_reported_as_parameters_removed(tmp_path):
    report, summary = _fit(tmp_path, [StructuredPruning(0.8, AtEpochs({1: 0.5, 2: 1.0}), dims=["neurons"])])
    assert summary["final_label"] == "parameters removed"
    assert [e["epoch"] for e in summary["events"]] == [1, 2]
    first, last = (e["params_removed"] for e in summary["events"])
    assert 0.0 < first < last and last == pytest.approx(0.2, abs=0.01)  # the target: 80 % of the parameters kept
    assert summary["final"]["params_removed"] == last and summary["final"]["sparsity"] == 0.0
    assert summary["dense_before_pruning"]["epoch"] == 0
    rows = report.table(summary)
    assert rows[0] == ("model", "val ppl", "val loss", "parameters removed (structure)", "non-zero params")
    assert rows[2][3] == f"{last:.1%}"


def test_without_pruning_the_single_row_is_dense(tmp_path):
    report, summary = _fit(tmp_path, [])
    assert summary["final_label"] == "dense" and summary["dense_before_pruning"] is None
    assert [r[0] for r in report.table(summary)[1:]] == ["dense (epoch 2, this run)"]


def test_a_dense_run_of_the_same_budget_is_the_reference_row(tmp_path):
    _, dense = _fit(tmp_path / "dense", [])
    report, summary = _fit(
        tmp_path / "pruned", [ScheduledPruning(AtEpochs({1: 0.5}))], reference=str(tmp_path / "dense" / "report.json")
    )
    assert summary["reference"]["used"] is True and summary["budget"] == dense["budget"]
    same = summary["dense_same_budget"]
    assert (same["epoch"], same["step"], same["val_loss"]) == (2, 12, dense["final"]["val_loss"])
    assert same["nonzero"] == same["parameters"] == dense["parameters"]
    # before the first pruning (step 4) both runs trained the same weights, so their validations agree
    assert summary["reference"]["check"] == {"validations_before_pruning": 1, "max_abs_val_loss_difference": 0.0}
    rows = report.table(summary)
    assert rows[2][0] == f"dense, same budget (epoch 2, reference run {tmp_path / 'dense' / 'report.json'})"
    assert rows[2][2] == f"{dense['final']['val_loss']:.4f}" and rows[3][0] == "weights pruned (epoch 2, this run)"
    ratio = summary["final"]["val_ppl"] / same["val_ppl"]
    # the two runs were timed in different processes: no time column, this run's time below the table, said so
    assert "time" not in rows[0] and all(len(r) == len(rows[0]) for r in rows)
    assert f"Wall time of this run: {summary['seconds']:.0f} s" in report.text(summary)
    assert "not compared with the reference run's" in report.text(summary)
    assert "vs dense of the same budget (reference run" in report.text(summary)
    assert f"({ratio:.3f}x)" in report.text(summary)
    # the reference's validation loss is drawn too
    assert summary["plot"]["reference_val_loss"] == [[4.0, 8.0, 12.0], [r["val_loss"] for r in dense["records"]]]


def test_a_reference_of_another_budget_or_not_dense_is_refused_and_named(tmp_path):
    _, shorter = _fit(tmp_path / "short", [], max_epochs=2)
    report, summary = _fit(
        tmp_path / "pruned", [ScheduledPruning(AtEpochs({1: 0.5}))], reference=str(tmp_path / "short" / "report.json")
    )
    assert summary["reference"]["used"] is False and summary["dense_same_budget"] is None
    why = summary["reference"]["why"]
    assert "trainer.max_epochs: 3 vs 2" in why and "trainer.optimizer_steps: 12 vs 8" in why
    assert [r[0] for r in report.table(summary)[1:]] == [
        "dense, before first pruning (epoch 0, this run)",
        "weights pruned (epoch 2, this run)",
    ]
    assert f"No dense model of the same budget to compare with: {why}." in report.text(summary)
    _, again = _fit(
        tmp_path / "again", [ScheduledPruning(AtEpochs({1: 0.5}))], reference=str(tmp_path / "pruned" / "report.json")
    )
    assert again["reference"]["why"] == "the reference run is not dense (its final model: 'weights pruned')"


def test_sparsity_and_neuron_changes_are_plotted_at_the_step_of_their_event(tmp_path):
    weights, neurons = ScheduledPruning(AtEpochs({1: 0.3, 2: 0.6})), NeuronPruning(AtEpochs({2: 0.25}))
    _, summary = _fit(tmp_path, [weights, neurons])
    assert [e["step"] for e in weights.events] == [4, 8] and [e["step"] for e in neurons.events] == [8]
    # validations end epochs at steps 4, 8, 12: the one at step 4 still saw the dense model
    assert [(r["step"], r["sparsity"] > 0) for r in summary["records"]] == [(4, False), (8, True), (12, True)]
    for key, events in (("sparsity", weights.events), ("neurons_removed", neurons.events)):
        xs, ys = summary["plot"][key]  # the line as drawn in report.png
        changes = [x for x, y, y_before in zip(xs[1:], ys[1:], ys) if y != y_before]
        assert changes == [e["step"] for e in events], key
        assert [ys[xs.index(e["step"])] for e in events] == pytest.approx(
            [e["sparsity" if key == "sparsity" else "removed"] for e in events]
        )
        assert xs[-1] == 12 and ys[0] == 0.0
    assert [(e["step"], "sparsity" in e) for e in summary["events"]] == [(4, True), (8, True), (8, False)]


class _Snapshot(Callback):
    """Keeps a copy of the model at the first validation."""

    def __init__(self) -> None:
        self.model: torch.nn.Module | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.model is None and not trainer.sanity_checking:
            self.model = copy.deepcopy(pl_module.model)


def test_samples_are_the_greedy_continuations_of_the_dense_and_the_final_model(tmp_path):
    pl.seed_everything(0, verbose=False)
    dm = TextDataModule(source="pydoc", block_size=16, batch_size=4, max_tokens=2048, max_val_tokens=256)
    snapshot = _Snapshot()
    report = PruningReport(str(tmp_path), prompt="The ", sample_tokens=8)
    t = trainer(
        max_epochs=2, callbacks=[ScheduledPruning(AtEpochs({1: 0.5})), snapshot, report], num_sanity_val_steps=0
    )
    module = CausalLM(vocab_size=256, n_layer=1, n_embd=16, n_head=2, n_positions=16, warmup_steps=2)
    t.fit(module, datamodule=dm)
    samples = json.loads((tmp_path / "report.json").read_text())["samples"]
    tok = ByteTokenizer()
    assert samples["prompt"] == "The " and samples["new_tokens"] == 8 and samples["decoding"] == "greedy"
    assert samples["dense_before_pruning"] == greedy_continuation(snapshot.model, tok, "The ", 8, 16)
    assert samples["final"] == greedy_continuation(module.model, tok, "The ", 8, 16)
    assert samples["dense_same_budget"] is None  # no reference
    assert "  weights pruned (epoch 1):\n    | The " + samples["final"].split("\n")[0] in report.text(
        json.loads((tmp_path / "report.json").read_text())
    )


def test_greedy_continuation_takes_the_most_likely_token_and_draws_no_random_numbers():
    torch.manual_seed(0)
    model = CausalLM(vocab_size=256, n_layer=1, n_embd=16, n_head=2, n_positions=16).model.train()
    state = torch.get_rng_state()
    text = greedy_continuation(model, ByteTokenizer(), "ab", 20, 16)  # longer than the context: last 16 fed
    assert torch.equal(torch.get_rng_state(), state) and model.training
    ids = list(b"ab")
    model.eval()
    with torch.no_grad():
        for _ in range(20):
            ids.append(int(model(input_ids=torch.tensor([ids[-16:]])).logits[0, -1].argmax()))
    assert text == ByteTokenizer().decode(ids[2:])


def test_pruned_label():
    assert pruned_label({"sparsity": 0.0, "neurons_removed": 0.0}) == "dense"
    assert pruned_label({"sparsity": 0.0}) == "dense"  # records without the neuron field
    assert pruned_label({"sparsity": 0.3, "neurons_removed": 0.0}) == "weights pruned"
    assert pruned_label({"sparsity": 0.0, "neurons_removed": 0.5}) == "neurons removed"
    assert pruned_label({"sparsity": 0.3, "neurons_removed": 0.5}) == "weights pruned + neurons removed"


def test_spread_of_repeated_measurements_by_hand():
    s = spread([1.0, 2.0, 4.0])
    assert s["mean"] == pytest.approx(7 / 3) and (s["min"], s["max"], s["n"]) == (1.0, 4.0, 3)
    assert s["std"] == pytest.approx((((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2) ** 0.5)
    assert spread([5.0])["std"] == 0.0
    with pytest.raises(ValueError, match="no values"):
        spread([])

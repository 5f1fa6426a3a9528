"""What a person sees: one line per event that survives the progress bar, a short export summary, one TensorBoard
series per metric (no hp_metric), and no empty version folder after a refused run."""

import json
import logging
import re

import lightning.pytorch as pl
import pytest
import torch
from helpers import trainer
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from lightning_prune import (
    AtEpochs,
    Distillation,
    ExportPretrained,
    NeuronPruning,
    PruningReport,
    ScheduledPruning,
    StructuredPruning,
)
from lightning_prune.callbacks._console import say
from lightning_prune.lm import CausalLM

CFG = dict(vocab_size=32, n_layer=2, n_embd=16, n_head=2, n_positions=16, n_inner=32, warmup_steps=2)


def _loader(n=16, seed=0):
    ids = torch.randint(0, 32, (n, 16), generator=torch.Generator().manual_seed(seed))
    return DataLoader([{"input_ids": x, "labels": x} for x in ids], batch_size=4)  # 4 steps an epoch


def _fit(callbacks, max_epochs=3, **kwargs):
    pl.seed_everything(0, verbose=False)
    t = trainer(max_epochs=max_epochs, callbacks=callbacks, num_sanity_val_steps=0, **kwargs)
    t.fit(CausalLM(**CFG), _loader(), _loader(8, seed=1))
    return t


def test_event_lines_are_written_above_the_tqdm_bar_and_stay_after_it(tmp_path, monkeypatch):
    written = []
    from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

    monkeypatch.setattr(Tqdm, "write", classmethod(lambda cls, s, *a, **kw: written.append(s)))
    callbacks = [
        ScheduledPruning(AtEpochs({1: 0.5})),
        NeuronPruning(AtEpochs({2: 0.25})),
        Distillation("copy", weight=0.5),
        PruningReport(str(tmp_path)),
        ExportPretrained(str(tmp_path / "export")),
        TQDMProgressBar(),
    ]
    _fit(callbacks, enable_progress_bar=True)
    starts = [line.split(":")[0] for line in written]
    assert "ScheduledPruning" in starts and "NeuronPruning" in starts
    assert any(line.startswith(f"exported to {tmp_path / 'export'}: n_inner 32 → 24") for line in written)
    assert starts.count("Distillation") == 2  # on at the start, off at the end with the KD term
    on, off = (line for line in written if line.startswith("Distillation"))
    assert on.startswith("Distillation: on from step 0 (epoch 0): loss = 0.5·loss + 0.5·KD (T=2)")
    assert re.match(r"Distillation: off after step 12 \(the end of training\): KD term \d\.\d{4} at the last", off)
    assert any(line.startswith("epoch 0 step 4: val loss") for line in written)  # a line per validation
    assert any("| model" in line for line in written)  # the final table, after the bars are closed
    assert sum(line.startswith("report: ") for line in written) == 1
    event = next(line for line in written if line.startswith("ScheduledPruning"))
    assert event.startswith("ScheduledPruning: step 4 (epoch 1): sparsity 0.5000 of")
    assert all(len(line.replace(str(tmp_path), "")) < 160 for line in written if "\n" not in line)  # short lines


CLOCK = r"(\d+s|\d+m\d\ds|\d+h\d\dm)"  # 45s, 4m50s, 1h02m


@pytest.mark.parametrize("limit", [{}, {"max_steps": 10}], ids=["max_epochs", "max_steps"])
def test_each_validation_line_shows_the_elapsed_time_and_the_time_left_of_the_run(tmp_path, monkeypatch, limit):
    written = []
    from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

    monkeypatch.setattr(Tqdm, "write", classmethod(lambda cls, s, *a, **kw: written.append(s)))
    _fit([PruningReport(str(tmp_path)), TQDMProgressBar()], enable_progress_bar=True, **limit)  # 4 steps an epoch
    lines = [line for line in written if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 0 step 4", "epoch 1 step 8", "epoch 2 step 12"][
        : 2 if limit else 3
    ]
    for line in lines:
        assert re.fullmatch(rf"epoch \d step \d+: val loss [\d.]+, .*, elapsed {CLOCK}, about {CLOCK} left", line), line
    if not limit:
        assert lines[-1].endswith(", about 0s left")  # after the run's last step nothing is left


def test_durations_read_as_a_person_reads_them():
    from lightning_prune.callbacks.report import _clock

    assert [_clock(s) for s in (0, 44.6, 59.6, 72, 290, 3599, 3720)] == [
        "0s", "45s", "1m00s", "1m12s", "4m50s", "59m59s", "1h02m"
    ]  # fmt: skip


@pytest.fixture
def logged(caplog):
    """caplog that sees Lightning's rank-zero logger whether or not it propagates (an earlier test may have set it
    not to)."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    propagate, logger.propagate = logger.propagate, False  # each record reaches caplog once, through its handler
    logger.addHandler(caplog.handler)
    with caplog.at_level("INFO", logger="lightning.pytorch.utilities.rank_zero"):
        yield caplog
    logger.removeHandler(caplog.handler)
    logger.propagate = propagate


def test_without_a_progress_bar_the_lines_go_to_rank_zero_logging(logged):
    caplog = logged
    t = _fit([StructuredPruning(0.8, AtEpochs({1: 0.5, 2: 1.0}), dims=["neurons"])])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("StructuredPruning")]
    assert len(lines) == 2
    assert re.match(r"StructuredPruning: step 4 \(epoch 1\): params [\d,]+ of 5,248 \(this event's goal", lines[0])
    assert lines[1].endswith("removed neurons 50.0%")
    caplog.clear()
    say(t, "a line")
    assert [r.getMessage() for r in caplog.records] == ["a line"]


def test_the_export_prints_a_short_summary_and_keeps_the_detail_in_its_json(tmp_path, logged):
    caplog = logged
    _fit([NeuronPruning(AtEpochs({1: 0.5})), ExportPretrained(str(tmp_path))], max_epochs=2)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("exported to")]
    report = json.loads((tmp_path / "export.json").read_text())
    assert "n_inner 32 → 16" in line
    assert f"params {report['parameters_before_shrink']:,} → {report['parameters']:,}" in line
    assert "reload exact (logits 0 apart, greedy same)" in line and line.endswith("; see export.json")
    assert len(line.replace(str(tmp_path), "")) < 160 and "[" not in line  # no index lists: they stay in export.json
    assert report["removed"]


def test_tensorboard_has_one_series_per_metric_logged_at_the_step_it_changes(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    weights = ScheduledPruning(AtEpochs({1: 0.3, 2: 0.6}))
    logger = TensorBoardLogger(tmp_path, default_hp_metric=False)
    t = _fit([weights], logger=logger, log_every_n_steps=1)  # every step logged: a collision would show
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "hp_metric" not in tags
    assert not [tag for tag in tags if tag.endswith(("_step", "_epoch"))], tags
    assert {"sparsity/global", "sparsity/target", "val/loss", "train/loss"} <= set(tags)
    for tag in tags:  # one value per step
        by_step = {}
        for e in events.Scalars(tag):
            by_step.setdefault(e.step, set()).add(round(e.value, 6))
        assert all(len(v) == 1 for v in by_step.values()), (tag, by_step)
    steps = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in ("sparsity/global", "sparsity/target")}
    (first, second) = weights.events
    assert (first["step"], second["step"]) == (4, 8) and t.global_step == 12
    for step, value in steps["sparsity/target"].items():
        assert value == pytest.approx(0.0 if step < 4 else 0.3 if step < 8 else 0.6), step
    for step, value in steps["sparsity/global"].items():
        assert value == pytest.approx(0.0 if step < 4 else 0.3 if step < 8 else 0.6, abs=1e-3), step
    assert {4, 8} <= set(steps["sparsity/global"])  # a point at each event's step
    layer = next(tag for tag in tags if tag.startswith("sparsity/layer/"))
    assert 4 in {e.step for e in events.Scalars(layer)}


def test_structure_metrics_are_logged_at_the_step_of_each_event(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    structure = StructuredPruning(0.8, AtEpochs({1: 0.5, 2: 1.0}), dims=["neurons"])
    logger = TensorBoardLogger(tmp_path, default_hp_metric=False)
    t = _fit([structure], logger=logger, log_every_n_steps=3)  # events at steps 4 and 8, between logging steps
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    params = [(e.step, e.value) for e in events.Scalars("structure/params")]
    assert params == [(e["step"], float(e["params"])) for e in structure.events] and [s for s, _ in params] == [4, 8]
    assert float(t.callback_metrics["structure/params"]) == structure.events[-1]["params"]


def test_a_run_refused_at_setup_leaves_no_version_folder(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="tb", default_hp_metric=False)
    report, export = PruningReport(), ExportPretrained()
    pruning = ScheduledPruning(AtEpochs({5: 0.5}))  # past the end of a 3-epoch run: refused at setup
    with pytest.raises(ValueError, match="epoch 5"):
        _fit([pruning, report, export], logger=logger)
    assert not (tmp_path / "tb" / "version_0").exists()
    logger = TensorBoardLogger(tmp_path, name="tb", default_hp_metric=False)
    t = _fit([ScheduledPruning(AtEpochs({1: 0.5})), PruningReport(), ExportPretrained()], logger=logger)
    run = tmp_path / "tb" / "version_0"  # the next run takes the number the refused one did not keep
    assert t.log_dir == str(run) and (run / "report.json").is_file()
    assert (run / "pruned_model" / "export.json").is_file()


def test_a_folder_with_more_than_setup_wrote_is_kept(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="tb", version=0, default_hp_metric=False)
    earlier = tmp_path / "tb" / "version_0"
    earlier.mkdir(parents=True)
    (earlier / "report.json").write_text("{}")  # an earlier run's result in a pinned version
    with pytest.raises(ValueError, match="epoch 5"):
        _fit([ScheduledPruning(AtEpochs({5: 0.5})), PruningReport()], logger=logger)
    assert (earlier / "report.json").read_text() == "{}"

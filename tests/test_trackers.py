import math

import pytest
import torch

from lightning_prune.trackers import RunningStats


def _param(values):
    return torch.nn.Parameter(torch.tensor(values))


def _step(stats, p, w, g):
    with torch.no_grad():
        p.copy_(torch.tensor(w))
    p.grad = torch.tensor(g)
    return stats.update({"p": p})


def test_ema_of_abs_weight_and_abs_grad_by_hand():
    p = _param([0.0, 0.0])
    stats = RunningStats({"p": p}, ("abs_weight", "abs_grad"), decay=0.5)
    _step(stats, p, [1.0, -2.0], [0.5, -1.0])
    _step(stats, p, [3.0, -4.0], [-1.5, 0.0])
    _step(stats, p, [-1.0, 0.0], [0.5, 2.0])
    # m1 = |x1|; m_n = 0.5 m_{n-1} + 0.5 |x_n|
    w1 = 0.5 * (0.5 * 1.0 + 0.5 * 3.0) + 0.5 * 1.0  # 1.5
    w2 = 0.5 * (0.5 * 2.0 + 0.5 * 4.0) + 0.5 * 0.0  # 1.5
    g1 = 0.5 * (0.5 * 0.5 + 0.5 * 1.5) + 0.5 * 0.5  # 0.75
    g2 = 0.5 * (0.5 * 1.0 + 0.5 * 0.0) + 0.5 * 2.0  # 1.25
    assert torch.allclose(stats.value("abs_weight", "p"), torch.tensor([w1, w2]))
    assert torch.allclose(stats.value("abs_grad", "p"), torch.tensor([g1, g2]))
    assert stats.steps == 3


def test_movement_and_taylor_sums_by_hand():
    p = _param([0.0, 0.0])
    stats = RunningStats({"p": p}, ("movement", "taylor"))
    _step(stats, p, [1.0, -2.0], [0.5, -1.0])  # w·g = [0.5, 2.0]
    _step(stats, p, [3.0, -4.0], [-1.5, 0.5])  # w·g = [-4.5, -2.0]
    assert torch.allclose(stats.value("movement", "p"), torch.tensor([0.5 - 4.5, 2.0 - 2.0]))
    assert torch.allclose(stats.value("taylor", "p"), torch.tensor([0.5 + 4.5, 2.0 + 2.0]))


def test_time_weighted_average_uses_sqrt_of_snapshot_index():
    p = _param([0.0])
    stats = RunningStats({"p": p}, ("time_weighted",))
    for w in [1.0, -2.0, 4.0]:  # epoch-end weights
        with torch.no_grad():
            p.fill_(w)
        stats.snapshot({"p": p})
    expected = (math.sqrt(1) * 1 + math.sqrt(2) * 2 + math.sqrt(3) * 4) / (1 + math.sqrt(2) + math.sqrt(3))
    assert stats.value("time_weighted", "p").item() == pytest.approx(expected)


def test_time_weighted_window_keeps_only_last_k_snapshots():
    p = _param([0.0])
    stats = RunningStats({"p": p}, ("time_weighted",), window=2, weighting="linear")
    for w in [10.0, 1.0, 2.0]:
        with torch.no_grad():
            p.fill_(w)
        stats.snapshot({"p": p})
    assert stats.value("time_weighted", "p").item() == pytest.approx((2 * 1.0 + 3 * 2.0) / (2 + 3))
    assert len(stats.ring) == 2


def test_non_finite_gradient_step_is_skipped_and_counted():
    p = _param([0.0, 0.0])
    stats = RunningStats({"p": p}, ("abs_grad", "taylor"))
    assert _step(stats, p, [1.0, 1.0], [1.0, 2.0])
    assert not _step(stats, p, [1.0, 1.0], [float("nan"), 2.0])
    assert not _step(stats, p, [1.0, 1.0], [float("inf"), 2.0])
    assert (stats.steps, stats.skipped) == (1, 2)
    assert torch.equal(stats.value("taylor", "p"), torch.tensor([1.0, 2.0]))
    assert torch.equal(stats.value("abs_grad", "p"), torch.tensor([1.0, 2.0]))


def test_update_interval_folds_one_step_in_every():
    p = _param([0.0])
    stats = RunningStats({"p": p}, ("taylor",), every=2)
    for w in [1.0, 2.0, 3.0, 4.0]:
        _step(stats, p, [w], [1.0])
    assert stats.value("taylor", "p").item() == 1.0 + 3.0  # steps 1 and 3 of 4
    assert (stats.calls, stats.steps) == (4, 2)


def test_bfloat16_state_halves_memory_and_stays_close():
    p = _param([0.5, -0.25])
    s32 = RunningStats({"p": p}, ("abs_weight", "abs_grad"))
    s16 = RunningStats({"p": p}, ("abs_weight", "abs_grad"), dtype=torch.bfloat16)
    p.grad = torch.tensor([1.0, 2.0])
    s32.update({"p": p}), s16.update({"p": p})
    assert s16.nbytes() * 2 == s32.nbytes() == 2 * 2 * 4
    assert torch.allclose(s16.value("abs_weight", "p"), s32.value("abs_weight", "p"), rtol=1e-2)


def test_state_dict_round_trip_and_shape_check():
    p = _param([1.0, 2.0])
    stats = RunningStats({"p": p}, ("abs_weight", "time_weighted"), window=3)
    p.grad = torch.zeros(2)
    stats.update({"p": p})
    stats.snapshot({"p": p})
    fresh = RunningStats({"p": _param([0.0, 0.0])}, ("abs_weight", "time_weighted"), window=3)
    fresh.load_state_dict(stats.state_dict())
    assert torch.equal(fresh.value("abs_weight", "p"), stats.value("abs_weight", "p"))
    assert torch.equal(fresh.value("time_weighted", "p"), stats.value("time_weighted", "p"))
    assert (fresh.steps, fresh.snapshots) == (1, 1)
    other = RunningStats({"p": _param([0.0, 0.0, 0.0])}, ("abs_weight", "time_weighted"), window=3)
    with pytest.raises(ValueError, match="do not fit the model's shapes"):
        other.load_state_dict(stats.state_dict())
    renamed = RunningStats({"q": _param([0.0, 0.0])}, ("abs_weight", "time_weighted"), window=3)
    with pytest.raises(ValueError, match="other parameters"):
        renamed.load_state_dict(stats.state_dict())


def test_bad_arguments():
    p = _param([0.0])
    with pytest.raises(ValueError, match="unknown statistics"):
        RunningStats({"p": p}, ("curvature",))
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\)"):
        RunningStats({"p": p}, decay=1.0)
    with pytest.raises(ValueError, match="window must be"):
        RunningStats({"p": p}, window=0)
    with pytest.raises(ValueError, match="weighting must be one of"):
        RunningStats({"p": p}, weighting="cubic")
    with pytest.raises(RuntimeError, match="no optimizer step"):
        RunningStats({"p": p}).value("abs_weight", "p")


def test_input_norm_is_a_running_mean_of_squared_inputs_per_feature():
    w_linear = torch.nn.Parameter(torch.ones(3, 2))  # (out, in)
    w_conv = torch.nn.Parameter(torch.ones(2, 3))  # Conv1D: (in, out)
    stats = RunningStats({"a": w_linear, "b": w_conv}, stats=("input_norm",), decay=0.5, in_dims={"a": 1, "b": 0})
    assert stats.add_inputs("a", torch.tensor([[[1.0, 2.0], [3.0, 0.0]]]))  # (1, 2 tokens, 2 features)
    assert stats.state["input_norm"]["a"].tolist() == [
        [5.0, 2.0]
    ]  # one row block; mean over tokens of x²: (1+9)/2, (4+0)/2
    stats.add_inputs("a", torch.tensor([[1.0, 1.0]]))
    assert stats.state["input_norm"]["a"].tolist() == [[3.0, 1.5]]  # 0.5·5 + 0.5·1, 0.5·2 + 0.5·1
    scale = stats.input_scale("a")  # the same row of norms for every output
    assert torch.allclose(scale, torch.tensor([[3.0**0.5, 1.5**0.5]]).expand(3, 2))
    assert not stats.add_inputs("a", torch.tensor([[float("inf"), 1.0]])) and int(stats.inputs_skipped) == 1
    assert stats.state["input_norm"]["a"].tolist() == [[3.0, 1.5]] and int(stats.inputs_seen["a"]) == 2  # unchanged
    with pytest.raises(RuntimeError, match="no input of 'b' has been seen"):
        stats.input_scale("b")
    stats.add_inputs("b", torch.tensor([[2.0, 0.0]]))
    assert torch.equal(
        stats.input_scale("b"), torch.tensor([[2.0], [0.0]]).expand(2, 3)
    )  # per row of Conv1D's (in, out)
    again = RunningStats({"a": w_linear, "b": w_conv}, stats=("input_norm",), decay=0.5, in_dims={"a": 1, "b": 0})
    again.load_state_dict(stats.state_dict())
    assert {f: int(n) for f, n in again.inputs_seen.items()} == {"a": 2, "b": 1}
    assert torch.equal(again.input_scale("a"), stats.input_scale("a"))


def test_platon_sensitivity_and_uncertainty_by_hand():
    p = _param([0.0, 0.0])
    stats = RunningStats({"p": p}, ("platon",), platon_betas=(0.5, 0.75))
    steps = [([1.0, -2.0], [0.5, -1.0]), ([3.0, -4.0], [-1.5, 0.5]), ([-1.0, 0.0], [2.0, 2.0])]
    for w, g in steps:
        _step(stats, p, w, g)
    # I = |w·g| per step: [0.5, 2.0], [4.5, 2.0], [2.0, 0.0]; Ī and Ū from zero; Ū reads Ī after its update
    # step 1: Ī = 0.5·[0.5, 2] = [0.25, 1]; Ū = 0.25·|[0.5, 2] − [0.25, 1]| = [0.0625, 0.25]
    # step 2: Ī = 0.5·[0.25, 1] + 0.5·[4.5, 2] = [2.375, 1.5]
    #         Ū = 0.75·[0.0625, 0.25] + 0.25·|[4.5, 2] − [2.375, 1.5]| = [0.578125, 0.3125]
    i_bar3 = [0.5 * 2.375 + 0.5 * 2.0, 0.5 * 1.5 + 0.5 * 0.0]  # [2.1875, 0.75]
    u_bar3 = [0.75 * 0.578125 + 0.25 * abs(2.0 - 2.1875), 0.75 * 0.3125 + 0.25 * abs(0.0 - 0.75)]  # [0.48047, 0.42188]
    assert torch.allclose(stats.state["platon"]["p"], torch.tensor(i_bar3))
    assert torch.allclose(stats.state["platon_uncertainty"]["p"], torch.tensor(u_bar3))
    expected = [i_bar3[0] * u_bar3[0], i_bar3[1] * u_bar3[1]]  # [1.05103, 0.31641]
    assert torch.allclose(stats.value("platon", "p"), torch.tensor(expected))
    assert stats.nbytes() == 2 * 2 * 4  # two float32 tensors per weight


def test_platon_default_betas_are_the_papers_and_state_round_trips():
    p = _param([2.0])
    stats = RunningStats({"p": p}, ("platon", "taylor"))
    assert stats.platon_betas == (0.85, 0.95)
    _step(stats, p, [2.0], [-3.0])  # I = 6
    i_bar = 0.15 * 6.0  # 0.9
    u_bar = 0.05 * abs(6.0 - i_bar)  # 0.255
    assert stats.value("platon", "p").item() == pytest.approx(i_bar * u_bar)
    assert stats.value("taylor", "p").item() == 6.0  # the shared |w·g| is not changed by PLATON
    fresh = RunningStats({"p": _param([0.0])}, ("taylor", "platon"))
    fresh.load_state_dict(stats.state_dict())
    assert torch.equal(fresh.state["platon_uncertainty"]["p"], stats.state["platon_uncertainty"]["p"])
    assert torch.equal(fresh.value("platon", "p"), stats.value("platon", "p"))
    with pytest.raises(ValueError, match="platon_betas"):
        RunningStats({"p": p}, ("platon",), platon_betas=(0.85, 1.0))


def test_platon_in_bfloat16_state_stays_close_to_float32():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(64, 64))
    s32 = RunningStats({"p": p}, ("platon",))
    s16 = RunningStats({"p": p}, ("platon",), dtype=torch.bfloat16)
    for _ in range(5):
        p.grad = torch.randn(64, 64)
        s32.update({"p": p}), s16.update({"p": p})
    assert s16.state["platon"]["p"].dtype == torch.bfloat16 and s16.nbytes() * 2 == s32.nbytes()
    assert torch.allclose(s16.value("platon", "p").mean(), s32.value("platon", "p").mean(), rtol=2e-2)

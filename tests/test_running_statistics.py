"""Each running statistic on its own, against values computed by hand, and the container's shared work: one cast,
one finiteness check and one w·g per step, the same checkpoint whatever order the statistics were listed in."""

import math
import zlib

import pytest
import torch

from lightning_prune.trackers import (
    AbsGrad,
    AbsWeight,
    Accumulator,
    InputNorm,
    Movement,
    Platon,
    RunningStats,
    Step,
    Taylor,
    TimeWeighted,
    snapshot_weights,
)

F32 = Accumulator(torch.float32)


def _step(w, g, first=False, counter=1):
    return Step([torch.tensor(w)], [torch.tensor(g)], first=first, counter=counter)


def test_abs_weight_and_abs_grad_emas_by_hand():
    weights = AbsWeight({"w": torch.zeros(2)}, F32, decay=0.75)
    grads = AbsGrad({"w": torch.zeros(2)}, F32, decay=0.5)
    steps = [([1.0, -2.0], [4.0, 0.0]), ([-3.0, 2.0], [0.0, -8.0]), ([0.0, 6.0], [2.0, 2.0])]
    for i, (w, g) in enumerate(steps):
        step = _step(w, g, first=i == 0, counter=i + 1)
        weights.update(step)
        grads.update(step)
    # m_1 = |x_1|; m_n = β m_{n-1} + (1-β) |x_n|
    w1 = 0.75 * (0.75 * 1.0 + 0.25 * 3.0) + 0.25 * 0.0  # 1.125
    w2 = 0.75 * (0.75 * 2.0 + 0.25 * 2.0) + 0.25 * 6.0  # 3.0
    g1 = 0.5 * (0.5 * 4.0 + 0.5 * 0.0) + 0.5 * 2.0  # 2.0
    g2 = 0.5 * (0.5 * 0.0 + 0.5 * 8.0) + 0.5 * 2.0  # 3.0
    assert torch.equal(weights.value("w"), torch.tensor([w1, w2]))
    assert torch.equal(grads.value("w"), torch.tensor([g1, g2]))
    assert not AbsWeight.reads_grads and AbsGrad.reads_grads


def test_movement_and_taylor_sums_by_hand_from_one_shared_product():
    movement = Movement({"w": torch.zeros(2)}, F32)
    taylor = Taylor({"w": torch.zeros(2)}, F32)
    for i, (w, g) in enumerate([([1.0, -2.0], [0.5, -1.0]), ([3.0, -4.0], [-1.5, 0.5])]):
        step = _step(w, g, first=i == 0, counter=i + 1)
        movement.update(step)  # w·g = [0.5, 2.0], then [-4.5, -2.0]
        taylor.update(step)
    assert torch.equal(movement.value("w"), torch.tensor([0.5 - 4.5, 2.0 - 2.0]))
    assert torch.equal(taylor.value("w"), torch.tensor([0.5 + 4.5, 2.0 + 2.0]))


def test_step_forms_w_times_g_once_and_its_absolute_value_in_place():
    step = _step([2.0, -3.0], [-1.0, -1.0])
    products = step.products()
    assert products[0].tolist() == [-2.0, 3.0] and step.products() is products  # formed once
    assert step.sensitivity() is products and products[0].tolist() == [2.0, 3.0]  # |w·g| over it, in place
    assert step.products()[0].tolist() == [-2.0, 3.0]  # asked for again after that: formed again, signed


def test_platon_sensitivity_and_uncertainty_by_hand():
    platon = Platon({"w": torch.zeros(2)}, F32, betas=(0.5, 0.75))
    platon.update(_step([1.0, -2.0], [0.5, -1.0], first=True))  # I = [0.5, 2]
    platon.update(_step([3.0, -4.0], [-1.5, 0.5], counter=2))  # I = [4.5, 2]
    # step 1: Ī = 0.5·I = [0.25, 1]; Ū = 0.25·|I − Ī| = [0.0625, 0.25] (Ī after its update, both from zero)
    # step 2: Ī = 0.5·[0.25, 1] + 0.5·[4.5, 2] = [2.375, 1.5]
    #         Ū = 0.75·[0.0625, 0.25] + 0.25·|[4.5, 2] − [2.375, 1.5]| = [0.578125, 0.3125]
    assert torch.equal(platon.mean["w"], torch.tensor([2.375, 1.5]))
    assert torch.equal(platon.uncertainty["w"], torch.tensor([0.578125, 0.3125]))
    assert torch.equal(platon.value("w"), torch.tensor([2.375 * 0.578125, 1.5 * 0.3125]))
    assert set(platon.tensors()) == {"platon", "platon_uncertainty"} and platon.nbytes() == 2 * 2 * 4


def test_time_weighted_running_sum_and_window_by_hand():
    full = TimeWeighted({"w": torch.zeros(1)}, F32, snapshot_weights("sqrt"), window=None)
    ring = TimeWeighted({"w": torch.zeros(1)}, F32, snapshot_weights("linear"), window=2)
    for i, w in enumerate([1.0, -2.0, 4.0], start=1):
        full.snapshot([torch.tensor([w])], i)
        ring.snapshot([torch.tensor([w])], i)
    expected = (math.sqrt(1) * 1 + math.sqrt(2) * 2 + math.sqrt(3) * 4) / (1 + math.sqrt(2) + math.sqrt(3))
    assert full.value("w").item() == pytest.approx(expected)
    assert full.norm == pytest.approx(1 + math.sqrt(2) + math.sqrt(3))
    assert ring.ring_index == [2, 3] and ring.value("w").item() == pytest.approx((2 * 2.0 + 3 * 4.0) / (2 + 3))
    assert ring.tensors() == {} and ring.nbytes() == 2 * 4  # the ring only: two snapshots of one float32
    fresh = TimeWeighted({"w": torch.zeros(1)}, F32, snapshot_weights("linear"), window=2)
    fresh.load_state_dict(ring.state_dict())
    assert fresh.ring_index == [2, 3] and torch.equal(fresh.value("w"), ring.value("w"))


def test_input_norm_by_hand_per_row_block_and_for_conv1d():
    params = {"attn": torch.zeros(4, 2), "conv": torch.zeros(2, 3)}  # (2 blocks · 2 rows, in 2); Conv1D (in 2, out 3)
    norm = InputNorm(params, {"attn": 1, "conv": 0}, {"attn": 2, "conv": 1}, {"attn": (4, 2), "conv": (2, 3)}, {}, 0.5)
    assert norm.add("attn", torch.tensor([[1.0, 2.0], [3.0, 0.0]]), torch.tensor([[2.0, 2.0]]))
    assert norm.value("attn").tolist() == [[5.0, 2.0], [4.0, 4.0]]  # mean over tokens of x², per block
    assert norm.add("attn", torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]))
    assert norm.value("attn").tolist() == [[3.0, 1.0], [2.0, 4.0]]  # 0.5·old + 0.5·new
    assert not norm.add("attn", torch.tensor([[math.inf, 0.0]]), torch.tensor([[0.0, 2.0]]))
    assert norm.value("attn").tolist() == [[3.0, 1.0], [2.0, 4.0]] and int(norm.skipped) == 1
    assert int(norm.seen["attn"]) == 2
    assert torch.equal(norm.scale("attn"), torch.tensor([[3.0, 1.0], [3.0, 1.0], [2.0, 4.0], [2.0, 4.0]]).sqrt())
    norm.add("conv", torch.tensor([[4.0, 0.0]]))
    assert torch.equal(norm.scale("conv"), torch.tensor([[4.0], [0.0]]).expand(2, 3))  # a column per input row
    with pytest.raises(ValueError, match="expected 2 inputs"):
        norm.add("attn", torch.ones(1, 2))
    fresh = InputNorm(params, {"attn": 1, "conv": 0}, {"attn": 2, "conv": 1}, {"attn": (4, 2), "conv": (2, 3)}, {}, 0.5)
    with pytest.raises(RuntimeError, match="no input of 'attn' has been seen"):
        fresh.scale("attn")
    fresh.load_state_dict(norm.state_dict())
    assert int(fresh.seen["attn"]) == 2 and int(fresh.skipped) == 1
    assert torch.equal(fresh.scale("attn"), norm.scale("attn"))


def test_accumulator_in_float32_by_hand():
    state = {"a": torch.zeros(2), "b": torch.zeros(1)}
    F32.ema_("abs_weight", state, [torch.tensor([2.0, -4.0]), torch.tensor([8.0])], decay=0.75, first=True, counter=1)
    F32.ema_("abs_weight", state, [torch.tensor([6.0, 0.0]), torch.tensor([0.0])], decay=0.75, first=False, counter=2)
    assert state["a"].tolist() == [3.0, -3.0] and state["b"].tolist() == [6.0]  # 0.75·m + 0.25·v
    F32.add_("time_weighted", state, [torch.tensor([1.0, 1.0]), torch.tensor([2.0])], counter=1, alpha=0.5)
    assert state["a"].tolist() == [3.5, -2.5] and state["b"].tolist() == [7.0]


def test_accumulator_rounds_16_bit_state_from_the_statistic_fqn_and_counter():
    def rounded(key, fqn, counter):
        state = {fqn: torch.zeros(4096, dtype=torch.bfloat16)}
        Accumulator(torch.bfloat16).add_(key, state, [torch.full((4096,), 1.0 + 1 / 1000)], counter=counter)
        return state[fqn]

    a = rounded("taylor", "w", 3)
    assert torch.equal(a, rounded("taylor", "w", 3))  # a resumed run draws the same
    assert a.unique().tolist() == [1.0, 1.0078125]  # the two bf16 neighbours of 1.001
    for other in (rounded("movement", "w", 3), rounded("taylor", "v", 3), rounded("taylor", "w", 4)):
        assert not torch.equal(a, other)
    seed = (zlib.crc32(b"taylor/w") + 3 * 0x9E3779B1) % (1 << 63)
    assert Accumulator(torch.bfloat16).generator(torch.device("cpu"), "taylor", "w", 3).initial_seed() == seed


def test_one_update_casts_checks_and_multiplies_once(monkeypatch):
    import lightning_prune.trackers.base as base
    import lightning_prune.trackers.running as running

    calls = {"mul": 0, "finite": 0}
    mul, finite = base.foreach_mul, running.all_finite

    def counting_mul(*args):
        calls["mul"] += 1
        return mul(*args)

    def counting_finite(tensors):
        calls["finite"] += 1
        return finite(tensors)

    monkeypatch.setattr(base, "foreach_mul", counting_mul)
    monkeypatch.setattr(running, "all_finite", counting_finite)
    w = torch.nn.Parameter(torch.tensor([2.0, -1.0], dtype=torch.bfloat16))
    w.grad = torch.tensor([3.0, 4.0], dtype=torch.bfloat16)
    stats = RunningStats({"w": w}, ("platon", "taylor", "movement", "abs_grad"), platon_betas=(0.5, 0.5))
    assert stats.update({"w": w})
    assert calls == {"mul": 1, "finite": 1}
    assert stats.value("movement", "w").tolist() == [6.0, -4.0] and stats.value("taylor", "w").tolist() == [6.0, 4.0]
    assert stats.state["platon"]["w"].tolist() == [3.0, 2.0]  # 0.5·|w·g|: read after movement took w·g


def test_checkpoint_does_not_depend_on_the_order_statistics_are_listed_in():
    def run(order):
        w = torch.nn.Parameter(torch.tensor([[1.0, -2.0], [0.5, 3.0]]))
        stats = RunningStats({"w": w}, order, dtype=torch.bfloat16, window=2)
        for i in range(3):
            w.grad = torch.full((2, 2), 0.1 * (i + 1))
            stats.update({"w": w})
            stats.snapshot({"w": w})
            stats.add_inputs("w", torch.full((3, 2), float(i)))
        return stats

    names = ("abs_weight", "abs_grad", "movement", "taylor", "time_weighted", "input_norm", "platon")
    forward, backward = run(names), run(tuple(reversed(names)))
    a, b = forward.state_dict(), backward.state_dict()
    assert list(a) == [
        *("stats", "shapes", "counters", "inputs_seen", "inputs_skipped"),
        *("snapshots", "twa_norm", "state", "ring", "ring_index"),
    ]
    kept = ["abs_weight", "abs_grad", "movement", "taylor", "input_norm", "platon", "platon_uncertainty"]
    assert list(a["state"]) == kept  # in the listed order (a windowed time_weighted keeps a ring instead)
    assert list(b["state"]) == ["platon", "platon_uncertainty", *reversed(kept[:5])]
    assert a["ring_index"] == [2, 3] and a["inputs_seen"] == {"w": 3}
    for key, per in a["state"].items():
        assert torch.equal(per["w"], b["state"][key]["w"]), key
    assert forward.state["input_norm"]["w"] is forward.statistics["input_norm"].state["w"]  # the tensors, not copies


def test_reading_inputs_without_input_norm_is_a_key_error_naming_what_is_tracked():
    stats = RunningStats({"w": torch.nn.Parameter(torch.ones(2, 2))}, ("taylor",))
    with pytest.raises(KeyError, match=r"'input_norm' is not tracked; tracked: \['taylor'\]"):
        stats.add_inputs("w", torch.ones(1, 2))
    assert stats.ring == [] and stats.ring_index == [] and stats.twa_norm == 0.0
    assert {f: int(n) for f, n in stats.inputs_seen.items()} == {"w": 0} and int(stats.inputs_skipped) == 0

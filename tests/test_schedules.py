import pytest

from lightning_prune.schedules import AtEpochs, AtSteps, Cubic, Linear, OneShot


def test_at_epochs_holds_each_target_from_its_epoch_on():
    s = AtEpochs({2: 0.3, 4: 0.5, 6: 0.6})
    assert [s(e) for e in range(8)] == [0.0, 0.0, 0.3, 0.3, 0.5, 0.5, 0.6, 0.6]
    assert s.unit == "epoch" and s.last() == 6 and s.end_sparsity() == 0.6


def test_at_steps_counts_steps():
    s = AtSteps({10: 0.5})
    assert (s(9), s(10), s(1000), s.unit) == (0.0, 0.5, 0.5, "step")


def test_cubic_matches_zhu_gupta_formula():
    s = Cubic(final=0.8, start=10, end=110, initial=0.2, every=10)
    for t in [10, 20, 55, 100]:
        t_held = 10 + (t - 10) // 10 * 10
        expected = 0.8 + (0.2 - 0.8) * (1 - (t_held - 10) / 100) ** 3
        assert s(t) == pytest.approx(expected)
    assert s(5) == 0.0 and s(110) == 0.8 and s(500) == 0.8
    assert s(55) == s(50)  # held between updates every 10 steps


def test_linear_ramp():
    s = Linear(final=0.6, start=0, end=3, unit="epoch")
    assert [s(e) for e in range(5)] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.6])


def test_one_shot():
    s = OneShot(0.7, at=3)
    assert (s(2), s(3), s(9)) == (0.0, 0.7, 0.7)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_values_outside_the_unit_interval_are_rejected(bad):
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        AtEpochs({1: bad})
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        Cubic(final=bad, start=0, end=10)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        OneShot(bad)


def test_a_schedule_may_reach_one_and_a_weight_writer_refuses_it():
    from lightning_prune import ScheduledPruning

    assert (AtEpochs({1: 1.0})(1), Cubic(final=1.0, start=0, end=10)(10), OneShot(1.0)(0)) == (1.0, 1.0, 1.0)
    with pytest.raises(
        ValueError, match=r"would prune every selected weight; sparsity is a fraction of zeros in \[0, 1\)"
    ):
        ScheduledPruning(AtEpochs({1: 1.0}))


def test_decreasing_points_are_rejected():
    with pytest.raises(ValueError, match="must not decrease"):
        AtEpochs({1: 0.5, 2: 0.3})


def test_bad_windows_are_rejected():
    with pytest.raises(ValueError, match="start < end"):
        Cubic(final=0.5, start=10, end=10)
    with pytest.raises(ValueError, match="every must be >= 1"):
        Linear(final=0.5, start=0, end=10, every=0)
    with pytest.raises(ValueError, match="unit must be"):
        Cubic(final=0.5, start=0, end=10, unit="batch")
    with pytest.raises(ValueError, match="at least one"):
        AtSteps({})


def test_schedule_past_the_end_of_the_run_is_rejected():
    with pytest.raises(ValueError, match=r"epoch 6.*max_epochs=6"):
        AtEpochs({2: 0.3, 6: 0.6}).check_fits(max_epochs=6, max_steps=-1)
    with pytest.raises(ValueError, match=r"step 200.*max_steps=100"):
        Cubic(final=0.5, start=0, end=200).check_fits(max_epochs=None, max_steps=100)
    AtEpochs({2: 0.3, 5: 0.6}).check_fits(max_epochs=6, max_steps=-1)  # fits: no error

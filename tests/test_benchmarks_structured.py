"""benchmarks.structured: the summary's comparisons by hand, and the ``--quick`` run's JSON."""

import json

import pytest

from benchmarks import structured
from benchmarks.structured import DENSE, METHODS, ONESHOT, SCRATCH, SCRATCH_PRE, Config, beyond, summarize


def _row(method, seed, ppl, params=50):
    return {"method": method, "family": "gpt2", "seed": seed, "val_ppl": ppl, "params": params, "flops": 2 * params}


def test_the_summary_compares_beyond_the_seed_spread_by_hand():
    cfg = Config(families=("gpt2",), seeds=(0, 1), target=0.5)
    rows = [_row(DENSE, 0, 10.0, 100), _row(DENSE, 1, 20.0, 100)]
    rows += [_row("ours: taylor", 0, 11.0), _row("ours: taylor", 1, 21.0)]  # ppl 16 (11–21)
    rows += [_row("ours: activation", 0, 12.0), _row("ours: activation", 1, 22.0)]  # 17: not the best
    rows += [_row(ONESHOT, 0, 12.0), _row(ONESHOT, 1, 22.0)]  # 1 above ours, within the spread of 10
    rows += [_row(SCRATCH, 0, 40.0), _row(SCRATCH, 1, 41.0)]  # 24.5 above: beyond it
    s = summarize(rows, cfg)["gpt2"]
    ours = s["rows"]["ours: taylor"]
    assert ours["ratio"]["mean"] == pytest.approx((1.1 + 1.05) / 2) and ours["params_fraction"]["mean"] == 0.5
    goals = s["goals"]
    assert goals["best_of_ours"] == "ours: taylor"
    assert goals["below_one_shot"] == {"met": False, "difference": -1.0, "at_or_below": True}
    assert goals["below_scratch"]["met"] and SCRATCH_PRE not in s["rows"] and "below_scratch_pre" not in goals
    assert goals["exports_within_tolerance"]["ours: taylor"] == 0.0
    assert beyond({"mean": 1.0, "min": 0.9, "max": 1.1}, {"mean": 1.3, "min": 1.25, "max": 1.35})
    assert not beyond({"mean": 1.0, "min": 0.8, "max": 1.2}, {"mean": 1.3, "min": 1.25, "max": 1.35})


def test_quick_run_writes_every_row_the_speed_and_the_summary(tmp_path):
    out = tmp_path / "structured.json"
    argv = ["--quick", "--families", "llama", "--out", str(out), "--cache", str(tmp_path / "cache"), "--no-plot"]
    structured.main(argv)
    result = json.loads(out.read_text())
    assert {"conditions", "pretraining", "summary", "runs", "speed"} <= set(result)
    assert {r["method"] for r in result["runs"]} == set(METHODS) and set(result["pretraining"]) == {
        "llama",
        "llama-small",
    }
    steps, dense = result["conditions"]["config"]["steps"], next(r for r in result["runs"] if r["method"] == DENSE)
    target = result["conditions"]["config"]["target"]
    for r in result["runs"]:
        assert r["steps"] == steps and r["tokens"] == dense["tokens"] and r["val_ppl"] > 1
        if r["method"] != DENSE and "depth-only" not in r["method"]:
            assert abs(r["params"] / dense["params"] - target) <= 0.01 * target, r["method"]
    speed = result["speed"]["families"]["llama"]
    assert set(speed["rows"]) == set(METHODS) and all(
        s["throughput"]["flop_bound"] >= 1 for s in speed["shapes"].values()
    )
    assert set(result["summary"]["llama"]["rows"]) == set(METHODS)


def test_the_distillation_cost_benchmark_writes_each_configuration_beside_plain(tmp_path):
    from benchmarks import distill_cost

    result = distill_cost.main(["--quick", "--out", str(tmp_path / "cost.json")])
    assert set(result["seconds_per_step"]) == {"plain", "copy", "corrected"} and result["times_plain"]["plain"] == 1.0
    assert all(v > 0 for v in result["seconds_per_step"].values())
    assert (tmp_path / "cost.json").is_file()


def test_the_rounding_speed_benchmark_compares_each_cut_with_and_without_rounding(tmp_path):
    from benchmarks import rounding_speed

    rows = rounding_speed.main(["--quick", "--out", str(tmp_path / "speed.json")])["rows"]
    assert {r["shape"] for r in rows} == {"unrounded", "multiple of 128"}
    unrounded = next(r for r in rows if r["shape"] == "unrounded")
    assert unrounded["flop_bound"] == 1.0 and unrounded["throughput_efficiency"] == 1.0
    assert all(r["tokens_per_second"] > 0 and r["latency_ms"] > 0 for r in rows)


def test_the_structured_scale_benchmark_times_steps_and_events_beside_plain(tmp_path):
    from benchmarks import structured_scale

    result = structured_scale.main(["--quick", "--out", str(tmp_path / "scale.json")])
    assert set(result["seconds_per_step"]) == {"plain", "activation", "taylor"}
    assert result["times_plain"]["plain"] == 1.0 and set(result["event_seconds"]) == {"activation", "taylor"}
    assert all(len(r) == result["conditions"]["steps_per_fit"] for runs in result["steps"].values() for r in runs)

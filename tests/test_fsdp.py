"""FSDP2 (``ModelParallelStrategy``, 2 CPU processes over gloo): masks reach the target on the parameters that really
train, hold through AdamW with weight decay, equal a one-process selection from the same scores, and survive a
resume from a distributed or a single-file checkpoint."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_prune.masks import compute_masks

HERE = Path(__file__).parent


def _run(out: Path, *args: str) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, str(HERE / "fsdp_run.py"), str(out), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=out,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(out / f"{args[0]}.rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> list[dict]:
    return _run(tmp_path_factory.mktemp("full"), "full")


def test_sharded_parameters_are_pruned_held_and_agree_with_one_process(full):
    r0, r1 = full
    assert r0["is_dtensor"]  # the parameters configure_model sharded, not the ones setup saw
    total = sum(m.numel() for m in r0["masks"].values())
    assert r0["local_numel"] + r1["local_numel"] == total  # each process keeps one shard
    assert "probe.0.out.weight" in r0["masks"]  # a (1, 32) weight: rank 1's shard of it is empty, and it checkpoints
    assert sum(int((~m).sum()) for m in r0["masks"].values()) == round(0.5 * total)
    for f, keep in r0["masks"].items():
        assert torch.equal(keep, r1["masks"][f]), f
        assert torch.all(r0["weights"][f][~keep] == 0), f  # zero after AdamW steps with weight decay
        assert torch.count_nonzero(r0["weights"][f][keep]) == keep.sum(), f
    assert [e["step"] for e in r0["events"]] == [2, 6]
    assert r0["events"][-1]["sparsity"] == 0.5 and r0["sparsity"] == 0.5
    first, last = r0["scores"]  # the full scores of each event, as the shards saw them
    one = compute_masks(first, 0.3, "global")
    assert sum(int((~m).sum()) for m in one.values()) == round(0.3 * total)
    assert all(torch.equal(torch.isneginf(last[f]), ~one[f]) for f in one)  # first masks, then held
    reference = compute_masks(last, 0.5, "global")  # one process, one sort-free selection
    assert all(torch.equal(reference[f], r0["masks"][f]) for f in reference)


@pytest.mark.parametrize("checkpoint", ["distributed", "single"])
def test_resume_ends_with_the_masks_and_statistics_of_an_uninterrupted_run(tmp_path, full, checkpoint):
    extra = ["single"] if checkpoint == "single" else []
    _run(tmp_path, "first", *extra)
    assert (tmp_path / "first.ckpt").is_dir() == (checkpoint == "distributed")
    resumed = _run(tmp_path, "resume", *extra)
    for r in range(2):
        assert resumed[r]["steps"] == full[r]["steps"] == 8
        assert resumed[r]["events"] == full[r]["events"]
        for f in full[r]["masks"]:
            assert torch.equal(resumed[r]["masks"][f], full[r]["masks"][f]), f
            assert torch.equal(resumed[r]["taylor"][f], full[r]["taylor"][f]), f
            assert torch.equal(resumed[r]["weights"][f], full[r]["weights"][f]), f


def test_neuron_removal_on_sharded_weights_counts_towards_the_weight_target(tmp_path):
    r0, r1 = _run(tmp_path, "neurons")
    assert r0["removed"] == r1["removed"] == 0.5
    total = sum(m.numel() for m in r0["masks"].values())
    assert sum(int((w == 0).sum()) for w in r0["weights"].values()) == round(0.5 * total)  # zeros counted once
    for f, keep in r0["union"].items():  # the feed-forward biases too: every writer's entries held
        assert torch.equal(keep, r1["union"][f]), f
        assert torch.all(r0["all_weights"][f][~keep] == 0), f
    assert any("bias" in f for f in r0["union"])

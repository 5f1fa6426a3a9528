"""Several processes (CPU, gloo): every process ends with identical masks and statistics."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent


def _check_ranks(out: Path) -> None:
    r0, r1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert r0["steps"] == r1["steps"] == 3 * 4  # 64 samples / 2 processes / batch 8 = 4 steps per epoch
    for f in r0["masks"]:
        assert not torch.equal(r0["own_scores"][f], r1["own_scores"][f]), f  # each process scores differently...
        assert torch.equal(r0["masks"][f], r1["masks"][f]), f  # ...yet holds rank 0's masks
        assert torch.equal(r0["taylor"][f], r1["taylor"][f]), f
        assert torch.equal(r0["weights"][f], r1["weights"][f]), f
    assert len(r0["input_norms"]) == 2  # one per pruning event: averaged over the processes before scoring
    for n0, n1 in zip(r0["input_norms"], r1["input_norms"]):
        assert all(torch.equal(n0[f], n1[f]) for f in n0)
        assert all(n0[f].abs().sum() > 0 for f in n0 if "out_proj" not in f)  # out_proj is read without forward
    total = sum(m.numel() for m in r0["masks"].values())
    assert sum(int((~m).sum()) for m in r0["masks"].values()) == round(0.6 * total)


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp"])
def test_processes_agree_on_masks_and_statistics(tmp_path, strategy):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(HERE / "ddp_run.py"), str(tmp_path), strategy]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_ranks(tmp_path)

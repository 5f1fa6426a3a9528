"""benchmarks.mi_ablation: a tiny run's JSON, compensation effects and the joint-entropy ceiling."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_tiny_run_writes_every_compensation_and_a_saturating_joint_entropy(tmp_path):
    out = tmp_path / "mi.json"
    args = ["--sizes", "small", "--steps", "3", "--calib-batches", "2", "--val-batches", "1", "--threads", "1"]
    args += ["--recovery-steps", "1", "--only", "random (seed 0)", "conditional × output", "--out", str(out)]
    args += ["--cache", str(tmp_path / "cache")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "benchmarks.mi_ablation", *args]
    subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=ROOT, timeout=600)
    result = json.loads(out.read_text())["sizes"]["small"]
    rows = {r["variant"]: r for r in result["rows"]}
    assert set(rows) == {"random (seed 0)", "conditional × output"}
    for row in rows.values():
        for key in ("none/after_removal", "bias/after_removal", "refit/after_removal", "refit/after_recovery"):
            assert row[key] > 0
        assert 0 <= row["removed_activation_percentile"] <= 100
    bits = [result["joint_entropy"]["bits"][k] for k in ("1", "2", "4", "8", "16", "64")]
    assert all(a <= b + 1e-4 for a, b in zip(bits, bits[1:], strict=False))  # more neurons: never less entropy
    assert bits[-1] <= result["joint_entropy"]["ceiling_bits"] + 1e-4

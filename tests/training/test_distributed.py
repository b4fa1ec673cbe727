"""Data-parallel training: two CPU processes under torchrun (gloo), one epoch on ten synthetic clips."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path):
    run = tmp_path / "ddp"
    synth = ["sensor=[32, 32]", "duration_us=400000", "num_subjects_train=1", "num_subjects_test=1",
             "clips_per_class_per_subject=1"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "asasnn", "train", *[a for s in synth for a in ("--synthetic", s)],
           "--timesteps", "6", "--dt-us", "50000", "--ds", "1", "--epochs", "1", "--batch-size", "4",
           "--test-clips", "2", "--attention", "asa", "--device", "cpu", "--run-dir", str(run), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (row,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert row["world_size"] == 2 and row["samples"] == 10  # 5 clips a rank, summed over the ranks
    assert 0 <= row["val_acc"] <= 1 and row["val_nasfr"] > 0
    ck = torch.load(run / "last.pt", weights_only=True)
    assert ck["epoch"] == 1 and len(ck["rng"]) == 2  # each rank's random state, for resume
    assert not any(k.startswith("module.") for k in ck["model"])  # saved unwrapped

"""Two CPU processes under torchrun (gloo) train to the quality of one, with averaged gradients."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from muvo_model.config import load_run_config
from muvo_model.train import train

SETS = [
    "data.train_frames=128",
    "data.val_frames=128",
    "data.image_size=48",
    "data.points=256",
    "model.width=32",
    "train.batch_size=32",
    "train.steps=80",
    "train.log_every=20",
    "train.eval_every=80",
    "doctor.enabled=false",
]


@pytest.mark.slow
def test_two_process_gloo_matches_one_process() -> None:
    one = train(load_run_config(None, [*SETS, "train.threads=1"])).metrics["val_auroc"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    cmd += ["-m", "muvo_model.train", *[x for s in SETS for x in ("--set", s)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    # Only rank 0 logs: one final table, one line per log step.
    assert out.count("final metrics") == 1 and out.count("step 20 loss=") == 1
    # DDP averaged the gradients: both ranks took identical updates and end with identical weights.
    diff = float(re.search(r"ddp: 2 ranks, max parameter difference across ranks (\S+)", out).group(1))
    assert diff == 0.0
    two = float(re.search(r"val_auroc\s+(\S+)", out.split("final metrics")[1]).group(1))
    # The quality of one process, or better: two ranks see a different sharding of the same frames (seen
    # on torch 2.13 CPU: 0.958 with one process, 0.980 with two), so only a loss of quality is a failure.
    assert two >= one - 0.02, (one, two)

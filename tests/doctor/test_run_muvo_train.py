"""`muvo-doctor run -- muvo-train --fault ...`: the project's own training pipeline as an unmodified child."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from muvo_doctor.stream import read_observations

PY = sys.executable
# A tiny configuration: the data and the model are small, so the steps are cheap on a CPU.
TINY = [
    "--no-doctor",  # the wrapper is the doctor here
    *("--set", "data.train_frames=32", "--set", "data.val_frames=16", "--set", "data.image_size=32"),
    *("--set", "data.points=128", "--set", "model.width=16", "--set", "train.batch_size=8"),
    *("--set", "train.log_every=10", "--set", "train.eval_every=20", "--set", "train.threads=1"),
]


def muvo_train() -> list[str]:
    exe = shutil.which("muvo-train", path=str(Path(PY).parent))
    return [exe] if exe else [PY, "-m", "muvo_model.train"]


@pytest.mark.slow
def test_a_dead_muvo_train_run_is_caught_and_stopped_gracefully(tmp_path):
    report, record = tmp_path / "report.json", tmp_path / "run.jsonl"
    p = subprocess.run(
        [
            *(PY, "-m", "muvo_doctor", "run", "--stop-on", "dead"),
            *("--report", str(report), "--record", str(record), "--"),
            *muvo_train(),
            *TINY,
            *("--fault", "any-voxel-label", "--set", "train.steps=3000"),
        ],
        capture_output=True,
        timeout=300,
    )
    data = json.loads(report.read_text())
    assert data["verdict"] == "dead"
    assert "label_imbalance" in {f["check"] for f in data["findings"]}
    # Stopped long before its 3000 steps, through SIGINT: muvo-train's own graceful stop.
    assert p.returncode == 130, p.stderr.decode(errors="replace")[-2000:]
    assert data["steps"] < 3000
    assert b"--stop-on dead" in p.stderr
    obs = list(read_observations(record))
    names = {o.name for o in obs}
    # Tensors from the child (console script, no code change) and printed validation metrics.
    assert {"train/loss", "label/positive_fraction", "printed/loss", "val/auroc"} <= names

"""`muvo-doctor run -- muvo-train --fault ...`: the project's own training pipeline as an unmodified child."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from muvo_doctor.run.stream import read_observations

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
def test_a_dead_muvo_train_run_is_caught_and_stopped_gracefully(doctor_run, tmp_path):
    report, record = tmp_path / "report.json", tmp_path / "run.jsonl"
    p = doctor_run(
        *("--stop-on", "dead", "--report", str(report), "--record", str(record), "--"),
        *muvo_train(),
        *TINY,
        *("--fault", "any-voxel-label", "--set", "train.steps=3000"),
        timeout=300,
    )
    data = json.loads(report.read_text())
    assert data["verdict"] == "dead"
    # The loss reaches exactly 0 within ~25 steps (every label is 1): flat_loss says dead before
    # label_imbalance has its sampled points; the labels the child's recorder saw say why.
    assert {"flat_loss", "label_imbalance"} & {f["check"] for f in data["findings"]}
    # Stopped long before its 3000 steps, through SIGINT: muvo-train's own graceful stop.
    assert p.returncode == 130, p.stderr.decode(errors="replace")[-2000:]
    assert data["steps"] < 3000
    assert b"--stop-on dead" in p.stderr
    obs = list(read_observations(record))
    names = {o.name for o in obs}
    # Tensors from the child (console script, no code change) and printed validation metrics.
    assert {"train/loss", "label/positive_fraction", "printed/loss", "val/auroc"} <= names
    assert {o.value for o in obs if o.name == "label/positive_fraction"} == {1.0}


def test_a_healthy_muvo_train_run_loss_and_labels_describe_the_printed_loss(doctor_run, tmp_path):
    """Two BCE calls per step (frame (N,), points (N, P)); the program prints and optimises their sum."""
    report, record = tmp_path / "report.json", tmp_path / "run.jsonl"
    p = doctor_run(
        *("--plain", "--report", str(report), "--record", str(record)),
        *("--", PY, "-m", "muvo_model.train", *TINY, "--set", "train.steps=60"),
    )
    assert p.returncode == 0, p.stderr.decode(errors="replace")[-2000:]
    live = {f["check"] for f in json.loads(report.read_text())["findings"]}
    assert "label_imbalance" not in live
    obs = list(read_observations(record))
    loss = {o.step: o.value for o in obs if o.name == "train/loss"}
    printed = [(o.step, o.value) for o in obs if o.name == "printed/loss"]
    frac = [o.value for o in obs if o.name == "label/positive_fraction"]
    assert len(loss) == 60 and len(printed) == 6 and frac
    # The i-th printed loss (frame + 0.5 * point, 6 significant digits) is train/loss of step 10 (i + 1) - 1.
    for i, (_, v) in enumerate(printed):
        assert loss[10 * (i + 1) - 1] == pytest.approx(v, rel=1e-5, abs=1e-5)
    # Frame labels (one per sample, about a third positive), not per-point labels (a few % anomalous).
    assert 0.05 < sum(frac) / len(frac) < 0.95
    audit = subprocess.run(
        [PY, "-m", "muvo_doctor", "audit", "--json", str(record)], capture_output=True, timeout=60
    )
    found = json.loads(audit.stdout)["findings"]
    assert not [f for f in found if f["check"] == "label_imbalance"]
    # printed/loss agrees with train/loss (printed/acc, a mean over 10 steps, is another matter).
    assert not [
        f for f in found if f["check"] == "display_precision" and f["evidence"]["printed"] == "printed/loss"
    ]

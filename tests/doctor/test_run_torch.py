"""`muvo-doctor run` with real PyTorch children: unmodified scripts get instrumented and judged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from muvo_doctor.run.stream import read_observations

SCRIPTS = Path(__file__).resolve().parents[1] / "fixtures" / "scripts"
PY = sys.executable


def judged(
    doctor_run, tmp_path: Path, *command: str
) -> tuple[subprocess.CompletedProcess[bytes], dict, list]:
    """`muvo-doctor run` of ``command``: what it printed, its report and its record."""
    report, record = tmp_path / "report.json", tmp_path / "run.jsonl"
    p = doctor_run("--report", str(report), "--record", str(record), "--", *command)
    assert report.exists(), p.stderr.decode(errors="replace")
    return p, json.loads(report.read_text()), list(read_observations(record))


def checks_of(report: dict) -> set[str]:
    return {f["check"] for f in report["findings"]}


@pytest.mark.slow
def test_functional_losses_with_zero_lr_are_dead_and_seen(doctor_run, tmp_path):
    # 120 steps: the loss-trend window of the checks needs 100 points before a run is called dead.
    p, report, obs = judged(
        doctor_run, tmp_path, PY, str(SCRIPTS / "functional_losses.py"), "--lr", "0", "--steps", "120"
    )
    assert p.returncode == 0
    assert p.stdout.count(b" loss=") == 120  # the program's output is all there
    assert b"scripted ok 1.0986" in p.stdout  # torch.jit.script over a wrapped F.cross_entropy
    names = {o.name for o in obs}
    # Tensor-side telemetry from the child, with its rank ...
    assert {"train/loss", "grad/norm/total", "param/zero_lr"} <= names
    assert all(o.rank == 0 for o in obs if o.name == "train/loss")
    # ... including what only the patched functional losses can see (no loss module here).
    assert "loss_input/logits/max" in names
    # ... and the printed numbers, with the digits shown.
    assert {o.digits for o in obs if o.name == "printed/loss"} == {4}
    assert report["verdict"] == "dead"
    assert "frozen_parameters" in checks_of(report)
    assert b"CRITICAL frozen_parameters" in p.stderr


@pytest.mark.slow
def test_loss_modules_learning_run_is_not_dead(doctor_run, tmp_path):
    p, report, obs = judged(doctor_run, tmp_path, PY, str(SCRIPTS / "module_losses.py"))
    assert p.returncode == 0
    assert p.stdout.count(b"Loss: ") == 60
    names = {o.name for o in obs}
    assert {"train/loss", "loss_input/logits/max", "label/classes"} <= names
    assert report["verdict"] != "dead", report["findings"]
    assert "frozen_parameters" not in checks_of(report)
    assert "flat_loss" not in checks_of(report)


@pytest.mark.slow
def test_printed_zeros_while_the_loss_is_not_zero_is_a_display_precision_finding(doctor_run, tmp_path):
    p, report, obs = judged(
        doctor_run, tmp_path, PY, str(SCRIPTS / "functional_losses.py"), "--print-scale", "1e-5"
    )
    assert b"loss=0.0000" in p.stdout
    found = [f for f in report["findings"] if f["check"] == "display_precision"]
    assert found, report["findings"]
    assert "0.0000" in found[0]["message"]


@pytest.mark.slow
def test_torchrun_two_ranks_both_report(doctor_run, tmp_path):
    p, report, obs = judged(
        doctor_run,
        tmp_path,
        PY,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        str(SCRIPTS / "ddp_train.py"),
    )
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    ranks = {o.rank for o in obs if o.name == "train/loss"}
    assert ranks == {0, 1}
    assert p.stdout.count(b"loss=") == 8  # rank 0 prints


@pytest.mark.slow
def test_telemetry_bigger_than_the_pipe_arrives_complete(doctor_run, tmp_path):
    # 60 modules sampled every step: one flush (50 steps) is ~750 kB of JSON lines (3.0 MB for the
    # 200 steps, measured), far over a 64 KiB pipe. Chunks the pipe refuses wait in the child and
    # follow; none is dropped.
    cfg = tmp_path / "doctor.toml"
    cfg.write_text("sample_every = 1\n")
    report, record = tmp_path / "report.json", tmp_path / "run.jsonl"
    p = doctor_run(
        "--plain", "--record", str(record), "--report", str(report), "--",
        PY, str(SCRIPTS / "deep_mlp.py"), "--steps", "200",
        env={**os.environ, "MUVO_DOCTOR_CONFIG": str(cfg)},
    )  # fmt: skip
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    assert b"dropped" not in p.stderr
    obs = list(read_observations(record))
    for name in ("train/loss", "grad/norm/total", "grad/norm/60"):
        assert sorted(o.step for o in obs if o.name == name) == list(range(200)), name

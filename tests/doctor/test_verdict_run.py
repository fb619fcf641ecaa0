"""What a user of `muvo-doctor run` sees of the verdict rules: inconclusive without evidence, a slow
learner never stopped, and the same printed output giving the same report every time."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

PY = sys.executable


def report_of(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_sleep_is_inconclusive_not_healthy(doctor_run, tmp_path: Path) -> None:
    rep = tmp_path / "r.json"
    p = doctor_run("--report", str(rep), "--", "sleep", "1")
    assert p.returncode == 0  # the child's exit code
    data = report_of(rep)
    assert data["verdict"] == "inconclusive" and data["evidence_for_health"] is None
    assert data["findings"] == [] and data["steps"] == 0
    assert b"muvo-doctor: verdict inconclusive" in p.stderr


def test_a_python_child_that_crashes_before_training_is_inconclusive(doctor_run, tmp_path: Path) -> None:
    rep = tmp_path / "r.json"
    code = "print('epoch 0: loading data', flush=True)\nimport muvo_no_such_module_torch  # crash at import\n"
    p = doctor_run("--report", str(rep), "--fail-on", "warning", "--", PY, "-c", code)
    assert p.returncode == 1  # the child's own code: --fail-on warning is not reached by inconclusive
    assert b"ModuleNotFoundError" in p.stderr
    data = report_of(rep)
    assert data["verdict"] == "inconclusive" and data["evidence_for_health"] is None


SLOW_LEARNER = """
import math, random, sys, time
random.seed(1)
sit, steps, exact = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "exact"
for s in range(steps):
    if s < sit:
        loss = math.log(2) + (0.0 if exact else random.gauss(0, 0.01))
    else:
        loss = 0.25 + (math.log(2) - 0.25) * math.exp(-(s - sit) / 120) + random.gauss(0, 0.01)
    print(f"step {s} loss={loss:.4f}", flush=True)
    if s % 10 == 0:
        time.sleep(0.01)  # still running when a stop would come
"""


@pytest.mark.parametrize("exact", ["exact", "noisy"])
def test_a_slow_learner_at_ln2_for_400_steps_is_never_stopped_and_ends_healthy(
    doctor_run, tmp_path: Path, exact: str
) -> None:
    # Printed-only (no torch): the loss sits at ln 2 (exactly 0.6931 at 4 decimals, or noisy) for 450
    # steps, then learns. Dead while it sits there, but never for the confirmation window.
    script = tmp_path / "slow.py"
    script.write_text(SLOW_LEARNER, encoding="utf-8")
    rep = tmp_path / "r.json"
    p = doctor_run("--stop-on", "dead", "--report", str(rep), "--", PY, str(script), "450", "1000", exact)
    err = p.stderr.decode(errors="replace")
    assert p.returncode == 0, err[-2000:]
    assert "--stop-on dead" not in err and "training DEAD" not in err
    assert p.stdout.count(b"\n") == 1000  # every step ran
    data = report_of(rep)
    assert data["verdict"] == "healthy", data
    assert data["evidence_for_health"].startswith("train/loss fell 0.69")
    # It was dead while it sat there (the live line said so), and that finding stays in the report, resolved.
    assert "muvo-doctor: CRITICAL" in err
    assert any(f["resolved_step"] is not None for f in data["findings"])
    assert all(f["severity"] != "critical" or f["resolved_step"] is not None for f in data["findings"])


REPRO = """
import math, os, random, sys, time
rng = random.Random(7)            # the printed numbers: the same every run
jitter = random.Random(os.getpid())  # the timing of the writes: different every run
for s in range(700):
    if s < 150:
        loss = 0.6931
    elif s < 400:
        loss = 0.6931 - 0.3 * (1 - math.exp(-(s - 150) / 60)) + rng.gauss(0, 0.01)
    else:
        loss = 0.39 + rng.gauss(0, 0.01)
    line = f"step {s} loss={loss:.4f}"
    if s % 100 == 99:
        line += f" val_acc={0.5 + s / 2000:.3f}"
    sys.stdout.write(line + "\\n")
    if jitter.random() < 0.2:
        sys.stdout.flush()
        time.sleep(jitter.random() * 0.003)
sys.stdout.flush()
"""


def test_the_same_printed_output_gives_the_same_report_10_times_out_of_10(doctor_run, tmp_path: Path) -> None:
    script = tmp_path / "repro.py"
    script.write_text(REPRO, encoding="utf-8")
    reports = []
    for i in range(10):
        rep = tmp_path / f"r{i}.json"
        p = doctor_run("--report", str(rep), "--", PY, str(script))
        assert p.returncode == 0, p.stderr.decode(errors="replace")[-2000:]
        reports.append(rep.read_text(encoding="utf-8"))  # no timing fields in a report
    first = json.loads(reports[0])
    assert first["findings"], "the series should give findings whose first steps can differ"
    assert {f["check"] for f in first["findings"]} & {"flat_loss", "loss_not_decreasing"}
    assert all(r == reports[0] for r in reports), [
        (
            json.loads(r)["verdict"],
            [(f["check"], f["step"], f["resolved_step"]) for f in json.loads(r)["findings"]],
        )
        for r in reports
    ]

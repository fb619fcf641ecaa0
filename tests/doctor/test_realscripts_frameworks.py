"""Real training scripts, unmodified, under `muvo-doctor run`: plain PyTorch, a Lightning module and a
Hugging Face Trainer (a tiny BERT built from a config, nothing downloaded).

What a user sees at the end (the report): a healthy run ends healthy with no warning; random labels at
a 10% prior end dead with prior_baseline; a learning rate of 0 ends dead with frozen_parameters as the
headline (the first finding of the report), and its message says the learning rate is 0.
The scripts are in tests/fixtures/scripts/tiny_*.py (200 steps each, one CPU thread).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "fixtures" / "scripts"
PY = sys.executable

FRAMEWORKS = {
    "torch": ("tiny_torch.py", None),
    "lightning": ("tiny_lightning.py", "lightning"),
    "hf": ("tiny_hf.py", "transformers"),
}


def wrapped(tmp_path: Path, framework: str, mode: str, seed: int = 0) -> dict:
    script, needs = FRAMEWORKS[framework]
    if needs:
        pytest.importorskip(needs)
        if needs == "transformers":
            pytest.importorskip("accelerate")
    report = tmp_path / f"{framework}-{mode}-{seed}.json"
    # A fixed sampling schedule: by default the recorder stretches its sampling interval to the measured
    # step time, so which steps are sampled (labels, accuracy, gradients) would follow the machine's load.
    # Fixed, the report is a function of the script and its seed (the training is deterministic on CPU).
    config = tmp_path / "doctor.toml"
    config.write_text("sample_every = 5\n", encoding="utf-8")
    p = subprocess.run(
        [PY, "-m", "muvo_doctor", "run", "--plain", "--config", str(config), "--report", str(report), "--",
         PY, str(SCRIPTS / script), "--mode", mode, "--seed", str(seed)],
        capture_output=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr.decode(errors="replace")[-3000:]
    assert report.exists(), p.stderr.decode(errors="replace")[-3000:]
    return json.loads(report.read_text())


def alarms(report: dict) -> list[str]:
    return [
        f"{f['check']} {f['severity']}: {f['message']}" for f in report["findings"] if f["severity"] != "info"
    ]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_healthy_plain_torch_is_healthy_in_5_of_5_seeds(tmp_path: Path, seed: int) -> None:
    report = wrapped(tmp_path, "torch", "healthy", seed)
    assert report["verdict"] == "healthy", alarms(report)
    assert alarms(report) == []
    assert report["evidence_for_health"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("framework", "seed"), [*(("lightning", s) for s in range(5)), ("hf", 0)], ids=lambda x: str(x)
)
def test_healthy_framework_run_is_healthy_without_a_warning(
    tmp_path: Path, framework: str, seed: int
) -> None:
    # Lightning: gradients are made inside optimizer.step(closure) (5 of 5 seeds); HF: the lr warms up
    # from 0 and attention query/key gradients are ~1e-5 of the classifier's. None of it is a finding.
    report = wrapped(tmp_path, framework, "healthy", seed)
    assert report["verdict"] == "healthy", alarms(report)
    assert alarms(report) == []


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["torch", "lightning", "hf"])
def test_random_labels_at_a_10_percent_prior_end_dead_with_prior_baseline(
    tmp_path: Path, framework: str
) -> None:
    report = wrapped(tmp_path, framework, "random-labels")
    assert report["verdict"] == "dead", alarms(report)
    critical = [f for f in report["findings"] if f["severity"] == "critical" and f["resolved_step"] is None]
    assert "prior_baseline" in {f["check"] for f in critical}, alarms(report)


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["torch", "lightning", "hf"])
def test_zero_lr_ends_dead_with_frozen_parameters_as_the_headline(tmp_path: Path, framework: str) -> None:
    report = wrapped(tmp_path, framework, "zero-lr")
    assert report["verdict"] == "dead", alarms(report)
    head = report["findings"][0]
    assert (head["check"], head["severity"], head["resolved_step"]) == ("frozen_parameters", "critical", None)
    assert head["message"].startswith("The learning rate is 0 at all")
    assert "not improving" in head["message"] and "gradient" not in head["message"]
    assert head["evidence"]["lr"] == 0.0

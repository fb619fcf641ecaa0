"""What a newcomer meets first: `--version`, help texts, and plain output that stays whole in a pipe."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import pytest

from muvo_doctor.cli import COMMANDS
from muvo_doctor.core.finding import Finding, Report
from muvo_doctor.face.report import render_report

PY = sys.executable


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "muvo_doctor", *args], capture_output=True, text=True, timeout=60)


def test_version_prints_the_package_version():
    p = cli("--version")
    assert p.returncode == 0
    assert p.stdout == f"muvo-doctor {version('muvo-doctor')}\n"


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_texts_show_percent_signs_once(command):
    p = cli(*([command] if command else []), "--help")
    assert p.returncode == 0 and "usage: muvo-doctor" in p.stdout
    assert "%%" not in p.stdout
    if command == "run":
        assert "acc 89.9%," in p.stdout


SENTENCE = (
    "demo: fault random-labels caught by prior_baseline (critical, step 106), metric_stuck (warning, "
    "step 120, resolved at step 160); verdict dead."
)


def test_a_demo_sentence_stays_on_one_line_in_a_pipe():
    # stdout is a pipe here, as in `muvo-doctor demo --plain | grep "verdict dead"`.
    code = f"from muvo_doctor.commands.demo import _say; _say({SENTENCE!r}, plain=False); _say({SENTENCE!r}, plain=True)"
    p = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60, env={"COLUMNS": "80"})
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [SENTENCE, SENTENCE]


def test_a_plain_report_never_wraps_a_line():
    long = "the loss sits at the prior's entropy " * 8  # ~300 characters
    f = Finding(check="prior_baseline", severity="critical", step=7, message=long.strip(), advice="act " * 40)
    report = Report(source="python train.py " + "--flag " * 30, verdict="dead", steps=9, findings=[f])
    lines = render_report(report, None, color=False, width=60).splitlines()
    assert lines[0] == f"CRITICAL prior_baseline (step 7): {long.strip()}"
    assert any(ln.strip() == "what to do: " + ("act " * 40).strip() for ln in lines)
    assert lines[-1].startswith("dead: 1 critical in 9 steps (python train.py --flag") and lines[-1].endswith(
        ")"
    )

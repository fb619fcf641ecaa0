"""The text report of the new verdicts: inconclusive, the evidence line, resolved findings, the headline first;
and when it (and the dashboard) is coloured."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from muvo_doctor.core.doctor import Doctor
from muvo_doctor.core.finding import Finding, Report
from muvo_doctor.face.dashboard import make_view
from muvo_doctor.face.live import LiveView
from muvo_doctor.face.report import render_report, summary_line
from muvo_doctor.face.style import use_color


def _f(check: str, severity: str, step: int = 10, resolved: int | None = None) -> Finding:
    return Finding(
        check=check,
        severity=severity,
        step=step,
        message=f"{check} says so",
        advice="do x",
        resolved_step=resolved,
    )


def test_inconclusive_says_so_without_a_healthy_word() -> None:
    rep = Report(source="sleep 1", verdict="inconclusive", steps=0, findings=[])
    text = render_report(rep, chart=False)
    assert (
        text.strip()
        == "inconclusive (too little to judge: no sign of learning yet): no findings in 0 steps (sleep 1)"
    )
    assert "healthy" not in text


def test_healthy_states_its_evidence_and_lists_resolved_findings_last() -> None:
    rep = Report(
        source="python train.py",
        verdict="healthy",
        steps=1000,
        evidence_for_health="train/loss fell 0.6931 -> 0.2707 over 999 steps, 294x its noise",
        findings=[_f("flat_loss", "critical", 0, resolved=450), _f("label_imbalance", "info")],
    )
    lines = render_report(rep, chart=False, width=200).splitlines()
    assert lines[0].startswith("INFO     label_imbalance (step 10)")
    resolved = next(i for i, ln in enumerate(lines) if ln.startswith("RESOLVED"))
    assert lines[resolved] == (
        "RESOLVED flat_loss (was critical from step 0, resolved at step 450): flat_loss says so"
    )
    assert "what to do" not in lines[resolved + 1]  # nothing to do about what no longer holds
    assert (
        lines[-2] == "evidence of learning: train/loss fell 0.6931 -> 0.2707 over 999 steps, 294x its noise"
    )
    assert lines[-1] == "healthy: 1 info, 1 resolved in 1000 steps (python train.py)"


def test_the_headline_cause_comes_first_in_the_text_report() -> None:
    rep = Report(
        source="t",
        verdict="dead",
        steps=300,
        findings=[_f("prior_baseline", "critical"), _f("frozen_parameters", "warning")],
    )
    text = render_report(rep, chart=False, width=200)
    assert text.index("frozen_parameters") < text.index("prior_baseline")
    assert summary_line(rep) == "dead: 1 critical, 1 warning in 300 steps (t)"


@pytest.mark.parametrize(
    ("env", "tty", "plain", "colour"),
    [
        ({}, True, False, True),
        ({}, False, False, False),  # a pipe or a file
        ({}, True, True, False),  # --plain
        ({"NO_COLOR": "1"}, True, False, False),
        ({"NO_COLOR": "1", "FORCE_COLOR": "1"}, True, False, False),  # NO_COLOR wins
        ({"FORCE_COLOR": "1"}, False, False, True),
        ({"TERM": "dumb"}, True, False, False),
    ],
)
def test_report_and_dashboard_agree_on_colour(
    monkeypatch: pytest.MonkeyPatch, env: dict, tty: bool, plain: bool, colour: bool
) -> None:
    for name in ("NO_COLOR", "FORCE_COLOR", "TERM", "TTY_COMPATIBLE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    class Stream(io.StringIO):
        def isatty(self) -> bool:
            return tty

    assert use_color(Stream(), plain) is colour
    view = make_view(Doctor(checks=()), title="t", plain=plain, console=Console(file=Stream()), err=Stream())
    assert isinstance(view, LiveView) is colour
    rep = Report(source="t", verdict="dead", steps=3, findings=[_f("prior_baseline", "critical")])
    assert ("\x1b[" in render_report(rep, chart=False, color=use_color(Stream(), plain))) is colour

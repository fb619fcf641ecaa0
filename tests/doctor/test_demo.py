"""`muvo-doctor demo`: usage errors, the child command line, and how a run is judged (no training here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from muvo_doctor.cli import main
from muvo_doctor.commands import demo
from muvo_doctor.core.finding import Finding


def _f(check: str, severity: str = "critical", step: int | None = 120) -> Finding:
    return Finding(check=check, severity=severity, step=step, message="m", advice="a")  # type: ignore[arg-type]


def test_list_faults_forwards_to_muvo_train(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--list-faults"]) == 0
    out = capsys.readouterr().out
    for name in ("self-supervised-mean", "random-labels", "zero-lr", "dead-relu"):
        assert name in out
    assert "prior_baseline" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--fault", "nope"], "--fault nope: unknown fault; known faults: self-supervised-mean"),
        (["--story", "--fault", "zero-lr"], "--story runs its own faults"),
        (
            ["--snapshot", "dash.png"],
            "--snapshot dash.png: unsupported file type '.png'; use a .svg or .html",
        ),
        (
            ["--report", "no/such/dir/r.json"],
            "--report no/such/dir/r.json: folder no/such/dir does not exist",
        ),
        (["--set", "train.steps"], "--set 'train.steps': expected SECTION.KEY=VALUE"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("muvo-doctor demo: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_steps_must_be_positive() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "muvo_doctor", "demo", "--steps", "0"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "expected a positive whole number, got 0" in proc.stderr


def test_train_command_wraps_muvo_train_without_its_own_doctor() -> None:
    cmd = demo.train_command("random-labels", 50, ["data.image_size=16"])
    assert cmd[:4] == [sys.executable, "-m", "muvo_model.train", "--no-doctor"]
    assert cmd[4:] == [
        *("--fault", "random-labels", "--set", "train.steps=50"),
        *(
            "--set",
            "train.eval_every=20",
            "--set",
            "data.image_size=16",
        ),  # the user's --set comes last: it wins
    ]
    assert "--fault" not in demo.train_command("none", None, [])


def test_story_is_the_incident_in_order() -> None:
    assert [a.fault for a in demo.STORY] == ["self-supervised-mean", "random-labels", "none"]
    assert "0.0000" in demo.STORY[0].story and "0.325" in demo.STORY[1].story
    from muvo_model.faults import FAULTS

    assert all(a.fault in FAULTS for a in demo.STORY[:2])


def test_one_run_writes_the_report_and_snapshot_where_asked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The story writes one file per act (test_story_runs_three_acts...); one run writes the paths as given.
    files: list[tuple[Path | None, Path | None]] = []

    def fake_run(command, title, plain, report, snapshot):  # type: ignore[no-untyped-def]
        files.append((report, snapshot))
        return 0, SimpleNamespace(findings=[_f("prior_baseline")], verdict="dead")

    monkeypatch.setattr(demo, "_run_once", fake_run)
    report, snapshot = tmp_path / "r.json", tmp_path / "dash.svg"
    argv = ["demo", "--fault", "random-labels", "--plain"]
    assert main([*argv, "--report", str(report), "--snapshot", str(snapshot)]) == 0
    assert main(argv) == 0
    assert files == [(report, snapshot), (None, None)]


def _demo(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fault: str, doctor: object
) -> tuple[int, str]:
    """`muvo-doctor demo [--fault FAULT] --plain` on a run the doctor judged as ``doctor`` (no training):
    the exit code and the sentence the demo prints."""
    monkeypatch.setattr(demo, "_run_once", lambda *a: (0, doctor))
    code = main(["demo", "--plain", *(["--fault", fault] if fault != "none" else [])])
    return code, capsys.readouterr().out.strip()


def test_demo_says_caught_missed_and_false_alarm(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def said(fault: str, *findings: Finding, **doctor: str) -> tuple[int, str]:
        return _demo(monkeypatch, capsys, fault, SimpleNamespace(findings=list(findings), **doctor))

    code, text = said("random-labels", _f("prior_baseline"), _f("flat_loss", "warning", 3), verdict="dead")
    assert code == 0
    assert text == "demo: fault random-labels caught by prior_baseline (critical, step 120); verdict dead."
    code, text = said("zero-lr", _f("flat_loss", "warning"))
    assert code == 1 and "was NOT caught: expected one of frozen_parameters, loss_not_decreasing" in text
    assert "raised flat_loss" in text
    # An info finding is not a catch.
    assert said("random-labels", _f("prior_baseline", "info"))[0] == 1
    code, text = said("none", _f("loss_spike", "warning", 7))
    assert code == 1 and "healthy run was flagged: loss_spike (warning)" in text
    assert said("none", _f("x", "info"))[0] == 0


def test_demo_healthy_needs_evidence_and_resolved_findings_do_not_flag_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    resolved = _f("loss_spike", "warning", 7).model_copy(update={"resolved_step": 50})
    doc = SimpleNamespace(findings=[resolved], verdict="healthy", evidence="train/loss fell 0.69 -> 0.2")
    code, text = _demo(monkeypatch, capsys, "none", doc)
    assert code == 0 and text.startswith("demo: healthy run: verdict healthy (train/loss fell 0.69 -> 0.2)")
    code, text = _demo(monkeypatch, capsys, "none", SimpleNamespace(findings=[], verdict="inconclusive"))
    assert code == 1 and "ended inconclusive" in text
    # A fault caught and later resolved is still caught; the sentence says it resolved.
    caught = _f("frozen_parameters").model_copy(update={"resolved_step": 300})
    code, text = _demo(monkeypatch, capsys, "zero-lr", SimpleNamespace(findings=[caught], verdict="dead"))
    assert code == 0 and "frozen_parameters (critical, step 120, resolved at step 300)" in text


def test_story_runs_three_acts_with_narrative_and_per_act_files(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    calls: list[tuple[list[str], str, Path | None, Path | None]] = []
    caught = {
        "self-supervised-mean": [_f("constant_output")],
        "random-labels": [_f("prior_baseline")],
        "none": [],
    }

    def fake_run(command: list[str], title: str, plain: bool, report: Path | None, snapshot: Path | None):  # type: ignore[no-untyped-def]
        calls.append((command, title, report, snapshot))
        fault = command[command.index("--fault") + 1] if "--fault" in command else "none"
        return 0, SimpleNamespace(findings=caught[fault], verdict="dead" if caught[fault] else "healthy")

    monkeypatch.setattr(demo, "_run_once", fake_run)
    files = ["--report", str(tmp_path / "r.json"), "--snapshot", str(tmp_path / "dash.svg")]
    rc = main(["demo", "--story", "--plain", *files, "--steps", "7"])
    out = capsys.readouterr().out
    assert rc == 0
    assert [c[1] for c in calls] == [
        "muvo-doctor demo --fault self-supervised-mean",
        "muvo-doctor demo --fault random-labels",
        "muvo-doctor demo",
    ]
    assert [c[2] for c in calls] == [
        tmp_path / "r-1-self-supervised-mean.json",
        tmp_path / "r-2-random-labels.json",
        tmp_path / "r-3-none.json",
    ]
    assert [c[3] for c in calls] == [
        tmp_path / "dash-1-self-supervised-mean.svg",
        tmp_path / "dash-2-random-labels.svg",
        tmp_path / "dash-3-none.svg",
    ]
    assert all("train.steps=7" in c[0] for c in calls)
    # Narrative before each act, the judgement after it, in order.
    order = [
        out.index(s)
        for s in (
            "Act 1/3",
            "caught by constant_output",
            "Act 2/3",
            "caught by prior_baseline",
            "Act 3/3",
            "healthy run: verdict healthy",
        )
    ]
    assert order == sorted(order)

    caught["random-labels"] = []  # the doctor misses act 2: the demo says so and exits 1
    calls.clear()
    assert main(["demo", "--story", "--plain"]) == 1
    assert "fault random-labels was NOT caught" in capsys.readouterr().out
    assert len(calls) == 3


def test_a_failing_training_stops_the_demo_with_its_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo, "_run_once", lambda *a: (3, SimpleNamespace(findings=[], verdict="healthy")))
    assert main(["demo", "--story", "--plain"]) == 3
    assert "muvo-doctor demo: the training exited with code 3" in capsys.readouterr().err

"""The Doctor's verdict rules: findings with a lifecycle, evaluation on a grid of steps, evidence before
"healthy", the headline (cause before symptom), and the confirmation window of dead verdicts."""

from __future__ import annotations

import math
from types import ModuleType

import numpy as np
import pytest

from muvo_doctor.core.config import DoctorConfig
from muvo_doctor.core.doctor import (
    Doctor,
    confirm_window,
    confirmed_dead,
    evidence_for_health,
    headline,
    next_grid_step,
    order_findings,
)
from muvo_doctor.core.finding import Finding, Report
from muvo_doctor.core.history import History
from muvo_doctor.core.observation import Observation


def scripted(
    check_id: str, holds: callable, severity: str = "critical", retractable: bool = False
) -> ModuleType:
    """A check module whose finding holds whenever ``holds(last_step)`` is true."""
    mod = ModuleType(f"scripted_{check_id}")
    mod.ID = check_id
    mod.calls = []
    if retractable:
        mod.RETRACTABLE = True

    def check(history: History, config: DoctorConfig) -> list[Finding]:
        last = history.last_step
        mod.calls.append(last)
        if not holds(last):
            return []
        return [
            Finding(
                check=check_id,
                severity=severity,
                step=last,
                message=f"{check_id} holds at step {last}",
                evidence={"last": last},
                advice="fix it",
            )
        ]

    mod.check = check
    return mod


def feed(d: Doctor, steps: range, value=lambda s: 1.0, name: str = "train/loss") -> None:
    for s in steps:
        d.observe(Observation(name=name, step=s, value=float(value(s))))


# -- lifecycle ---------------------------------------------------------------------------------


def test_a_finding_holds_resolves_and_comes_back() -> None:
    mod = scripted("flat_loss", lambda last: 100 <= last < 200 or last >= 300)
    d = Doctor(checks=[mod])
    feed(d, range(0, 150))
    [f] = d.findings
    assert f.step == 100 and f.resolved_step is None and d.verdict == "dead"
    feed(d, range(150, 260))
    [f] = d.findings
    # Resolved at the first grid step where the check no longer returned it; severity kept for the record.
    assert f.resolved_step == 200 and f.severity == "critical" and f.step == 100
    assert d.verdict != "dead"
    feed(d, range(260, 330))
    [f] = d.findings
    # Back again: it holds, resolved_step cleared, its first step kept (when the problem was first seen).
    assert f.resolved_step is None and f.step == 100 and d.verdict == "dead"
    assert f.message == "flat_loss holds at step 325"  # the latest evaluation's words


def test_resolved_findings_stay_in_the_json_report_with_their_step() -> None:
    d = Doctor(checks=[scripted("loss_spike", lambda last: 50 <= last < 100, severity="warning")])
    feed(d, range(0, 200), value=lambda s: 2.3 * math.exp(-s / 50) + 0.1)
    d.evaluate()
    rep = Report.model_validate_json(d.report().to_json())
    [f] = rep.findings
    assert (f.check, f.severity, f.step, f.resolved_step) == ("loss_spike", "warning", 50, 100)
    assert rep.verdict == "healthy"  # the warning no longer holds, and the loss fell
    assert rep.evidence_for_health is not None and rep.evidence_for_health.startswith("train/loss fell")


def test_retractable_is_ignored_every_check_follows_the_same_rule() -> None:
    plain = scripted("flat_loss", lambda last: last < 100)
    retr = scripted("loss_not_decreasing", lambda last: last < 100, retractable=True)
    d = Doctor(checks=[plain, retr])
    feed(d, range(0, 300))
    d.evaluate()
    assert {f.check: f.resolved_step for f in d.findings} == {"flat_loss": 100, "loss_not_decreasing": 100}
    assert all("No longer holds" not in f.message for f in d.findings)


def test_severity_while_it_holds_is_the_latest() -> None:
    mod = ModuleType("two_levels")
    mod.ID = "prior_baseline"
    mod.check = lambda h, c: [
        Finding(
            check="prior_baseline",
            severity="warning" if h.last_step < 100 else "critical",
            step=h.last_step,
            message="m",
            advice="a",
        )
    ]
    d = Doctor(checks=[mod])
    feed(d, range(0, 60))
    assert d.verdict == "warning"
    feed(d, range(60, 130))
    assert d.verdict == "dead" and d.findings[0].step == 25  # first step kept, severity the latest


# -- the grid of steps --------------------------------------------------------------------------


def test_checks_run_at_grid_steps_and_see_exactly_the_steps_up_to_them() -> None:
    mod = scripted("flat_loss", lambda last: False)
    d = Doctor(checks=[mod])
    feed(d, range(0, 101))
    assert mod.calls == [25, 50, 75]  # step 100 is not complete until an observation past it arrives
    feed(d, range(101, 102))
    assert mod.calls[-1] == 100
    d.evaluate()  # the end: everything seen
    assert mod.calls[-1] == 101


def test_the_same_observations_in_different_chunks_give_the_same_findings() -> None:
    def run(chunk: int) -> str:
        mod = scripted("flat_loss", lambda last: last % 200 >= 100)
        d = Doctor(checks=[mod])
        obs = [Observation(name="train/loss", step=s, value=1.0 / (1 + s)) for s in range(0, 777)]
        for i in range(0, len(obs), chunk):
            d.observe_many(obs[i : i + chunk])
        d.evaluate()
        return d.report().to_json()

    assert run(1) == run(7) == run(500)


def test_grid_grows_with_long_runs() -> None:
    cfg = DoctorConfig()
    grid, g = [], 0
    while g < 20_000:
        g = next_grid_step(g, cfg)
        grid.append(g)
    gaps = np.diff(grid)
    assert gaps[0] == 25 and gaps.max() <= 0.02 * 20_000 + 25
    assert len(grid) < 20_000 / 25 / 2  # far fewer than a fixed 25-step grid


def test_printed_lines_that_run_ahead_are_held_until_the_clock_passes_them() -> None:
    mod = scripted("metric_stuck", lambda last: False)
    d = Doctor(checks=[mod])
    d.observe(Observation(name="val/acc", step=90, value=0.5), clock=False)  # printed, ahead of telemetry
    feed(d, range(0, 60))
    assert "val/acc" not in d.history  # held: evaluations at 25 and 50 did not see step 90
    feed(d, range(60, 120))
    assert "val/acc" in d.history


# -- evidence and inconclusive ------------------------------------------------------------------


def test_no_data_is_inconclusive_not_healthy() -> None:
    d = Doctor()
    d.evaluate()
    rep = d.report()
    assert rep.verdict == "inconclusive" and rep.evidence_for_health is None and rep.steps == 0


def test_too_few_points_is_inconclusive() -> None:
    d = Doctor()
    feed(d, range(10), value=lambda s: 2.3 - 0.1 * s)
    d.evaluate()
    assert d.verdict == "inconclusive"


def test_a_falling_loss_is_evidence_with_its_numbers() -> None:
    rng = np.random.default_rng(0)
    h = History()
    for s in range(400):
        h.add_point("train/loss", s, 2.3 * math.exp(-s / 80) + 0.4 + rng.normal(0, 0.02))
    text = evidence_for_health(h, DoctorConfig())
    assert text is not None
    assert text.startswith("train/loss fell 2.") and "over 399 steps" in text and "x its noise" in text


def test_a_loss_within_its_noise_is_no_evidence() -> None:
    rng = np.random.default_rng(1)
    h = History()
    for s in range(400):
        h.add_point("train/loss", s, 0.693 + rng.normal(0, 0.05))
    assert evidence_for_health(h, DoctorConfig()) is None


def test_falling_onto_the_label_prior_is_no_evidence() -> None:
    # Random labels at p = 0.1: the loss falls from ln 2 to H(0.1) = 0.325 and stays there.
    rng = np.random.default_rng(2)
    h = History()
    for s in range(300):
        h.add_point("train/loss", s, 0.325 + 0.37 * math.exp(-s / 10) + rng.normal(0, 0.01))
        h.add_point("label/positive_fraction", s, 0.1)
    assert evidence_for_health(h, DoctorConfig()) is None


@pytest.mark.parametrize(
    ("name", "values", "shown"),
    [
        # medians of the first and last thirds
        ("val/acc", [0.31, 0.45, 0.52, 0.61, 0.66, 0.70], "val/acc rose 0.38 -> 0.68 over 500 steps"),
        ("val/auroc", [0.55, 0.63, 0.71, 0.78, 0.82, 0.85], "val/auroc rose"),
        ("val/f1", [10.0, 20.0, 35.0, 50.0, 61.0, 70.0], "val/f1 rose 15 -> 65.5 over 500 steps"),
    ],
)
def test_a_rising_metric_is_evidence(name: str, values: list[float], shown: str) -> None:
    h = History()
    for i, v in enumerate(values):
        h.add_point(name, 100 * i, v)
    text = evidence_for_health(h, DoctorConfig())
    assert text is not None and text.startswith(shown), text


def test_an_auroc_that_stays_at_chance_is_no_evidence() -> None:
    h = History()
    for i, v in enumerate([0.44, 0.47, 0.50, 0.52, 0.55, 0.56]):
        h.add_point("val/auroc", 100 * i, v)
    assert evidence_for_health(h, DoctorConfig()) is None


# -- headline and order -------------------------------------------------------------------------


def _f(check: str, severity: str, step: int = 10, resolved: int | None = None) -> Finding:
    return Finding(
        check=check, severity=severity, step=step, message=check, advice="a", resolved_step=resolved
    )


def test_the_cause_is_the_headline_before_the_critical_symptom_it_produces() -> None:
    fs = [_f("prior_baseline", "critical"), _f("flat_loss", "critical"), _f("frozen_parameters", "warning")]
    assert headline(fs).check == "frozen_parameters"
    assert [f.check for f in order_findings(fs)] == ["frozen_parameters", "flat_loss", "prior_baseline"]


def test_outcome_before_mechanism_otherwise_and_resolved_last() -> None:
    fs = [
        _f("vanishing_gradients", "warning"),
        _f("label_imbalance", "info"),
        _f("flat_loss", "critical", resolved=200),
        _f("overfitting", "warning"),
        _f("frozen_parameters", "warning"),  # none of its symptoms holds: just a mechanism
    ]
    order = [f.check for f in order_findings(fs)]
    assert order == [
        "overfitting",
        "vanishing_gradients",
        "frozen_parameters",
        "label_imbalance",
        "flat_loss",
    ]
    assert headline(fs).check == "overfitting"
    assert headline([_f("flat_loss", "critical", resolved=50)]) is None


# -- confirmation window ------------------------------------------------------------------------


def test_confirmation_window_grows_with_the_step_it_turned_dead_at() -> None:
    cfg = DoctorConfig()
    assert confirm_window(25, cfg) == 600
    assert confirm_window(4000, cfg) == 2000
    assert confirmed_dead("dead", 25, 600, cfg)[0] is False
    ok, text = confirmed_dead("dead", 25, 625, cfg)
    assert ok and text == "dead for 600 steps (since step 25)"
    assert confirmed_dead("warning", 25, 5000, cfg) == (False, "")


def test_verdict_since_is_the_grid_step_where_the_verdict_began() -> None:
    d = Doctor(checks=[scripted("flat_loss", lambda last: last >= 100)])
    feed(d, range(0, 400))
    assert d.verdict == "dead" and d.verdict_since == 100 and d.step == 375


def test_replay_of_a_directly_filled_history_equals_the_live_run() -> None:
    # audit fills the history straight from a log; replay() judges it as run/watch would have live.
    def loss(s: int) -> float:
        return 0.6931 if s < 200 else 0.6931 - 0.3 * (1 - math.exp(-(s - 200) / 60)) + 0.01 * math.sin(s)

    live = Doctor()
    for s in range(600):
        live.observe(Observation(name="train/loss", step=s, value=round(loss(s), 4), digits=4))
        if s % 50 == 49:
            live.observe(Observation(name="val/acc", step=s, value=0.5 + s / 2000, digits=3))
    live.evaluate()
    offline = Doctor()
    for s in range(600):  # series by series, as a column reader would: not in step order
        offline.history.add_point("train/loss", s, round(loss(s), 4), 4)
    for s in range(49, 600, 50):
        offline.history.add_point("val/acc", s, 0.5 + s / 2000, 3)
    offline.replay()
    assert live.findings, "the plateau should give findings that later resolve"
    assert offline.report().to_json() == live.report().to_json()


def test_a_held_out_metric_is_named_before_a_training_one() -> None:
    h = History()
    for i, (tr, va) in enumerate(
        zip(
            [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.93, 0.95],
            [0.6, 0.7, 0.75, 0.8, 0.82, 0.85, 0.86, 0.87, 0.88],
            strict=True,
        )
    ):
        h.add_point("train/acc", 10 * i, tr)
        h.add_point("val/auroc", 10 * i, va)
    text = evidence_for_health(h, DoctorConfig())
    assert text is not None and text.startswith("val/auroc rose") and "train/acc" not in text


def test_grid_steps_with_nothing_new_are_not_evaluated_again() -> None:
    mod = scripted("flat_loss", lambda last: False)
    d = Doctor(checks=[mod])
    for s in range(0, 1001, 100):  # a run that prints every 100 steps
        d.observe(Observation(name="train/loss", step=s, value=1.0 / (1 + s)))
    # One evaluation per print (at the first grid step after it), not one per grid step.
    assert mod.calls == [0, 100, 200, 300, 400, 500, 600, 700, 800, 900]


def test_the_headline_of_a_dead_verdict_is_critical() -> None:
    """An outcome warning (one NaN gradient) must not head a report that a mechanism's critical made dead."""
    from muvo_doctor.core.doctor import order_findings
    from muvo_doctor.core.finding import Finding

    warn = Finding(check="nan_inf", severity="warning", step=1, message="m", advice="a")
    crit = Finding(check="vanishing_gradients", severity="critical", step=5, message="m", advice="a")
    assert [f.check for f in order_findings([warn, crit])] == ["vanishing_gradients", "nan_inf"]

"""display_precision: printed vs real (in-process) and log-only cases, with both numbers in the message."""

from __future__ import annotations

import numpy as np
import pytest

from muvo_doctor.checks import display_precision, flat_loss
from muvo_doctor.config import DoctorConfig
from muvo_doctor.doctor import Doctor
from muvo_doctor.history import History
from muvo_doctor.observation import Observation

CFG = DoctorConfig()
T = CFG.thresholds


def test_printed_zero_while_real_loss_is_0_507() -> None:
    d = Doctor(CFG)
    rng = np.random.default_rng(0)
    for s in range(200):
        d.observe(Observation(name="train/loss", step=s, value=float(0.507 + rng.normal(0, 0.01))))
        if s % 10 == 9:
            d.observe(Observation(name="printed/loss", step=s, value=0.0, digits=4))
    d.evaluate()
    f = {f.check: f for f in d.findings}["display_precision"]
    assert f.severity == "warning"
    assert "printed/loss shows 0.0000 (4 decimals)" in f.message and "train/loss is 0.50" in f.message


@pytest.mark.parametrize(
    ("offset_units", "found"),
    [(3.0, True), (0.5, False)],  # off by 3 units of the last digit vs within rounding
)
def test_printed_vs_real_threshold(offset_units: float, found: bool) -> None:
    h = History()
    for s in range(100):
        real = 0.5 - s * 1e-3
        h.add_point("train/loss", s, real)
        h.add_point("printed/loss", s, round(real + offset_units * 1e-4, 4), 4)
    assert bool(display_precision.check(h, CFG)) is found


def test_running_average_print_is_consistent() -> None:
    # tqdm-style running mean of a noisy loss lies inside the range of the values it averages.
    rng = np.random.default_rng(1)
    h = History()
    vals = []
    for s in range(300):
        v = 0.6 - s * 1e-3 + rng.normal(0, 0.05)
        vals.append(v)
        h.add_point("train/loss", s, v)
        if s % 50 == 49:
            h.add_point("printed/loss", s, round(float(np.mean(vals[-50:])), 4), 4)
    assert display_precision.check(h, CFG) == []


def test_printed_accuracy_maps_to_train_acc() -> None:
    h = History()
    for s in range(50):
        h.add_point("train/acc", s, 0.75)
        h.add_point("printed/acc", s, 0.8993, 4)
    f = display_precision.check(h, CFG)[0]
    assert "printed/acc shows 0.8993" in f.message and "train/acc is 0.75" in f.message


def _log(name: str, values: np.ndarray, digits: int, moving: bool = True) -> History:
    h = History()
    for i, v in enumerate(values):
        h.add_point(name, i, float(v), digits)
        if moving:
            h.add_point("val/acc", i, 0.5 + 0.001 * i, 4)
    return h


def test_log_main_loss_always_zero_while_accuracy_moves() -> None:
    h = _log("train/loss", np.zeros(60), 4)
    f = display_precision.check(h, CFG)[0]
    assert (
        f.severity == "warning" and "0.0000 (4 decimals) in all 60 records while val/acc moves" in f.message
    )
    # ... and the run is dead: its main loss never showed any movement.
    assert flat_loss.check(h, CFG)[0].severity == "critical"


def test_log_aux_loss_always_zero_is_not_a_finding() -> None:
    h = _log("train/aux_loss", np.zeros(80), 4)
    for i in range(80):
        h.add_point("train/loss", i, round(0.7 - 0.005 * i, 4), 4)
    assert display_precision.check(h, CFG) == [] and flat_loss.check(h, CFG) == []


def test_collapse_to_zero_after_a_decline_is_info_not_flat() -> None:
    h = _log("train/loss", np.r_[np.linspace(0.5, 0.0001, 60).round(4), np.zeros(60)], 4)
    out = display_precision.check(h, CFG)
    assert [f.severity for f in out] == ["info"] and "0.0000" in out[0].message
    assert flat_loss.check(h, CFG) == []


@pytest.mark.parametrize(("distinct", "found"), [(T.dp_max_distinct, True), (T.dp_max_distinct + 2, False)])
def test_handful_of_printed_values(distinct: int, found: bool) -> None:
    values = np.resize(np.arange(distinct) * 0.1 + 0.3, T.dp_min_records + 10)
    h = _log("train/loss", values, 1)
    out = display_precision.check(h, CFG)
    assert bool(out) is found
    if found:
        assert f"only {distinct} distinct values" in out[0].message and "1 decimals" in out[0].message


def test_no_digits_no_display_finding() -> None:
    h = History()
    for i in range(100):
        h.add_point("train/loss", i, 0.0)
    assert display_precision.check(h, CFG) == []

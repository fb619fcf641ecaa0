"""display_precision: printed vs real (in-process) and log-only cases, with both numbers in the message."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import history_of

from muvo_doctor.core.checks import display_precision, flat_loss
from muvo_doctor.core.config import DoctorConfig
from muvo_doctor.core.doctor import Doctor
from muvo_doctor.core.history import History
from muvo_doctor.core.observation import Observation

CFG = DoctorConfig()
T = CFG.thresholds
EVERY_10, DIGITS_4 = {"printed/loss": 10}, {"printed/loss": 4}  # a loss printed every 10 steps, 4 decimals


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
    assert "printed/loss shows 0.0000 (4 decimals) in 20 of 20 prints" in f.message
    assert "train/loss is 0.50" in f.message and "not the value optimised" in f.message


@pytest.mark.parametrize(
    ("real", "found"),
    [(0.49e-4, True), (0.51e-4, False)],  # rounds to 0.0000 (hidden) vs to 0.0001 (shown)
)
def test_rounding_hides_the_real_value_threshold(real: float, found: bool) -> None:
    # The print is the real value rounded to 4 decimals: it hides the value exactly when it rounds to 0.
    h = history_of({"train/loss": real, "printed/loss": round(real, 4)}, n=100, digits={"printed/loss": 4})
    out = display_precision.check(h, CFG)
    assert bool(out) is found
    if found:
        assert out[0].severity == "warning"
        assert (
            f"train/loss is {real:.3g}" in out[0].message
            and "rounding to 4 decimals hides it" in out[0].message
        )


@pytest.mark.parametrize("offset_units", [3.0, 30.0, -500.0])
def test_a_print_that_differs_from_the_real_value_is_not_a_display_finding(offset_units: float) -> None:
    # A printed running mean, a smoothed or a differently averaged value differs from one step's value;
    # that is not the display hiding anything (the H200 case: 'printed/acc shows 0.978 while train/acc is 1').
    real = 0.5 - (np.arange(100) // 20) * 1e-2
    shown = [round(v + offset_units * 1e-4, 4) for v in real.tolist()]
    series = {"train/loss": real, "printed/loss": shown, "train/acc": 1.0, "printed/acc": 0.978}
    h = history_of(series, n=100, digits={"printed/loss": 4, "printed/acc": 3})
    assert display_precision.check(h, CFG) == []


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
    h = history_of({"train/acc": 0.75, "printed/acc": 0.0}, n=50, digits={"printed/acc": 4})
    f = display_precision.check(h, CFG)[0]
    assert "printed/acc shows 0.0000" in f.message and "train/acc is 0.75" in f.message


def _log(name: str, values: np.ndarray, digits: int, moving: bool = True) -> History:
    moves = {"val/acc": 0.5 + 0.001 * np.arange(len(values))} if moving else {}
    return history_of({name: values, **moves}, digits={name: digits, "val/acc": 4})


def test_log_main_loss_always_zero_while_accuracy_moves() -> None:
    h = _log("train/loss", np.zeros(60), 4)
    f = display_precision.check(h, CFG)[0]
    assert (
        f.severity == "warning" and "0.0000 (4 decimals) in all 60 records while val/acc moves" in f.message
    )
    assert "sits at the printed resolution" in f.message and f.evidence["zero_share"] == 1.0


@pytest.mark.parametrize(("digits", "shown"), [(1, "0.0 (1 decimal)"), (4, "0.0000 (4 decimals)")])
def test_log_loss_zero_for_the_whole_run_says_the_digits_shown(digits: int, shown: str) -> None:
    h = _log("train/loss", np.zeros(8), digits, moving=False)
    out = display_precision.check(h, CFG)
    assert [f.severity for f in out] == ["warning"] and f"shows {shown} in all 8 records" in out[0].message
    # One record short of dp_min_points: nothing to judge yet.
    assert display_precision.check(_log("train/loss", np.zeros(T.dp_min_points - 1), digits), CFG) == []


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


@pytest.mark.parametrize(("start", "found"), [(0.5, True), (0.4, False)])
def test_converged_loss_logged_as_zero_is_a_display_limit_never_dead(start: float, found: bool) -> None:
    # A fine-tune logged with 1 decimal: 0.85 -> 0.0. It fell FALL_UNITS (5) units of its last digit or
    # more before showing zero: info, phrased as a display limit. From 0.4 (4 units): no finding.
    values = np.r_[start, 0.3, 0.2, 0.1, 0.1, 0.0, 0.0, 0.0]
    out = display_precision.check(_log("train/loss", values, 1), CFG)
    assert bool(out) is found
    if found:
        assert [f.severity for f in out] == ["info"]
        msg = out[0].message
        assert "fell from 0.5 to 0.0 (1 decimal)" in msg and "since step 5" in msg
        assert "not a flat or dead run" in msg and "below the printed resolution 0.05" in msg


@pytest.mark.parametrize(("distinct", "found"), [(T.dp_max_distinct, True), (T.dp_max_distinct + 2, False)])
def test_handful_of_printed_values(distinct: int, found: bool) -> None:
    values = np.resize(np.arange(distinct) * 0.1 + 0.3, T.dp_min_records + 10)
    h = _log("train/loss", values, 1)
    out = display_precision.check(h, CFG)
    assert bool(out) is found
    if found:
        assert f"only {distinct} distinct values" in out[0].message and "1 decimals" in out[0].message


def test_no_digits_no_display_finding() -> None:
    h = history_of({"train/loss": 0.0}, n=100)
    assert display_precision.check(h, CFG) == []


# -- `muvo-doctor run -- muvo-train` on healthy runs: what the wrapper files as printed/<key> -------------


def _healthy_wrapped(
    redraws: int = 1,
    lag: int = 0,
    shown=lambda loss_window, last: round(float(np.mean(loss_window)), 6),
    digits: int = 6,
) -> History:
    """A healthy muvo-train run as the `run` wrapper sees it.

    Per-step loss (recorder), per-batch accuracy and lr sampled every 10th step, and every 10 steps a
    line ``step N loss=<shown> acc=<window mean> lr=<lr> samples/s=<rate>`` plus every 40 an eval
    line whose numbers the wrapper also files as val/* (with digits). ``redraws`` repeats each print
    (a progress bar redrawn with \\r), ``lag`` files prints that many steps late or early.
    """
    rng = np.random.default_rng(3)
    h = History()
    losses, accs = [], []
    for s in range(400):
        loss = float(1.2 * np.exp(-s / 120) + 0.05 + abs(rng.normal(0, 0.15)))
        acc = float(np.clip(0.5 + 0.5 * (1 - np.exp(-s / 80)) + rng.normal(0, 0.08), 0, 1))
        lr = 2e-3 * min(1.0, (s + 1) / 10) * (0.55 + 0.45 * np.cos(np.pi * s / 400))
        h.add_point("train/loss", s, loss)
        losses.append(loss)
        accs.append(acc)
        if s % 10 == 0:
            h.add_point("train/acc", s, acc)
            h.add_point("optim/lr", s, lr)
        done = s + 1
        if done % 10 == 0:
            at = max(s + lag, 0)
            next_lr = 2e-3 * min(1.0, (done + 1) / 10) * (0.55 + 0.45 * np.cos(np.pi * done / 400))
            for r in range(redraws):
                h.add_point("printed/step", at + r // 5, float(done), 0)
                h.add_point("printed/loss", at + r // 5, shown(losses[-10:], loss), digits)
                acc_text = f"{np.mean(accs[-10:]):.6g}"
                h.add_point("printed/acc", at + r // 5, float(acc_text), len(acc_text.partition(".")[2]))
                h.add_point("printed/lr", at + r // 5, float(f"{next_lr:.6g}"), 8)
                h.add_point("printed/samples/s", at + r // 5, float(rng.integers(30, 500)), 0)
        if done % 40 == 0:
            for key, v in (
                ("eval_step", float(done)),
                ("val_loss", 0.3 + 0.1 * rng.random()),
                ("val_acc", 0.9),
            ):
                h.add_point(f"printed/{key}", s, round(v, 6), 0 if key == "eval_step" else 6)
            h.add_point("val/step", s, float(done), 0)  # what the wrapper makes of "eval step 40"
            h.add_point("val/acc", s, 0.9, 6)
            h.add_point("val/loss", s, 0.35, 6)
    return h


@pytest.mark.parametrize(
    "case",
    [
        dict(),  # printed window means with 6 significant digits
        dict(shown=lambda w, last: float(f"{last:.6g}")),  # the last loss of the window
        dict(redraws=50),  # a progress bar redrawn 50 times per log line
        dict(lag=15),  # prints filed 1.5 log intervals late
        dict(lag=-15),  # ... or early (the telemetry step lags the print)
        dict(shown=lambda w, last: round(float(np.mean(w)), 2), digits=2),  # two decimals: coarse but right
    ],
    ids=["window-mean", "last-value", "redrawn", "late", "early", "two-decimals"],
)
def test_healthy_wrapped_run_prints_are_not_a_display_finding(case: dict) -> None:
    # printed acc must go to train/acc (not val/acc), printed step to nothing (not val/step), lr and
    # samples/s are bookkeeping or within rounding, window means are within the window's range.
    h = _healthy_wrapped(**case)
    assert display_precision.check(h, CFG) == []


def test_printed_training_acc_is_not_compared_with_val_acc() -> None:
    printed = 0.5 + np.arange(100) / 1000
    # val/acc is recorded, but it is another signal
    h = history_of({"printed/acc": printed, "val/acc": 0.95}, n=100, digits={"printed/acc": 4})
    assert display_precision.real_name(h, "printed/acc") is None
    assert display_precision.check(h, CFG) == []


@pytest.mark.parametrize("key", ["step", "eval_step", "epoch", "iter", "time", "samples/s", "it/s", "wall_s"])
def test_axis_and_bookkeeping_keys_have_no_counterpart(key: str) -> None:
    h = History()
    for s in range(100):
        h.add_point(f"printed/{key}", s, float(3 * s + 7), 0)
        for real in ("val/step", "train/step", "val/epoch", "step", "time", "samples_s", "it_s", "wall_s"):
            h.add_point(real, s, float(s))
    assert display_precision.real_name(h, f"printed/{key}") is None
    assert display_precision.check(h, CFG) == []


def test_printed_counterpart_from_printed_text_is_not_a_measurement() -> None:
    # val/loss: the wrapper's own copy of another printed line
    series = {"printed/val_loss": 0.3, "val/loss": 0.3 + np.arange(100) / 1e4}
    h = history_of(series, n=100, digits={"printed/val_loss": 1, "val/loss": 6})
    assert display_precision.real_name(h, "printed/val_loss") is None


@pytest.mark.parametrize("redraws", [1, 3, 40])
def test_hidden_print_is_found_whatever_the_redraw_count(redraws: int) -> None:
    h = _healthy_wrapped(redraws=redraws, shown=lambda w, last: round(float(np.mean(w)) / 1e5, 4), digits=4)
    out = display_precision.check(h, CFG)
    assert len(out) == 1 and out[0].severity == "warning"
    assert "printed/loss shows 0.0000 (4 decimals)" in out[0].message and "train/loss is 0." in out[0].message


def test_redraws_do_not_change_the_decision_between_shown_and_hidden_prints() -> None:
    # Half the log lines show the value and are redrawn 40 times, half show 0.0000 and are printed once:
    # the share of hidden prints is 0.5 (below the threshold), not 1/41.
    h = History()
    for s in range(200):
        h.add_point("train/loss", s, 0.5)
        if s % 10 == 9:
            value, times = (0.5, 40) if (s // 10) % 2 else (0.0, 1)
            for _ in range(times):
                h.add_point("printed/loss", s, value, 4)
    assert display_precision.check(h, CFG) == []
    for s in range(200, 600):
        h.add_point("train/loss", s, 0.5)
        if s % 10 == 9:
            h.add_point("printed/loss", s, 0.0, 4)  # now 50 of 60 printed steps show 0.0000
    assert display_precision.check(h, CFG)[0].evidence["zero_share"] == pytest.approx(50 / 60)


def test_printed_zero_while_a_tiny_real_loss_moves_is_found() -> None:
    # The display cannot show the change: 0.0000 in every print while the loss falls 4e-5 -> 2e-6.
    real = 4e-5 * np.exp(-np.arange(200) / 70)
    h = history_of({"train/loss": real, "printed/loss": 0.0}, n=200, every=EVERY_10, digits=DIGITS_4)
    out = display_precision.check(h, CFG)
    assert out and "0.0000 (4 decimals) in 20 of 20 prints while train/loss is 9.89e-06" in out[0].message


def test_printed_zero_while_a_tiny_real_loss_stays_put_is_found() -> None:
    # Printed 0.0000 while the real loss is 3e-5: the print is the value rounded, and rounding hides it.
    real = 3e-5 * (1 + 0.01 * np.sin(np.arange(200)))
    h = history_of({"train/loss": real, "printed/loss": 0.0}, n=200, every=EVERY_10, digits=DIGITS_4)
    out = display_precision.check(h, CFG)
    assert [f.severity for f in out] == ["warning"]
    assert "train/loss is 3e-05" in out[0].message and "below 5e-05, the printed resolution" in out[0].message


def test_printed_loss_shown_falling_then_rounding_to_zero_is_info() -> None:
    # Under `run`: the prints show the loss fall from 0.5, then 0.0000 once the real loss is below 5e-5.
    real = 0.5 * np.exp(-np.arange(200) / 12)
    shown = [round(v, 4) for v in real[9::10].tolist()]
    h = history_of({"train/loss": real, "printed/loss": shown}, n=200, every=EVERY_10, digits=DIGITS_4)
    out = display_precision.check(h, CFG)
    assert [f.severity for f in out] == ["info"]
    assert (
        "printed/loss fell from" in out[0].message
        and "A display limit, not a flat or dead run" in out[0].message
    )

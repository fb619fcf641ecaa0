"""Loss-outcome checks, table-driven: just above a threshold a finding appears, just below none does."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import judge

from muvo_doctor.core.checks import divergence, flat_loss, loss_not_decreasing, loss_spike, nan_inf
from muvo_doctor.core.config import DoctorConfig
from muvo_doctor.core.doctor import Doctor
from muvo_doctor.core.history import History
from muvo_doctor.core.observation import Observation

CFG = DoctorConfig()
T = CFG.thresholds


def noisy(n: int, level: float, sigma: float, seed: int = 0) -> np.ndarray:
    return level + np.random.default_rng(seed).normal(0, sigma, n)


def decreasing(n: int, seed: int = 0) -> np.ndarray:
    t = np.arange(n)
    return 0.2 + 0.5 * np.exp(-t / (n / 4)) + np.random.default_rng(seed).normal(0, 0.05, n)


# ---------------------------------------------------------------- nan_inf
@pytest.mark.parametrize(
    ("loss", "severity"),
    [
        (np.r_[np.linspace(1, 0.5, 40), [np.nan] * 20], "critical"),
        (np.r_[np.linspace(1, 0.5, 40), [np.inf], np.linspace(0.5, 0.4, 19)], "warning"),
        (np.linspace(1, 0.5, 60), None),
    ],
)
def test_nan_inf(loss: np.ndarray, severity: str | None) -> None:
    out = judge(nan_inf, {"train/loss": loss}, complete=True)
    assert [f.severity for f in out] == ([severity] if severity else [])
    if severity:
        assert out[0].step == 40 and "step 40" in out[0].message


def test_nan_inf_counter_from_recorder() -> None:
    out = judge(
        nan_inf,
        {"train/loss": np.linspace(1, 0.5, 30), "nonfinite/grad": np.r_[np.zeros(10), np.full(20, 3.0)]},
        complete=True,
    )
    assert out[0].severity == "critical" and "nonfinite/grad" in out[0].message


# ---------------------------------------------------------------- flat_loss
@pytest.mark.parametrize(
    ("rel_spread", "found"),
    [(T.flat_rel_range * 0.5, True), (T.flat_rel_range * 2, False)],
)
def test_flat_loss_relative_spread_threshold(rel_spread: float, found: bool) -> None:
    level = 0.6931
    w = T.flat_window
    loss = np.r_[np.linspace(0.8, level, 20), level + rel_spread * level * np.linspace(-0.5, 0.5, w)]
    out = judge(flat_loss, {"train/loss": loss}, complete=True)
    assert bool(out) is found
    if found:
        assert out[0].severity == "critical"
        assert "0.6931" in out[0].message and f"{T.flat_window}" in out[0].message


def test_flat_loss_short_logs_need_exact_repeats_or_a_whole_log_without_movement() -> None:
    noisy = 0.7 + np.random.default_rng(0).normal(0, 0.01, T.flat_window - 1)
    assert judge(flat_loss, {"train/loss": noisy}, complete=True) == []
    assert (
        judge(flat_loss, {"train/loss": np.full(T.flat_window, 0.7)}, complete=True)[0].evidence["level"]
        == 0.7
    )
    # Exact repeats: from flat_min_repeats records on, a printed value repeated to its last digit.
    moving = list(np.linspace(2.0, 0.9, 10))
    n = T.flat_min_repeats
    out = judge(
        flat_loss, {"train/loss": np.r_[moving, np.full(n, 0.6931)]}, digits={"train/loss": 4}, complete=True
    )
    assert out and out[0].severity == "critical" and out[0].evidence["rule"] == "exact_repeats"
    assert f"last {n} records" in out[0].message and "0.6931" in out[0].message
    assert (
        judge(
            flat_loss,
            {"train/loss": np.r_[moving, np.full(n - 1, 0.6931)]},
            digits={"train/loss": 4},
            complete=True,
        )
        == []
    )
    # A whole short log within flat_short_rel of its level (a Darknet excerpt at 6.91).
    k = T.flat_short_min_points
    level = 6.91 * (1 + T.flat_short_rel * 0.9 * np.tile([-0.5, 0.5], k)[:k])
    out = judge(flat_loss, {"train/loss": level}, complete=True)
    assert out and out[0].evidence["rule"] == "short_log" and f"all {k} records" in out[0].message
    wider = 6.91 * (1 + T.flat_short_rel * 1.2 * np.tile([-0.5, 0.5], k)[:k])
    assert judge(flat_loss, {"train/loss": wider}, complete=True) == []
    assert (
        judge(flat_loss, {"train/loss": level[: k - 1] * np.linspace(1, 1.001, k - 1)}, complete=True) == []
    )


@pytest.mark.parametrize(
    ("values", "digits", "found"),
    [
        (np.full(60, 0.6931), 4, True),  # 6931 units of the last digit: really flat
        (np.tile([0.6931, 0.6932], 30), 4, True),  # one-unit flicker is flat too
        (np.tile([0.6931, 0.6933], 30), 4, False),  # two units: moves
        (np.full(60, 0.0012), 4, False),  # 12 units: display question, not flat
        (np.r_[np.linspace(0.5, 0.0, 20), np.zeros(60)], 4, False),  # collapsed to 0.0000 after a decline
        (np.zeros(80), None, True),  # the main loss identically zero from the start: nothing learns
        (np.zeros(80), 4, False),  # shown as 0.0000 for the whole run: display_precision, not flat_loss
        (np.r_[np.linspace(0.5, 0.01, 10), np.full(60, 1e-25)], None, True),  # collapsed (saturated): warning
        (np.r_[np.linspace(0.5, 0.01, 10), np.geomspace(1e-4, 1e-6, 60)], None, False),  # small, moving
    ],
)
def test_flat_loss_precision_aware(values: np.ndarray, digits: int | None, found: bool) -> None:
    out = judge(
        flat_loss, {"train/loss": values}, digits={"train/loss": digits} if digits else None, complete=True
    )
    assert bool(out) is found


def test_zero_aux_loss_next_to_a_learning_loss_is_not_a_finding() -> None:
    assert (
        judge(flat_loss, {"train/loss": decreasing(300), "train/aux_loss": np.zeros(300)}, complete=True)
        == []
    )


def test_small_loss_that_still_moves_is_not_flat() -> None:
    t = np.arange(200)
    loss = 1e-5 * np.exp(-t / 100) * (1 + 0.1 * np.random.default_rng(0).normal(size=200))
    assert judge(flat_loss, {"train/loss": loss}, complete=True) == []


def test_flat_aux_loss_is_a_warning_naming_the_series() -> None:
    out = judge(
        flat_loss, {"train/loss": decreasing(300), "train/aux_loss": np.full(300, 2.5)}, complete=True
    )
    assert out[0].severity == "warning" and "train/aux_loss" in out[0].message and "2.5" in out[0].message


# ---------------------------------------------------------------- loss_not_decreasing
@pytest.mark.parametrize(
    ("drop", "noise", "severity"),
    [
        (0.0, 0.001, "critical"),
        (T.lnd_min_rel_drop * 0.5, 0.001, "warning"),  # small but far beyond the noise: slow, not dead
        (T.lnd_min_rel_drop * 3, 0.001, None),
    ],
)
def test_loss_not_decreasing_relative_drop(drop: float, noise: float, severity: str | None) -> None:
    n = T.lnd_min_points * 3
    loss = np.linspace(0.7, 0.7 * (1 - drop), n) + noisy(n, 0, noise)
    out = judge(loss_not_decreasing, {"train/loss": loss}, complete=True)
    assert (out[0].severity if out else None) == severity
    if severity:
        assert f"{out[0].evidence['start_median']:.4g}" in out[0].message
    if severity == "warning":
        assert "a real but slow drop" in out[0].message and "too slowly to tell" in out[0].message


def test_loss_not_decreasing_waits_for_a_long_window() -> None:
    assert judge(loss_not_decreasing, {"train/loss": np.full(T.lnd_min_points - 1, 0.7)}, complete=True) == []


def test_a_rise_must_beat_the_noise() -> None:
    # A 5% rise buried in noise of sigma 0.3 is not called rising; the same rise with little noise is.
    n = 150
    noisy_rise = judge(
        loss_not_decreasing, {"train/loss": np.linspace(1, 1.05, n) + noisy(n, 0, 0.3)}, complete=True
    )
    assert all("rose" not in f.message for f in noisy_rise)
    clean_rise = judge(
        loss_not_decreasing, {"train/loss": np.linspace(1, 1.05, n) + noisy(n, 0, 0.005)}, complete=True
    )
    assert clean_rise[0].severity == "warning" and "rose" in clean_rise[0].message


def test_a_noisy_loss_that_falls_is_learning() -> None:
    # BCE with pos_weight on small batches: huge per-batch noise, a 20% fall: not stalled.
    n = 300
    loss = np.linspace(1.4, 1.1, n) + np.random.default_rng(4).normal(0, 0.6, n)
    assert judge(loss_not_decreasing, {"train/loss": loss}, complete=True) == []


def test_flat_loss_with_a_ranking_auroc_is_only_info() -> None:
    h = History()
    for i in range(200):
        h.add_point("train/loss", i, 0.7 + 0.01 * np.sin(i))
        if i % 50 == 49:
            h.add_point("val/auroc", i, 0.95)
    out = loss_not_decreasing.check(h, CFG)
    assert [f.severity for f in out] == ["info"] and "val/auroc is 0.950" in out[0].message


def test_rising_loss_warns() -> None:
    out = judge(
        loss_not_decreasing, {"train/loss": np.linspace(0.5, 0.9, 200) + noisy(200, 0, 0.01)}, complete=True
    )
    assert out[0].severity == "warning" and "rose" in out[0].message


def test_plateau_after_learning_is_not_reported() -> None:
    loss = np.r_[np.linspace(0.7, 0.2, 50), noisy(2000, 0.2, 0.02)]
    assert judge(loss_not_decreasing, {"train/loss": loss}, complete=True) == []


# ---------------------------------------------------------------- divergence
@pytest.mark.parametrize(("factor", "found"), [(T.div_factor * 1.2, True), (T.div_factor * 0.8, False)])
def test_divergence_threshold(factor: float, found: bool) -> None:
    # start 1.0, best 0.5: scale 0.5; the loss jumps to best + factor * scale and stays.
    loss = np.r_[np.linspace(1.0, 0.5, 50), np.full(30, 0.5 + factor * 0.5)]
    out = judge(divergence, {"train/loss": loss}, complete=True)
    assert bool(out) is found
    if found:
        assert out[0].severity == "critical" and out[0].step == 50 and "0.5" in out[0].message


def test_divergence_to_nan_counts() -> None:
    loss = np.r_[np.linspace(1.0, 0.5, 40), np.geomspace(1, 1e6, 10), [np.nan] * 20]
    assert judge(divergence, {"train/loss": loss}, complete=True)[0].severity == "critical"


def test_one_spike_is_not_divergence() -> None:
    loss = np.r_[np.linspace(1.0, 0.5, 50), [50.0], np.full(30, 0.5)]
    assert judge(divergence, {"train/loss": loss}, complete=True) == []


# ---------------------------------------------------------------- loss_spike
@pytest.mark.parametrize(
    ("jump", "setback", "severity"),
    [
        (3.0, T.spike_setback * 1.5, "warning"),  # the spike knocked the loss back up
        (3.0, T.spike_setback * 0.5, "info"),  # a hard batch: gone at once
        (0.2, T.spike_setback * 1.5, None),  # 40% of the level: below spike_min_rel
    ],
)
def test_loss_spike(jump: float, setback: float, severity: str | None) -> None:
    base = noisy(200, 0.5, 0.01, seed=3)
    base[120] += jump
    base[121:] += setback * 0.5
    out = judge(loss_spike, {"train/loss": base}, complete=True)
    assert [f.severity for f in out] == ([severity] if severity else [])
    if severity:
        assert out[0].step == 120 and "z =" in out[0].message


def test_rare_weighted_positives_are_not_warnings() -> None:
    # BCE with pos_weight=9 on batches of 16: a batch with a missed positive costs 10x the others.
    rng = np.random.default_rng(5)
    loss = np.abs(rng.normal(0.3, 0.05, 300)) + np.where(rng.random(300) < 0.05, rng.uniform(4, 8, 300), 0)
    assert all(f.severity == "info" for f in judge(loss_spike, {"train/loss": loss}, complete=True))


def test_spike_on_a_collapsed_loss_is_ignored() -> None:
    loss = np.r_[np.linspace(0.5, 1e-6, 20), np.full(100, 2e-6)]
    loss[60] = 5e-6
    assert judge(loss_spike, {"train/loss": loss}, complete=True) == []


def test_step_that_stays_up_is_not_a_spike() -> None:
    base = np.r_[noisy(100, 0.5, 0.01), noisy(100, 2.0, 0.01)]
    assert judge(loss_spike, {"train/loss": base}, complete=True) == []


@pytest.mark.parametrize("mod", [flat_loss, loss_not_decreasing, divergence, loss_spike])
@pytest.mark.parametrize("seed", range(3))
def test_healthy_noisy_decreasing_loss_gives_nothing(mod, seed: int) -> None:
    assert judge(mod, {"train/loss": decreasing(2000, seed)}, complete=True) == []


def test_a_plateau_that_starts_learning_is_not_dead_at_the_end() -> None:
    # The original arch on CPU: the loss sits at ln 2 and AUROC at chance for ~250 steps, then both move.
    # Live evaluations call it dead at first; the final report must follow the later evidence.
    d = Doctor(CFG)
    rng = np.random.default_rng(0)
    for s in range(600):
        level = 0.693 if s < 250 else 0.693 - 0.25 * (1 - np.exp(-(s - 250) / 150))
        d.observe(Observation(name="train/loss", step=s, value=float(level + rng.normal(0, 0.004))))
        if s % 40 == 39:
            auroc = 0.45 + rng.normal(0, 0.02) if s < 250 else min(0.95, 0.5 + (s - 250) / 400)
            d.observe(Observation(name="val/auroc", step=s, value=float(auroc)))
        if s % 50 == 49:
            d.evaluate()
            if s == 199:
                assert d.verdict == "dead"
                assert {f.check: f.severity for f in d.findings}["loss_not_decreasing"] == "critical"
    d.evaluate()  # the end
    f = {f.check: f for f in d.findings}["loss_not_decreasing"]
    assert d.verdict != "dead", [(f.check, f.severity, f.message) for f in d.findings]
    # The critical finding no longer holds: resolved (kept, with its first step), or at most a warning.
    assert f.step == 0
    assert f.resolved_step is not None or f.severity != "critical"


@pytest.mark.parametrize(
    ("aurocs", "severity"),
    [
        ([0.44, 0.52, 0.61], "critical"),  # one evaluation above 0.6 after chance: drift, not learning
        ([0.44, 0.62, 0.65], "info"),  # two in a row: the held-out scores rank
    ],
)
def test_val_auroc_vetoes_not_decreasing_only_when_it_holds(aurocs: list[float], severity: str) -> None:
    h = History()
    for s in range(300):
        h.add_point("train/loss", s, 0.693 + 0.001 * np.sin(s))
    for i, a in enumerate(aurocs):
        h.add_point("val/auroc", 100 * i + 99, a)
    out = loss_not_decreasing.check(h, CFG)
    assert out[0].severity == severity

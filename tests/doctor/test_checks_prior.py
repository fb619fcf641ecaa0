"""prior_baseline, metric_stuck and overfitting: the original bug's numbers, and their thresholds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import history_of

from muvo_doctor.core.checks import metric_stuck, overfitting, prior_baseline
from muvo_doctor.core.checks._common import bernoulli_entropy
from muvo_doctor.core.config import DoctorConfig
from muvo_doctor.core.doctor import Doctor
from muvo_doctor.core.finding import Finding
from muvo_doctor.core.history import History
from muvo_doctor.core.observation import Observation

CFG = DoctorConfig()
T = CFG.thresholds
H10 = bernoulli_entropy(0.1)  # 0.3251


def labels(n: int, p: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).binomial(32, p, n) / 32


# ---------------------------------------------------------------- prior_baseline, with labels
def test_original_bug_message_has_loss_prior_entropy_and_majority_rate() -> None:
    n = 300
    rng = np.random.default_rng(0)
    d = Doctor(CFG)
    for i in range(n):
        d.observe(
            Observation(name="label/positive_fraction", step=i, value=float(rng.binomial(32, 0.1) / 32))
        )
        d.observe(Observation(name="train/loss", step=i, value=float(0.3331 + rng.normal(0, 0.02))))
        d.observe(Observation(name="train/acc", step=i, value=float(0.899 + rng.normal(0, 0.01))))
    d.evaluate()
    f = {f.check: f for f in d.findings}["prior_baseline"]
    assert f.severity == "critical" and d.verdict == "dead"
    ev = f.evidence
    assert f.message.startswith(f"Loss {ev['loss']:.4g}") and "≈ prior entropy H(" in f.message
    assert (
        f"={ev['prior_entropy']:.3f}" in f.message and f"majority rate {ev['majority_rate']:.1%}" in f.message
    )
    assert f"accuracy {ev['accuracy']:.1%}" in f.message
    assert f.evidence["majority_rate"] == pytest.approx(0.9, abs=0.01)


def test_the_loss_of_predicting_the_prior_is_judged_per_batch_label_mix() -> None:
    # A model that outputs q = 0.1 on batches of 32 with 10% random positives: each batch's loss is
    # -f ln q - (1-f) ln(1-q) for its own positive share f, so the losses spread from 0.11 to 0.62
    # and their median sits about 4% under H(0.1). Taking each batch's mix out puts it back on H(p).
    n = 150
    rng = np.random.default_rng(3)
    f = rng.binomial(32, 0.1, n) / 32
    q = 0.1 + rng.normal(0, 0.003, n)
    loss = -f * np.log(q) - (1 - f) * np.log(1 - q)
    assert abs(np.median(loss) - H10) > T.pb_rel_band * H10  # the raw median alone would miss it
    h = history_of({"label/positive_fraction": f, "train/loss": loss, "train/acc": 1 - f}, n=n)
    [got] = prior_baseline.check(h, CFG)
    assert got.severity == "critical" and got.evidence["batch_adjusted"]
    assert got.evidence["loss"] == pytest.approx(bernoulli_entropy(f.mean()), rel=0.01)
    assert "label mix taken out" in got.message


def test_batch_adjustment_works_on_sampled_labels() -> None:
    # The recorder sees the labels on sampled steps only (here every 4th); the loss on every step.
    n = 400
    rng = np.random.default_rng(5)
    f = rng.binomial(32, 0.1, n) / 32
    loss = -f * np.log(0.1) - (1 - f) * np.log(0.9)
    h = History()
    for i in range(n):
        h.add_point("train/loss", i, float(loss[i]))
        if i % 4 == 3:
            h.add_point("label/positive_fraction", i, float(f[i]))
            h.add_point("train/acc", i, float(1 - f[i]))
    [got] = prior_baseline.check(h, CFG)
    assert got.evidence["batch_adjusted"]
    assert got.evidence["loss"] == pytest.approx(bernoulli_entropy(f[3::4].mean()), rel=0.01)


def test_a_prior_estimated_from_few_sampled_batches_carries_its_error() -> None:
    # 18 sampled batches of 16 random 10% labels that happened to average 0.142 (measured in a
    # bench/detection.py run): H(0.142) = 0.41, while the model sits at H(0.1) = 0.325 on all 300 steps.
    frac = [0.062, 0.062, 0.062, 0.188, 0.062, 0.062, 0.25, 0.0, 0.0, 0.062, 0.188, 0.125, 0.375, 0.25, 0.438]
    frac += [0.188, 0.062, 0.125]
    rng = np.random.default_rng(6)
    h = History()
    for i in range(300):
        h.add_point("train/loss", i, float(H10 + rng.normal(0, 0.02)))
    for j, f in enumerate(frac):
        h.add_point("label/positive_fraction", 16 * j + 5, f)
        h.add_point("train/acc", 16 * j + 5, 1 - f)
    [got] = prior_baseline.check(h, CFG)
    ev = got.evidence
    assert ev["prior_p"] == pytest.approx(0.142, abs=0.001) and abs(ev["loss"] - ev["baseline_loss"]) > 0.05
    assert ev["baseline_se"] > 0.04 and got.severity == "critical"


def test_a_learning_model_is_not_put_on_the_prior_by_the_batch_adjustment() -> None:
    # Same batches, but the model ranks: its loss is 40% under the prior's on every batch.
    n = 150
    rng = np.random.default_rng(4)
    f = rng.binomial(32, 0.1, n) / 32
    loss = 0.6 * (-f * np.log(0.1) - (1 - f) * np.log(0.9))
    h = history_of({"label/positive_fraction": f, "train/loss": loss, "train/acc": 1 - f}, n=n)
    assert prior_baseline.check(h, CFG) == []


@pytest.mark.parametrize(
    ("offset", "found"),
    [(0.0, True), (T.pb_rel_band * 0.8, True), (-T.pb_rel_band * 0.8, True), (-T.pb_rel_band * 3, False)],
)
def test_prior_band(offset: float, found: bool) -> None:
    n = 200
    loss = H10 * (1 + offset) + np.random.default_rng(1).normal(0, 0.002, n)
    h = history_of({"label/positive_fraction": 0.1, "train/loss": loss}, n=n)
    out = prior_baseline.check(h, CFG)
    assert bool(out) is found


def test_learning_run_passing_through_the_prior_is_not_stuck() -> None:
    n = 300
    loss = np.r_[np.linspace(0.69, H10, 50), np.linspace(H10, 0.1, 250)]
    h = history_of({"label/positive_fraction": labels(n, 0.1), "train/loss": loss}, n=n)
    assert prior_baseline.check(h, CFG) == []


def test_prior_waits_for_its_window() -> None:
    n = T.pb_window - 1
    h = history_of({"label/positive_fraction": 0.1, "train/loss": H10}, n=n)
    assert prior_baseline.check(h, CFG) == []


def test_pos_weight_prior_is_recognised() -> None:
    n = 200
    weighted = 2 * 0.9 * math.log(2)  # BCE with pos_weight=9 at the prior: 1.2477
    h = history_of({"label/positive_fraction": 0.1, "train/loss": weighted}, n=n)
    out = prior_baseline.check(h, CFG)
    assert out and "pos_weight" in out[0].message and "1.248" in out[0].message


# ---------------------------------------------------------------- prior_baseline, logs without labels
def test_inferred_from_the_accuracy_plateau() -> None:
    n = 60  # 30 epochs of a log: loss and accuracy summaries
    rng = np.random.default_rng(3)
    h = history_of(
        {"train/loss": 0.3364 + rng.normal(0, 0.002, n), "train/acc": 0.8957 + rng.normal(0, 0.002, n)}, n=n
    )
    out = prior_baseline.check(h, CFG)
    assert out and out[0].severity == "critical"
    ev = out[0].evidence
    assert f"Loss {ev['loss']:.4g} ≈ prior entropy H(0.104)={ev['prior_entropy']:.3f}" in out[0].message
    assert f"accuracy {ev['accuracy']:.2%}" in out[0].message
    assert out[0].evidence["confidence"] in ("high", "medium")


def test_plateau_at_ln_k_needs_k_from_the_log() -> None:
    # A loss at ln 10 alone is no evidence: above ~2.5 every value is near some ln K.
    h = history_of({"train/loss": math.log(10) + np.random.default_rng(0).normal(0, 0.003, 80)}, n=80)
    assert prior_baseline.check(h, CFG) == []
    # A character-level LM plateauing at 2.60 (within 1.4% of ln 13) is not "uniform over 13 classes".
    h = history_of({"train/loss": 2.60 + np.random.default_rng(1).normal(0, 0.01, 200)}, n=200)
    assert prior_baseline.check(h, CFG) == []


def test_k_from_an_accuracy_at_one_over_k() -> None:
    # Four epochs: loss at ln 4 and accuracy 24.9%: uniform over 4 classes, K from the accuracy.
    h = History()
    h.complete = True  # a finished log
    for e, (loss, acc) in enumerate([(1.3563, 0.312), (1.3864, 0.2495), (1.3864, 0.2512), (1.3864, 0.2486)]):
        h.add_point("train/loss", e, loss, 4)
        h.add_point("train/acc", e, acc, 4)
    out = prior_baseline.check(h, CFG)
    assert out and out[0].severity == "critical"
    assert "ln 4 = 1.3863" in out[0].message and "chance 1/4" in out[0].message
    assert out[0].evidence["classes"] == 4
    # Accuracy that doubles from chance is learning, whatever the loss does.
    h = History()
    h.complete = True  # a finished log
    for e, (loss, acc) in enumerate([(1.3863, 0.25), (1.3860, 0.31), (1.3861, 0.40), (1.3862, 0.52)]):
        h.add_point("train/loss", e, loss, 4)
        h.add_point("train/acc", e, acc, 4)
    assert prior_baseline.check(h, CFG) == []


def test_split_pairs_loss_with_its_own_accuracy() -> None:
    # Validation at ln 4 with val accuracy at 1/4 while training learns: the validation split is at the prior.
    h = History()
    h.complete = True  # a finished log
    for e in range(5):
        h.add_point("train/loss", e, 1.2 - 0.2 * e, 3)
        h.add_point("train/acc", e, 0.4 + 0.1 * e, 3)
        h.add_point("val/loss", e, 1.386, 3)
        h.add_point("val/acc", e, 0.249, 3)
    out = prior_baseline.check(h, CFG)
    assert (
        out
        and out[0].evidence["loss_series"] == "val/loss"
        and out[0].evidence["accuracy_series"] == "val/acc"
    )
    # A test split printing only accuracy borrows the training loss (no train accuracy printed).
    h = History()
    h.complete = True  # a finished log
    for i in range(5):
        h.add_point("train/loss", i * 1000, 8.25 + 0.01 * (i % 2), 4)
    h.add_point("test/acc", 0, 0.00028, 5)
    h.add_point("test/acc", 4000, 0.00028, 5)
    out = prior_baseline.check(h, CFG)
    assert out and out[0].evidence["confidence"] == "medium" and "no test/loss printed" in out[0].message
    # The same loss with an accuracy far from 1/K: no finding.
    h = History()
    h.complete = True  # a finished log
    for i in range(5):
        h.add_point("train/loss", i * 1000, 8.25 + 0.01 * (i % 2), 4)
    h.add_point("test/acc", 0, 0.01, 5)
    h.add_point("test/acc", 4000, 0.01, 5)
    assert prior_baseline.check(h, CFG) == []


def test_healthy_log_below_the_accuracy_prior() -> None:
    n = 60
    h = history_of({"train/loss": np.linspace(0.4, 0.15, n), "train/acc": np.linspace(0.88, 0.95, n)}, n=n)
    assert prior_baseline.check(h, CFG) == []


# ---------------------------------------------------------------- metric_stuck
@pytest.mark.parametrize(
    ("auroc", "found"), [(0.5 + T.ms_auroc_tol * 0.5, True), (0.5 + T.ms_auroc_tol * 2, False)]
)
def test_auroc_at_chance(auroc: float, found: bool) -> None:
    h = history_of({"val/auroc": auroc}, n=T.ms_min_evals)
    out = metric_stuck.check(h, CFG)
    assert bool(out) is found
    if found:
        assert out[0].severity == "critical" and f"{auroc:.3f}" in out[0].message


def test_metric_needs_enough_evaluations() -> None:
    assert metric_stuck.check(history_of({"val/auroc": 0.5}, n=T.ms_min_evals - 1), CFG) == []


def test_map_zero_and_accuracy_at_chance_or_majority() -> None:
    assert metric_stuck.check(history_of({"val/map": 0.001}, n=6), CFG)[0].severity == "critical"
    assert "1/2" in metric_stuck.check(history_of({"val/acc": 0.5}, n=6), CFG)[0].message
    h = history_of({"val/acc": 0.9, "label/positive_fraction": 0.1}, n=6)
    assert "majority rate 90.0%" in metric_stuck.check(h, CFG)[0].message
    assert metric_stuck.check(history_of({"val/acc": np.linspace(0.5, 0.8, 6)}, n=6), CFG) == []


def test_majority_accuracy_with_a_ranking_auroc_is_not_stuck() -> None:
    h = history_of({"val/acc": 0.9, "val/auroc": 0.85, "label/positive_fraction": 0.1}, n=6)
    assert metric_stuck.check(h, CFG) == []


# ---------------------------------------------------------------- overfitting
def _overfit(rise: float, patience: int) -> list[Finding]:
    n_val = 10
    val = np.r_[np.linspace(0.6, 0.3, n_val - patience), np.full(patience, 0.3 * (1 + rise))]
    h = History()
    for i, v in enumerate(val):
        h.add_point("val/loss", (i + 1) * 100, float(v))
    for s in range(n_val * 100 + 1):
        h.add_point("train/loss", s, float(0.7 * math.exp(-s / 300)))
    return overfitting.check(h, CFG)


@pytest.mark.parametrize(
    ("rise", "patience", "found"),
    [
        (T.of_min_rise * 1.5, T.of_patience, True),
        (T.of_min_rise * 0.5, T.of_patience, False),
        (T.of_min_rise * 1.5, T.of_patience - 1, False),
    ],
)
def test_overfitting(rise: float, patience: int, found: bool) -> None:
    out = _overfit(rise, patience)
    assert bool(out) is found
    if found:
        assert out[0].severity == "warning" and "0.3" in out[0].message


def test_val_loss_rise_with_a_holding_auroc_is_info() -> None:
    h = History()
    val = np.r_[np.linspace(0.6, 0.3, 5), np.full(5, 0.45)]
    for i, v in enumerate(val):
        h.add_point("val/loss", (i + 1) * 100, float(v))
        h.add_point("val/auroc", (i + 1) * 100, float(min(0.96, 0.8 + 0.04 * i)))
    for s in range(1001):
        h.add_point("train/loss", s, float(0.7 * math.exp(-s / 300)))
    out = overfitting.check(h, CFG)
    assert [f.severity for f in out] == ["info"] and "val/auroc holds at 0.960" in out[0].message


def test_a_big_val_loss_rise_with_a_holding_metric_is_still_info() -> None:
    # Three epochs: eval loss up 13% then 30% while accuracy still improves: over-confidence, not worse.
    h = History()
    h.complete = True  # a finished log
    rows = [(0.2548, 0.8925, 0.308), (0.2881, 0.9032, 0.201), (0.3752, 0.9084, 0.142)]
    for i, (vl, acc, tl) in enumerate(rows):
        h.add_point("val/loss", i, vl)
        h.add_point("val/acc", i, acc)
        h.add_point("train/loss", i, tl)
    out = overfitting.check(h, CFG)
    assert [f.severity for f in out] == ["info"]
    assert "+47%" in out[0].message and "val/acc holds" in out[0].message
    # Without the metric, the same rise is overfitting; below of_few_min_rise it is nothing.
    h = History()
    h.complete = True
    for i, (vl, _, tl) in enumerate(rows):
        h.add_point("val/loss", i, vl)
        h.add_point("train/loss", i, tl)
    assert [f.severity for f in overfitting.check(h, CFG)] == ["warning"]
    h = History()
    h.complete = True
    for i, (vl, tl) in enumerate(
        [(0.2548, 0.308), (0.2600, 0.201), (0.2548 * (1 + T.of_few_min_rise * 0.9), 0.142)]
    ):
        h.add_point("val/loss", i, vl)
        h.add_point("train/loss", i, tl)
    assert overfitting.check(h, CFG) == []


def test_a_ranking_auroc_vetoes_the_prior() -> None:
    n = 200
    h = history_of(
        {"label/positive_fraction": 0.1, "train/loss": H10, "val/auroc": 0.9}, n=n, every={"val/auroc": 50}
    )
    assert prior_baseline.check(h, CFG) == []
    h = history_of(
        {"label/positive_fraction": 0.1, "train/loss": H10, "val/auroc": 0.52}, n=n, every={"val/auroc": 50}
    )
    assert "AUROC 0.520 (chance 0.5)" in prior_baseline.check(h, CFG)[0].message


def test_frozen_auroc_just_above_chance() -> None:
    assert metric_stuck.check(history_of({"val/auroc": 0.582}, n=6), CFG)[0].severity == "critical"
    assert metric_stuck.check(history_of({"val/auroc": 0.95}, n=6), CFG) == []  # converged, not stuck


def test_prior_baseline_ignores_a_held_out_accuracy_above_the_training_majority_rate():
    """Regression (flaky demo in CI): with few sampled train/acc points, a small held-out split's own
    balance (4 positives in 64: 93.75% by always saying "normal") must not veto the prior baseline."""
    import math

    import numpy as np

    from muvo_doctor.core.checks import prior_baseline
    from muvo_doctor.core.config import DoctorConfig
    from muvo_doctor.core.history import History

    rng = np.random.default_rng(0)
    h = History()
    p = 0.1
    h_p = -p * math.log(p) - (1 - p) * math.log(1 - p)
    for s in range(300):
        h.add_point("train/loss", s, h_p + rng.normal(0, 0.02))
        if s % 10 == 0:
            h.add_point("label/positive_fraction", s, p)
    for s in (40, 80, 120, 160, 200, 240, 280):
        h.add_point("val/auroc", s, 0.5 + rng.normal(0, 0.02))
        h.add_point("val/acc", s, 0.9375)
    found = prior_baseline.check(h, DoctorConfig())
    assert [f.severity for f in found] == ["critical"]
    assert f"{h_p:.3f}"[:4] in found[0].message


def test_the_message_says_only_what_is_true_of_the_run() -> None:
    # A noisy per-batch accuracy 20 points under the majority rate is not "≈" it.
    n = 200
    rng = np.random.default_rng(5)
    h = history_of(
        {
            "label/positive_fraction": labels(n, 0.1),
            "train/loss": H10 + rng.normal(0, 0.01, n),
            "train/acc": np.clip(0.7 + rng.normal(0, 0.3, n), 0, 1),
        },
        n=n,
    )
    out = prior_baseline.check(h, CFG)
    assert out and "vs majority rate" in out[0].message and "≈ majority rate" not in out[0].message
    # A two-class prior from per-class label fractions names the majority class, not "p".
    h = history_of({"label/fraction/0": 0.9, "label/fraction/1": 0.1, "train/loss": H10}, n=n)
    out = prior_baseline.check(h, CFG)
    assert (
        out and "majority class 90.0% of 2 from the labels" in out[0].message and "p = " not in out[0].message
    )
    assert "prior entropy (2 classes)=0.325" in out[0].message


def test_a_loss_matched_only_within_its_noise_says_how_wide_the_band_is() -> None:
    n = 200
    rng = np.random.default_rng(2)
    h = history_of(
        {"label/positive_fraction": labels(n, 0.1), "train/loss": H10 * 0.92 + rng.normal(0, 0.15, n)}, n=n
    )
    out = prior_baseline.check(h, CFG)
    assert out and "(within ±" in out[0].message
    # A loss that sits on the baseline needs no such note.
    h = history_of({"label/positive_fraction": 0.1, "train/loss": H10 + rng.normal(0, 0.001, n)}, n=n)
    out = prior_baseline.check(h, CFG)
    assert out and "within ±" not in out[0].message


def test_a_log_that_falls_onto_an_inferred_prior_shows_no_evidence_of_learning() -> None:
    # A loss falling from ln 2 to H(0.1) with accuracy at 90% throughout: the fall is the label prior,
    # so the dead report must not also say "evidence of learning: train/loss fell ...".
    n = 150
    rng = np.random.default_rng(4)
    fall = np.concatenate([np.linspace(0.69, H10, 10), np.full(n - 10, H10)]) + rng.normal(0, 0.005, n)
    doc = Doctor(CFG)
    for name, values in {"train/loss": fall, "train/acc": 0.9 + rng.normal(0, 0.005, n)}.items():
        for j, v in enumerate(values):
            doc.history.add_point(name, 20 * j, float(v))
    doc.replay()
    rep = doc.report()
    assert rep.verdict == "dead" and [f.check for f in rep.findings] == ["prior_baseline"]
    assert rep.evidence_for_health is None


def test_a_loss_that_falls_below_an_inferred_prior_still_counts_as_learning() -> None:
    n = 150
    rng = np.random.default_rng(5)
    fall = np.linspace(0.69, 0.05, n) + rng.normal(0, 0.005, n)
    doc = Doctor(CFG)
    for name, values in {"train/loss": fall, "train/acc": np.linspace(0.9, 0.99, n)}.items():
        for j, v in enumerate(values):
            doc.history.add_point(name, 20 * j, float(v))
    doc.replay()
    rep = doc.report()
    assert rep.verdict == "healthy" and rep.evidence_for_health.startswith("train/loss fell")

"""Log-only rules made for few points (epoch logs, excerpts): each just above and just below its threshold.

The fixtures are written here, from the rule's statement; none is a copy of a real log.
"""

from __future__ import annotations

import numpy as np
from conftest import history_of

from muvo_doctor.core.checks import divergence, loss_spike, metric_stuck, nan_inf, overfitting
from muvo_doctor.core.config import DoctorConfig

CFG = DoctorConfig()
T = CFG.thresholds


# ---------------------------------------------------------------- nan_inf: saturation constants
def test_a_loss_at_minus_ln_flt_min_counts_as_infinite() -> None:
    h = history_of(
        {"train/loss": [21.4058, 21.4058, 87.3365, 87.3365, 87.3365]}, digits={"train/loss": 4}, complete=True
    )
    out = nan_inf.check(h, CFG)
    assert out and out[0].severity == "critical" and out[0].evidence["saturation"] == "-ln(FLT_MIN)"
    assert "87.3365" in out[0].message
    # Near it but not at it (a real loss of 87.2): nothing.
    assert nan_inf.check(history_of({"train/loss": [21.4, 87.2, 87.25, 87.2]}, complete=True), CFG) == []
    # Saturated once at the start, finite and far from it afterwards: a warning (it recovered).
    out = nan_inf.check(history_of({"train/loss": [87.3366] + [8.26] * 30}, complete=True), CFG)
    assert out and out[0].severity == "warning"


# ---------------------------------------------------------------- metric_stuck: degenerate scores
def test_a_held_out_score_at_exactly_zero() -> None:
    flat = {"train/box_loss": [1.9, 1.88, 1.9], "val/map50": [0.0, 0.0, 0.0], "val/recall": [0.0, 0.0, 0.0]}
    out = metric_stuck.check(history_of(flat, digits={"val/map50": 3, "val/recall": 3}, complete=True), CFG)
    assert out and out[0].severity == "critical" and "exactly 0.000 in all 3 evaluations" in out[0].message
    # Training that learns: early zeros are only a warning.
    falling = {**flat, "train/box_loss": [1.9, 1.2, 0.8]}
    out = metric_stuck.check(
        history_of(falling, digits={"val/map50": 3, "val/recall": 3}, complete=True), CFG
    )
    assert out and out[0].severity == "warning" and "yet" in out[0].message
    # ... but not after ms_min_evals evaluations.
    n = T.ms_min_evals
    many = {"train/box_loss": list(np.linspace(1.9, 0.5, n)), "val/recall": [0.0] * n}
    assert (
        metric_stuck.check(history_of(many, digits={"val/recall": 3}, complete=True), CFG)[0].severity
        == "critical"
    )
    # One evaluation at zero is not enough; a score at the printed unit is not zero.
    assert (
        metric_stuck.check(history_of({"val/recall": [0.0]}, digits={"val/recall": 3}, complete=True), CFG)
        == []
    )
    assert (
        metric_stuck.check(
            history_of({"val/recall": [0.001, 0.0, 0.0]}, digits={"val/recall": 3}, complete=True), CFG
        )
        == []
    )


def test_a_frozen_score_while_the_loss_falls() -> None:
    n = T.ms_min_evals
    rows = {"train/loss": list(np.linspace(2.0, 0.5, n)), "val/f1": [0.4375] * n}
    out = metric_stuck.check(history_of(rows, complete=True), CFG)
    assert out and out[0].severity == "warning" and "does not follow the training" in out[0].message
    # One evaluation fewer, or a score that moves once: nothing.
    short = {"train/loss": list(np.linspace(2.0, 0.5, n - 1)), "val/f1": [0.4375] * (n - 1)}
    assert metric_stuck.check(history_of(short, complete=True), CFG) == []
    moved = {**rows, "val/f1": [0.4375] * (n - 1) + [0.4402]}
    assert metric_stuck.check(history_of(moved, complete=True), CFG) == []
    # Training stopped too (a decayed schedule): a converged score may repeat.
    still = {"train/loss": [0.5] * n, "val/f1": [0.8125] * n}
    assert metric_stuck.check(history_of(still, complete=True), CFG) == []


# ---------------------------------------------------------------- overfitting with few evaluations
def test_val_loss_rising_at_each_of_the_last_evaluations() -> None:
    rows = {"train/loss": [0.320, 0.193, 0.121], "val/loss": [0.265, 0.278, 0.328]}
    out = overfitting.check(history_of(rows, complete=True), CFG)
    assert out and out[0].severity == "warning" and "up at each of the last 2 evaluations" in out[0].message
    # The same rise while training loss rises too: not overfitting.
    assert overfitting.check(history_of({**rows, "train/loss": [0.12, 0.19, 0.32]}, complete=True), CFG) == []
    # Rising once only: nothing yet.
    assert (
        overfitting.check(
            history_of({"train/loss": [0.3, 0.2, 0.1], "val/loss": [0.3, 0.25, 0.33]}, complete=True), CFG
        )
        == []
    )


def test_held_out_accuracy_sliding_while_training_improves() -> None:
    rows = {
        "train/loss": [0.064, 0.058, 0.048, 0.050, 0.065, 0.041, 0.066, 0.038],
        "val/acc": [0.5516, 0.5177, 0.5234, 0.4578, 0.4437, 0.4569, 0.4754, 0.4271],
    }
    out = overfitting.check(history_of(rows, complete=True), CFG)
    assert out and out[0].severity == "warning" and "val/acc fell from its best 0.5516" in out[0].message
    # A dip smaller than of_metric_drop: nothing.
    small = {**rows, "val/acc": [0.5516, 0.54, 0.545, 0.54, 0.542, 0.541, 0.54, 0.545]}
    assert overfitting.check(history_of(small, complete=True), CFG) == []


def test_a_memorised_training_set() -> None:
    k = T.of_few_evals
    rows = {
        "train/acc": [0.9667] + [1.0] * k,
        "train/loss": [0.1026] + [5e-4] * k,
        "val/loss": [0.1384] + [0.13] * k,
        "val/acc": [0.9733] + [0.96] * k,
    }
    out = overfitting.check(history_of(rows, complete=True), CFG)
    assert out and "memorised" in out[0].message and out[0].severity == "warning"
    # Training accuracy just under 100%: nothing.
    assert (
        overfitting.check(history_of({**rows, "train/acc": [0.9667] + [0.99] * k}, complete=True), CFG) == []
    )


# ---------------------------------------------------------------- divergence on short logs
def test_training_loss_rising_epoch_after_epoch() -> None:
    k = T.div_rises
    fall = [1.587, 1.3, 1.093]
    rise = list(1.093 * (1 + 0.03 * np.arange(1, k + 1)))
    out = divergence.check(history_of({"train/loss": fall + rise}, complete=True), CFG)
    assert out and out[0].severity == "warning" and f"each of the last {k}" in out[0].message
    assert divergence.check(history_of({"train/loss": fall + rise[:-1]}, complete=True), CFG) == []


def test_a_loss_far_above_any_classification_loss_that_does_not_fall() -> None:
    out = divergence.check(history_of({"val/loss": [5.5e8, 5.2e8, 8.1e8, 8.4e8, 4.2e8]}, complete=True), CFG)
    assert out and out[0].severity == "critical" and "val/loss" in out[0].message
    # Large but falling fast (an unnormalised regression target): not divergence.
    assert divergence.check(history_of({"train/loss": [5e8, 1e8, 2e7, 4e6, 8e5]}, complete=True), CFG) == []


def test_a_run_that_ends_worse_than_it_started() -> None:
    rows = {
        "train/loss": [1.5, 1.237, 1.6, 2.028, 2.157, 1.95, 1.787],
        "val/loss": [2.553, 3.2, 3.9, 4.46, 4.1, 4.3, 4.2],
    }
    out = divergence.check(history_of(rows, complete=True), CFG)
    assert out and out[0].severity == "critical" and "worse than it started" in out[0].message
    # Train loss ending below its start: a setback, not an unusable run.
    better = {
        **rows,
        "train/loss": [0.83, 0.12, 0.2, 0.31, 0.3, 0.31, 0.31],
        "val/loss": [0.3, 0.22, 0.42, 0.43, 0.42, 0.44, 0.43],
    }
    got = divergence.check(history_of(better, complete=True), CFG)
    assert not got or got[0].severity != "critical"


def test_a_first_point_below_the_rest_is_not_divergence() -> None:
    # Warm-up: the first logged loss (lr ~0) is lower than what follows, then the run learns.
    v = [0.0736] + list(np.linspace(1.5, 0.5, 60))
    assert divergence.check(history_of({"train/loss": v}, complete=True), CFG) == []


# ---------------------------------------------------------------- loss_spike on short logs
def test_a_jump_that_never_recovers() -> None:
    v = [0.60, 0.45, 0.3925, 0.8816, 0.7743, 0.5779]
    out = loss_spike.check(history_of({"train/loss": v}, complete=True), CFG)
    assert out and out[0].severity == "warning" and "never came back" in out[0].message
    # A jump that comes back below where it was: nothing on a short log.
    assert (
        loss_spike.check(history_of({"train/loss": [0.6, 0.45, 0.39, 0.88, 0.40, 0.35]}, complete=True), CFG)
        == []
    )
    # A jump of less than spike_short_factor: nothing.
    assert (
        loss_spike.check(
            history_of({"train/loss": [0.6, 0.45, 0.3925, 0.70, 0.65, 0.55]}, complete=True), CFG
        )
        == []
    )


# ---------------------------------------------------------------- prior_baseline on few records
def test_few_records_get_the_relative_band_only() -> None:
    from muvo_doctor.core.checks import prior_baseline

    # Two records in the window, far apart: their "standard error" must not widen the band to 30%.
    rows = {"train/loss": [0.3925, 0.8816, 0.7743, 0.5779], "train/acc": [0.8709, 0.735, 0.7613, 0.8223]}
    assert (
        prior_baseline.check(history_of(rows, digits={"train/loss": 4, "train/acc": 4}, complete=True), CFG)
        == []
    )


def test_a_loss_above_the_majority_prior_with_accuracy_frozen_for_five_evaluations() -> None:
    from muvo_doctor.core.checks import prior_baseline

    n = T.ms_min_evals
    rows = {
        "val/loss": list(np.linspace(0.7625, 0.7198, n)),
        "val/acc": [0.555, 0.555, 0.56, 0.56, 0.555][:n],
    }
    out = prior_baseline.check(history_of(rows, complete=True), CFG)
    assert out and "is above prior entropy" in out[0].message and out[0].evidence["confidence"] == "medium"
    # One evaluation fewer: not enough to say the accuracy is frozen.
    short = {k: v[: n - 1] for k, v in rows.items()}
    assert prior_baseline.check(history_of(short, complete=True), CFG) == []


def test_three_exact_repeats_suffice_at_five_significant_digits() -> None:
    from muvo_doctor.core.checks import flat_loss

    k = T.flat_min_repeats_precise
    out = flat_loss.check(
        history_of({"train/loss": [0.9] + [-6.43825e-20] * k}, digits={"train/loss": 25}, complete=True), CFG
    )
    assert out and out[0].severity == "critical" and f"last {k} records" in out[0].message
    # Four significant digits need flat_min_repeats records.
    assert (
        flat_loss.check(
            history_of({"train/loss": [0.9] + [0.6931] * k}, digits={"train/loss": 4}, complete=True), CFG
        )
        == []
    )
    # One record fewer: nothing.
    assert (
        flat_loss.check(
            history_of(
                {"train/loss": [0.9] + [-6.43825e-20] * (k - 1)}, digits={"train/loss": 25}, complete=True
            ),
            CFG,
        )
        == []
    )


def test_short_log_rules_wait_for_the_end_of_a_run() -> None:
    """During a run a short series is a young run: none of the few-point rules may fire before the end."""
    from muvo_doctor.core.checks import flat_loss, prior_baseline

    cases = [
        (flat_loss, {"train/loss": [0.9] + [0.6931] * 8}, {"train/loss": 4}),
        (
            prior_baseline,
            {"train/loss": [1.3563, 1.3864, 1.3864, 1.3864], "train/acc": [0.312, 0.2495, 0.2512, 0.2486]},
            None,
        ),
        (metric_stuck, {"train/box_loss": [1.9, 1.88, 1.9], "val/map50": [0.0, 0.0, 0.0]}, {"val/map50": 3}),
        (overfitting, {"train/loss": [0.320, 0.193, 0.121], "val/loss": [0.265, 0.278, 0.328]}, None),
        (divergence, {"train/loss": [1.587, 1.3, 1.093, 1.12, 1.15, 1.18, 1.21]}, None),
        (loss_spike, {"train/loss": [0.60, 0.45, 0.3925, 0.8816, 0.7743, 0.5779]}, None),
    ]
    for check, rows, digits in cases:
        assert check.check(history_of(rows, digits=digits, complete=True), CFG), (
            check.ID
        )  # found in a finished log ...
        assert check.check(history_of(rows, digits=digits, complete=False), CFG) == [], (
            check.ID
        )  # ... not mid-run


# ---------------------------------------------------------------- exploding_gradients: fp16 loss scale
def test_a_loss_scale_that_halves_ten_times_without_recovering() -> None:
    from muvo_doctor.core.checks import exploding_gradients

    scales = [0.5 / 2**i for i in range(11)]  # 0.5 -> 0.00049: ten halvings, 1024x
    out = exploding_gradients.check(history_of({"optim/loss_scale": scales}, complete=True), CFG)
    assert out and out[0].severity == "critical" and "10 overflow halvings" in out[0].message
    # Nine halvings (512x): a rough patch an fp16 run can recover from.
    assert exploding_gradients.check(history_of({"optim/loss_scale": scales[:-1]}, complete=True), CFG) == []
    # Ten halvings, then the scale grows back: the steps succeed again.
    assert (
        exploding_gradients.check(
            history_of({"optim/loss_scale": [*scales, scales[-1] * 4]}, complete=True), CFG
        )
        == []
    )


def test_a_sliding_held_out_score_with_a_part_name() -> None:
    """``val/acc/target`` is an accuracy (split/metric/part) like ``val/acc``."""
    rows = {
        "train/loss": [0.27, 0.31, 0.09, 0.29, 0.35, 0.24, 0.17, 0.15, 0.06],
        "val/acc/target": [0.5516, 0.5177, 0.5234, 0.4578, 0.4437, 0.4569, 0.4754, 0.4631, 0.4271],
    }
    out = overfitting.check(history_of(rows, complete=True), CFG)
    assert out and "val/acc/target fell from its best 0.5516" in out[0].message


def test_a_val_loss_rising_above_the_prior_with_a_steady_accuracy_is_not_the_prior() -> None:
    """Over-confidence: the accuracy holds at 85% while the val loss climbs past H(0.15) (overfitting)."""
    from muvo_doctor.core.checks import prior_baseline

    n = T.ms_min_evals + 1
    rows = {"val/loss": list(np.linspace(0.35, 1.25, n)), "val/acc": [0.85] * n}
    assert prior_baseline.check(history_of(rows, complete=True), CFG) == []


def test_four_rises_in_a_dense_per_step_log_are_noise() -> None:
    rng = np.random.default_rng(0)
    v = list(np.exp(-np.arange(300) / 150) + rng.normal(0, 0.05, 300)) + [0.6, 0.62, 0.64, 0.66, 0.68]
    assert divergence.check(history_of({"train/loss": v}, complete=True), CFG) == []


def test_a_held_out_loss_blow_up_with_a_score_at_its_best_is_calibration() -> None:
    rows = {
        "train/loss": [0.6, 0.3, 0.1, 0.05, 0.03],
        "val/loss": [0.5, 0.1, 0.037, 0.5, 0.79],
        "val/auroc": [0.8, 0.97, 0.998, 0.999, 0.999],
    }
    assert divergence.check(history_of(rows, complete=True), CFG) == []
    collapsed = {**rows, "val/auroc": [0.8, 0.97, 0.998, 0.7, 0.6]}
    assert divergence.check(history_of(collapsed, complete=True), CFG)[0].evidence["rule"] == "heldout_blowup"


def test_with_two_evaluations_since_the_best_the_latest_score_decides_whether_it_holds() -> None:
    rows = {
        "train/loss": [0.320, 0.193, 0.121],
        "val/loss": [0.265, 0.278, 0.328],
        "val/acc": [0.90, 0.911, 0.896],
    }
    assert [f.severity for f in overfitting.check(history_of(rows, complete=True), CFG)] == ["warning"]
    holding = {**rows, "val/acc": [0.90, 0.911, 0.905]}
    assert [f.severity for f in overfitting.check(history_of(holding, complete=True), CFG)] == ["info"]


def test_a_printed_gradient_norm_at_zero_in_every_record() -> None:
    from muvo_doctor.core.checks import vanishing_gradients

    k = T.vg_log_min_records
    rows = {"grad/norm/total": [0.0] * k, "optim/lr": [0.0017] * k, "train/loss": [208.4, 208.5, 208.8][:k]}
    out = vanishing_gradients.check(history_of(rows, digits={"grad/norm/total": 4}, complete=True), CFG)
    assert out and out[0].severity == "critical" and "0.0000 in all 3 finite records" in out[0].message
    # With a training loss that falls 10%+, the model was updated: the printed norm is not the gradient
    # that trains it (below its resolution under Adam, or a logging artefact). Said, not alarmed.
    falling = {**rows, "train/loss": [2.0, 1.5, 1.0][:k]}
    (info,) = vanishing_gradients.check(
        history_of(falling, digits={"grad/norm/total": 4}, complete=True), CFG
    )
    assert info.severity == "info" and "nothing is updated" not in info.message
    assert "not the norm of the gradients that train the model" in info.message
    # One record fewer, a norm at one printed unit, or lr 0 (frozen_parameters' finding): nothing.
    short = {name: v[: k - 1] for name, v in rows.items()}
    assert (
        vanishing_gradients.check(history_of(short, digits={"grad/norm/total": 4}, complete=True), CFG) == []
    )
    assert (
        vanishing_gradients.check(
            history_of(
                {**rows, "grad/norm/total": [0.0001] * k}, digits={"grad/norm/total": 4}, complete=True
            ),
            CFG,
        )
        == []
    )
    assert (
        vanishing_gradients.check(
            history_of({**rows, "optim/lr": [0.0] * k}, digits={"grad/norm/total": 4}, complete=True), CFG
        )
        == []
    )


def test_the_few_evaluation_rules_leave_longer_runs_to_the_long_rule() -> None:
    # Six evaluations whose val loss rose only in the last two: not yet a trend (the long rule wants 5).
    n = T.of_patience + 1
    val = [0.5, 0.3, 0.2, 0.13, 0.18, 0.24][:n]
    rows = {"train/loss": list(np.linspace(0.6, 0.05, n)), "val/loss": val}
    assert overfitting.check(history_of(rows, complete=True), CFG) == []
    # A memorised training set whose held-out score stays at its best (within of_metric_tol): nothing.
    k = T.of_few_evals
    rows = {
        "train/acc": [0.98] + [1.0] * k,
        "train/loss": [0.05] + [5e-4] * k,
        "val/loss": [0.04] + [0.4] * k,
        "val/auroc": [1.0] + [0.999] * k,
    }
    assert overfitting.check(history_of(rows, complete=True), CFG) == []


def test_a_loss_logged_during_lr_warm_up_is_no_best() -> None:
    # Iterations at lr ~0 log a small loss; training then starts at 1.4 and falls: no divergence.
    n = 200
    loss = [0.07, 0.09, 0.11, 0.12, 0.15] + list(np.linspace(1.4, 0.5, n - 5))
    lr = list(np.linspace(4e-8, 0.004, 5)[:5] * 0.01) + [0.004] * (n - 5)
    assert divergence.check(history_of({"train/loss": loss, "optim/lr": lr}, complete=True), CFG) == []
    # Without the lr, the same series is read as a rise from its best (the rule cannot know).
    assert divergence.check(history_of({"train/loss": loss}, complete=True), CFG)


# ---------------------------------------------------------------- metric_stuck: K from the loss
def test_a_one_class_guess_is_named_with_the_k_its_loss_shows() -> None:
    # 10 classes, held-out accuracy at one class's share (11.35%, MNIST's test set) and the loss at ln 10:
    # the message names K = 10, not the 1/9 that 11.35% is closest to.
    n = T.ms_min_evals
    rows = {"val/loss": [2.3026] * n, "val/acc": [0.1135] * n}
    out = metric_stuck.check(history_of(rows, complete=True), CFG)
    assert out and out[0].severity == "critical" and "chance 1/10 (its loss sits at ln 10" in out[0].message
    assert "1/9" not in out[0].message
    # The same accuracy with a loss that learnt (far below ln 10) is no guess over 10 classes.
    learnt = {"val/loss": [0.9] * n, "val/acc": [0.1135] * n}
    assert all("ln 10" not in f.message for f in metric_stuck.check(history_of(learnt, complete=True), CFG))
    # At ln 10 but an accuracy beyond a one-class share (20%): not a guess.
    better = {"val/loss": [2.3026] * n, "val/acc": [0.2] * n}
    assert all(f.severity != "critical" for f in metric_stuck.check(history_of(better, complete=True), CFG))

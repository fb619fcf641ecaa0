"""An evaluation metric does not improve or sits at chance.

What it does:
    Over the last ``ms_min_evals`` evaluations: ``val/auroc`` within ``ms_auroc_tol`` of 0.5 on
    every one (and never above 0.5 + 2x that tolerance) is chance, and so is an AUROC below
    0.5 + 2x that tolerance that no longer changes at all (range <= 0.001: the model froze); ``val/map`` below
    ``ms_map_floor`` on every one means nothing is detected; an accuracy (``val/acc``, else
    ``train/acc``) within ``ms_acc_tol`` of 1/K (K = 2..10) or of the label majority rate, that never
    rose above it, is chance or the prior. All critical. An accuracy that has not changed at all
    over ``ms_min_evals`` evaluations warns.

    Logs with few evaluations: any held-out score where higher is better (accuracy, precision,
    recall, mAP, F1 ...) that is exactly 0 at its printed precision in every one of
    ``ms_zero_evals`` or more evaluations has recognised nothing; and one that repeats a single
    value exactly over ``ms_min_evals`` evaluations is frozen. Both are critical when there are
    ``ms_min_evals`` evaluations or no training loss has fallen by ``ms_train_rel_drop`` (nothing
    else shows learning), else a warning: early in a detector's training mAP can round to 0.

Why it matters:
    A metric at chance says what the loss may hide: the model's predictions do not depend on the
    input. AUROC 0.5 means the scores rank positives and negatives at random; accuracy at the
    majority rate means it always predicts the majority class.

What to do:
    Check that the evaluation uses the model's scores (not thresholded labels, not a constant),
    that labels match inputs, and read the other findings (``prior_baseline``, ``constant_output``)
    for why the model ignores its input.
"""

from __future__ import annotations

import math

import numpy as np

from muvo_doctor.core.checks._common import (
    HIGHER_BETTER,
    LOSS,
    finite,
    fmt,
    label_prior,
    make,
    median_se,
    metric_of,
    resolution,
    series,
    training_falls,
)
from muvo_doctor.core.config import DoctorConfig, Thresholds
from muvo_doctor.core.finding import Finding
from muvo_doctor.core.history import History

ID = "metric_stuck"

ADVICE = (
    "Check the evaluation uses the model's scores and that labels match inputs; see prior_baseline and "
    "constant_output for why the model ignores its input."
)


def _recent(history: History, name: str, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    got = finite(history, name)
    if got is None or len(got[1]) < k:
        return None
    return got[0], got[1], got[1][-k:]


def _degenerate(history: History, t) -> Finding | None:
    """A held-out score at exactly 0, or frozen at one exact value (see the module docstring)."""
    for name in history.names():
        split, metric = name.partition("/")[0], metric_of(name)
        if split not in ("val", "test") or metric not in HIGHER_BETTER:
            continue
        s = series(history, name)
        # Under ms_min_evals evaluations, only a whole log is judged: early in a run a score can sit at 0.
        need = t.ms_zero_evals if history.complete else t.ms_min_evals
        if s is None or len(s) < need or not np.isfinite(s.values).all():
            continue
        v = s.values
        unit = resolution(s)
        zero = bool(np.all(np.abs(v) <= 0.5 * unit)) if unit else bool(np.all(v == 0))
        frozen = not zero and len(v) >= t.ms_min_evals and bool(np.all(v == v[-1]))
        if not (zero or frozen):
            continue
        falls = training_falls(history, t.ms_train_rel_drop)
        if frozen and falls is None:
            continue  # training stopped moving too (lr decayed to 0): a converged model repeats its score
        critical = zero and (len(v) >= t.ms_min_evals or falls is None)
        shown = f"{float(v[-1]):.{s.digits}f}" if s.digits is not None else fmt(float(v[-1]))
        if frozen:
            tail = f" while {falls}: the evaluation does not follow the training (a stale model or a constant score)"
        elif critical:
            tail = ": the model has recognised nothing" + (
                "" if falls else " and no training loss shows learning"
            )
        else:
            tail = (
                f": the model has recognised nothing yet ({falls}; early in training a score can round to 0)"
            )
        msg = f"{name} is exactly {shown} in all {len(v)} evaluations (steps {int(s.steps[0])}-{int(s.steps[-1])}){tail}."
        ev = {
            "series": name,
            "value": float(v[-1]),
            "evals": len(v),
            "digits": s.digits,
            "training_falls": falls,
        }
        return make(ID, "critical" if critical else "warning", int(s.steps[0]), msg, ev, ADVICE)
    return None


def _auroc_at_chance(history: History, t: Thresholds) -> Finding | None:
    """val/auroc at chance over the last ``ms_min_evals`` evaluations, or frozen just above it."""
    k = t.ms_min_evals
    au = _recent(history, "val/auroc", k)
    if au is None:
        return None
    steps, v, w = au
    if np.all(np.abs(w - 0.5) <= t.ms_auroc_tol) and v.max() <= 0.5 + 2 * t.ms_auroc_tol:
        msg = (
            f"val/auroc is {float(np.median(w)):.3f} over the last {k} evaluations (range "
            f"{float(w.min()):.3f}-{float(w.max()):.3f}, best ever {float(v.max()):.3f}): chance level, the "
            f"scores do not separate the classes."
        )
        ev = {"series": "val/auroc", "median": float(np.median(w)), "best": float(v.max()), "evals": len(v)}
        return make(ID, "critical", int(steps[0]), msg, ev, ADVICE)
    if float(w.max() - w.min()) <= 1e-3 and float(np.median(w)) < 0.5 + 2 * t.ms_auroc_tol:
        msg = (
            f"val/auroc has stayed at {float(np.median(w)):.3f} for the last {k} evaluations (range "
            f"{float(w.max() - w.min()):.4f}): the model's scores no longer change and barely beat chance."
        )
        ev = {"series": "val/auroc", "median": float(np.median(w)), "range": float(w.max() - w.min())}
        return make(ID, "critical", int(steps[-k]), msg, ev, ADVICE)
    return None


def _map_at_zero(history: History, t: Thresholds) -> Finding | None:
    mp = _recent(history, "val/map", t.ms_min_evals)
    if mp is None:
        return None
    steps, v, w = mp
    if not np.all(w < t.ms_map_floor):
        return None
    msg = (
        f"val/map stayed below {t.ms_map_floor:g} over the last {t.ms_min_evals} evaluations "
        f"(best {float(v.max()):.4f}): nothing is detected."
    )
    return make(ID, "critical", int(steps[0]), msg, {"series": "val/map", "best": float(v.max())}, ADVICE)


def _learns(history: History, t: Thresholds) -> bool:
    """Accuracy at the majority rate is not "stuck" when the scores do rank (AUROC above chance) or the
    loss is clearly below the prior's: with rare positives a learning model keeps the majority
    accuracy for a long while."""
    au = _recent(history, "val/auroc", t.ms_min_evals)
    if au is not None and au[1].max() > 0.5 + 2 * t.ms_auroc_tol:
        return True
    prior = label_prior(history)
    loss = finite(history, LOSS)
    return (
        prior is not None
        and loss is not None
        and len(loss[1]) >= t.min_points
        and float(np.median(loss[1][-t.pb_window :])) < prior.entropy * (1 - t.pb_rel_band)
    )


def _loss_classes(history: History, t: Thresholds) -> int | None:
    """K when the log's loss (held-out first) sits at ln K for a K of 2..10: the loss of a uniform guess."""
    for name in ("val/loss", "test/loss", LOSS):
        got = finite(history, name)
        if got is None or len(got[1]) < t.ms_min_evals:
            continue
        med = float(np.median(got[1][-t.ms_min_evals :]))
        k = round(math.exp(min(med, 5.0)))
        if 2 <= k <= 10 and abs(med - math.log(k)) <= t.pb_rel_band * math.log(k):
            return k
    return None


def _chance_targets(history: History, t: Thresholds) -> list[tuple[str, float, float]]:
    """(how the message names it, accuracy, tolerance) of a model that guesses.

    From the labels: the majority rate (and 1/K). Without them, 1/K for K = 2..10; when the loss sits at
    ln K, that K alone, with the tolerance of a guess that always names one class, whose accuracy is that
    class's share of the evaluated set (11.35% for MNIST's test set, not 1/9).
    """
    prior = label_prior(history)
    if prior is not None:
        targets = [(f"the majority rate {prior.majority:.1%}", prior.majority, t.ms_acc_tol)]
        if prior.kind == "multiclass":
            targets.append((f"chance 1/{prior.classes}", 1.0 / prior.classes, t.ms_acc_tol))
        return targets
    k = _loss_classes(history, t)
    if k is not None:
        tol = max(t.ms_acc_tol, t.ms_one_class_rel / k)
        return [(f"chance 1/{k} (its loss sits at ln {k}, a uniform guess over {k} classes)", 1.0 / k, tol)]
    return [(f"chance 1/{c}", 1.0 / c, t.ms_acc_tol) for c in range(2, 11)]


def _accuracy_at_chance(history: History, t: Thresholds) -> Finding | None:
    """Accuracy at the majority rate or 1/K (K from the labels or the loss, else 2..10), or one value for every
    evaluation."""
    k = t.ms_min_evals
    targets = _chance_targets(history, t)
    for name in ("val/acc", "train/acc"):
        # Evaluations are few and exact; per-step training accuracy is noisy, so it is judged by its median.
        per_step = name == "train/acc"
        ac = _recent(history, name, max(k, t.pb_window) if per_step else k)
        if ac is None:
            continue
        steps, v, w = ac
        med = float(np.median(w))
        se = median_se(w) if per_step else 0.0
        for label, target, tol in targets:
            if per_step:
                at = abs(med - target) <= tol + 2 * se
            else:
                at = bool(np.all(np.abs(w - target) <= tol)) and v.max() <= target + 4 * tol
            if at:
                msg = (
                    f"{name} is {med:.2%} over the last {len(w)} {'steps' if per_step else 'evaluations'} ≈ {label}: "
                    f"the model does no better than guessing."
                )
                ev = {
                    "series": name,
                    "median": med,
                    "target": target,
                    "best": float(v.max()),
                    "points": len(w),
                }
                return make(ID, "critical", int(steps[-len(w)]), msg, ev, ADVICE)
        if not per_step and float(v.max() - v.min()) == 0.0:
            msg = f"{name} has not changed in {len(v)} evaluations (always {med:.2%}): the metric is stuck."
            ev = {"series": name, "value": med, "evals": len(v)}
            return make(ID, "warning", int(steps[0]), msg, ev, ADVICE)
        return None  # judge val/acc when present; train/acc only without it
    return None


def check(history: History, config: DoctorConfig) -> list[Finding]:
    t = config.thresholds
    found = _degenerate(history, t)
    if found is not None and found.severity == "critical":
        return [found]
    auroc = _auroc_at_chance(history, t)
    if auroc is not None:
        return [auroc]
    zero_map = _map_at_zero(history, t)
    if zero_map is not None:
        return [zero_map]
    if _learns(history, t):
        return []
    acc = _accuracy_at_chance(history, t)
    if acc is not None:
        return [acc]
    return [found] if found is not None else []

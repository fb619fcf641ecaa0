"""An evaluation metric does not improve or sits at chance.

What it does:
    Over the last ``ms_min_evals`` evaluations: ``val/auroc`` within ``ms_auroc_tol`` of 0.5 on
    every one (and never above 0.5 + 2x that tolerance) is chance, and so is an AUROC below
    0.5 + 2x that tolerance that no longer changes at all (range <= 0.001: the model froze); ``val/map`` below
    ``ms_map_floor`` on every one means nothing is detected; an accuracy (``val/acc``, else
    ``train/acc``) within ``ms_acc_tol`` of 1/K (K = 2..10) or of the label majority rate, that never
    rose above it, is chance or the prior. All critical. An accuracy that has not changed at all
    over ``ms_min_evals`` evaluations warns.

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

import numpy as np

from muvo_doctor.checks._common import LOSS, finite, label_prior, make, median_se
from muvo_doctor.config import DoctorConfig
from muvo_doctor.finding import Finding
from muvo_doctor.history import History

ID = "metric_stuck"
RETRACTABLE = True  # judged over the run so far: the latest evaluation rules (see Doctor)

ADVICE = (
    "Check the evaluation uses the model's scores and that labels match inputs; see prior_baseline and "
    "constant_output for why the model ignores its input."
)


def _recent(history: History, name: str, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    got = finite(history, name)
    if got is None or len(got[1]) < k:
        return None
    return got[0], got[1], got[1][-k:]


def check(history: History, config: DoctorConfig) -> list[Finding]:
    t = config.thresholds
    k = t.ms_min_evals
    au = _recent(history, "val/auroc", k)
    if au is not None:
        steps, v, w = au
        if np.all(np.abs(w - 0.5) <= t.ms_auroc_tol) and v.max() <= 0.5 + 2 * t.ms_auroc_tol:
            msg = (
                f"val/auroc is {float(np.median(w)):.3f} over the last {k} evaluations (range "
                f"{float(w.min()):.3f}-{float(w.max()):.3f}, best ever {float(v.max()):.3f}): chance level, the "
                f"scores do not separate the classes."
            )
            ev = {
                "series": "val/auroc",
                "median": float(np.median(w)),
                "best": float(v.max()),
                "evals": len(v),
            }
            return [make(ID, "critical", int(steps[0]), msg, ev, ADVICE)]
        if float(w.max() - w.min()) <= 1e-3 and float(np.median(w)) < 0.5 + 2 * t.ms_auroc_tol:
            msg = (
                f"val/auroc has stayed at {float(np.median(w)):.3f} for the last {k} evaluations (range "
                f"{float(w.max() - w.min()):.4f}): the model's scores no longer change and barely beat chance."
            )
            ev = {"series": "val/auroc", "median": float(np.median(w)), "range": float(w.max() - w.min())}
            return [make(ID, "critical", int(steps[-k]), msg, ev, ADVICE)]
    mp = _recent(history, "val/map", k)
    if mp is not None:
        steps, v, w = mp
        if np.all(w < t.ms_map_floor):
            msg = f"val/map stayed below {t.ms_map_floor:g} over the last {k} evaluations (best {float(v.max()):.4f}): nothing is detected."
            return [
                make(
                    ID, "critical", int(steps[0]), msg, {"series": "val/map", "best": float(v.max())}, ADVICE
                )
            ]
    prior = label_prior(history)
    if prior is not None:
        targets = [(f"the majority rate {prior.majority:.1%}", prior.majority)]
        if prior.kind == "multiclass":
            targets.append((f"chance 1/{prior.classes}", 1.0 / prior.classes))
    else:
        targets = [(f"chance 1/{c}", 1.0 / c) for c in range(2, 11)]
    # Accuracy at the majority rate is not "stuck" when the scores do rank (AUROC above chance) or the
    # loss is clearly below the prior's: with rare positives a learning model keeps the majority
    # accuracy for a long while.
    if au is not None and au[1].max() > 0.5 + 2 * t.ms_auroc_tol:
        return []
    loss = finite(history, LOSS)
    if prior is not None and loss is not None and len(loss[1]) >= t.min_points:
        if float(np.median(loss[1][-t.pb_window :])) < prior.entropy * (1 - t.pb_rel_band):
            return []
    for name in ("val/acc", "train/acc"):
        # Evaluations are few and exact; per-step training accuracy is noisy, so it is judged by its median.
        per_step = name == "train/acc"
        ac = _recent(history, name, max(k, t.pb_window) if per_step else k)
        if ac is None:
            continue
        steps, v, w = ac
        med = float(np.median(w))
        se = median_se(w) if per_step else 0.0
        for label, target in targets:
            if per_step:
                at = abs(med - target) <= t.ms_acc_tol + 2 * se
            else:
                at = bool(np.all(np.abs(w - target) <= t.ms_acc_tol)) and v.max() <= target + 4 * t.ms_acc_tol
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
                return [make(ID, "critical", int(steps[-len(w)]), msg, ev, ADVICE)]
        if not per_step and float(v.max() - v.min()) == 0.0:
            msg = f"{name} has not changed in {len(v)} evaluations (always {med:.2%}): the metric is stuck."
            return [
                make(
                    ID, "warning", int(steps[0]), msg, {"series": name, "value": med, "evals": len(v)}, ADVICE
                )
            ]
        break  # judge val/acc when present; train/acc only without it
    return []

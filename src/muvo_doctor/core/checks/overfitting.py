"""Validation loss rises while training loss falls.

What it does:
    Finds the best (lowest) ``val/loss`` so far. When the last ``of_patience`` validation points all
    sit at least ``of_min_rise`` above it (relative), and the training loss since that best point
    kept falling (its median after the best step is lower than before it), the model is
    overfitting. A warning: the model learns, only too specifically. When a validation quality
    metric (``val/auroc``, ``val/acc``, ``val/map``) is still within ``of_metric_tol`` of its best,
    the rise is over-confidence (calibration) rather than lost accuracy, and it is reported as info,
    however large the rise (measured: healthy muvo_model runs end with val loss 10-20x its best at
    val AUROC 0.999, a few confidently wrong frames).

    Epoch logs have few evaluations, so three rules are made for few points: in a log too short for
    the rule above (fewer than ``of_patience`` + 1 evaluations), the validation loss rose at each of
    the last ``of_few_rises`` evaluations to ``of_few_min_rise`` above its best while the training
    loss fell; a held-out score (accuracy, mAP, F1 ...) sits ``of_metric_drop`` (absolute,
    or that fraction of the best if smaller than 1) below its best in each of the last
    ``of_few_evals`` evaluations while training improves; or the training set is memorised
    (training accuracy at 100% and training loss under a tenth of the validation loss in each of the
    last ``of_few_evals`` evaluations) while the held-out score is more than ``of_metric_tol`` below
    its best.

Why it matters:
    From the best validation point on, every step makes the model worse on unseen data; the final
    checkpoint is not the best one and the reported metrics overstate generalisation.

What to do:
    Keep the checkpoint at the best validation step (early stopping), add regularisation (weight
    decay, dropout, augmentation), use more data or a smaller model.
"""

from __future__ import annotations

import numpy as np

from muvo_doctor.core.checks._common import LOSS, around, finite, fmt, make, scores
from muvo_doctor.core.config import DoctorConfig
from muvo_doctor.core.finding import Finding
from muvo_doctor.core.history import History

ID = "overfitting"

ADVICE = "Keep the checkpoint at the best validation step (early stopping), add weight decay/dropout/augmentation, or use more data."


def _holds(history: History, t, after: int) -> list[str]:
    """Held-out quality metrics still within ``of_metric_tol`` of their best (the rise is calibration)."""
    holds: list[str] = []
    for name in ("val/auroc", "val/map", "val/acc"):
        got = finite(history, name)
        if got is not None and len(got[1]) > after:
            m = got[1]
            # The median of the evaluations since the best resists one noisy evaluation; with fewer
            # than 3 of them the latest is the evidence (0.911 then 0.896 does not "hold at 0.904").
            recent = float(np.median(m[-after:])) if after >= 3 else float(m[-1])
            if recent >= float(m.max()) - t.of_metric_tol:
                holds.append(f"{name} holds at {recent:.3f} (best {float(m.max()):.3f})")
            else:
                return []
    return holds


def _train_fell(train: tuple[np.ndarray, np.ndarray], best_step: int, k: int) -> tuple[float, float] | None:
    """(median before, median after) of the training loss around ``best_step`` when it fell, else None."""
    got = around(train, best_step, k)
    return got if got is not None and got[1] < got[0] else None


def _val_loss_rise(history: History, t) -> Finding | None:
    val = finite(history, "val/loss")
    train = finite(history, LOSS)
    if val is None or train is None:
        return None
    vs, vv = val
    if len(vv) >= t.of_patience + 1:
        best_i = int(np.argmin(vv))
        best = float(vv[best_i])
        tail = vv[-t.of_patience :]
        long_rule = best_i < len(vv) - t.of_patience and bool(
            np.all(tail >= best + t.of_min_rise * max(abs(best), 1e-12))
        )
    else:
        long_rule = False
    k = t.of_few_rises
    if not long_rule:
        if not history.complete or len(vv) >= t.of_patience + 1:
            # The few-evaluation rule judges a whole log, and only one too short for the long rule
            # (a run with 6+ evaluations whose val loss rose in its last 2 has not shown a trend yet).
            return None
        # Few evaluations: a rise at each of the last k, to of_few_min_rise above the best before them.
        if len(vv) < k + 1 or not np.all(np.diff(vv[-(k + 1) :]) > 0):
            return None
        best_i = int(np.argmin(vv[: len(vv) - k]))
        best = float(vv[best_i])
        if not vv[-1] >= best + t.of_few_min_rise * max(abs(best), 1e-12):
            return None
    best_step = int(vs[best_i])
    fell = _train_fell(train, best_step, k)
    if fell is None:
        return None
    tb, ta = fell
    now = float(vv[-1])
    rise = (now - best) / abs(best) if best else 0.0
    after = len(vv) - 1 - best_i
    holds = _holds(history, t, after)
    info = bool(holds)
    rule = (
        f"the last {t.of_patience} evaluations all higher"
        if long_rule
        else f"up at each of the last {k} evaluations"
    )
    msg = (
        f"val/loss rose from its best {fmt(best)} at step {best_step} to {fmt(now)} (+{rise:.0%}, {rule}) "
        f"while {LOSS} fell from {fmt(tb)} to {fmt(ta)}"
        + (
            f"; {holds[0]}, so it is over-confident rather than worse."
            if info
            else ": the model is overfitting."
        )
    )
    ev = {
        "best_val_loss": best,
        "best_step": best_step,
        "val_loss": now,
        "train_before": tb,
        "train_after": ta,
    }
    return make(ID, "info" if info else "warning", int(vs[best_i + 1]), msg, ev, ADVICE)


def _training_improves(history: History, since_step: int, t) -> str | None:
    """The training side got better after ``since_step`` (loss fell or accuracy rose / sits at 100%)."""
    acc = finite(history, "train/acc")
    if (
        acc is not None
        and len(acc[1])
        and float(np.median(acc[1][acc[0] > since_step][-3:] if np.any(acc[0] > since_step) else acc[1][-1:]))
        >= 0.999
    ):
        return "training accuracy is 100%"
    loss = finite(history, LOSS)
    if loss is not None:
        fell = _train_fell(loss, since_step, 1)
        # A real fall: 0.6965 -> 0.6951 at the prior is not a training side that improves.
        if fell is not None and fell[1] < (1 - t.lnd_min_rel_drop) * fell[0]:
            return f"{LOSS} fell from {fmt(fell[0])} to {fmt(fell[1])}"
    return None


def _metric_falls(history: History, t) -> Finding | None:
    """A held-out score below its best in each of the last ``of_few_evals`` evaluations while training improves."""
    k = t.of_few_evals
    for name, ms, mv in scores(history, k + 1, ("val",)):
        best_i = int(np.argmax(mv))
        best = float(mv[best_i])
        drop = t.of_metric_drop
        if best_i >= len(mv) - k or not np.all(mv[-k:] <= best - drop):
            continue
        why = _training_improves(history, int(ms[best_i]), t)
        if why is None:
            continue
        now = float(mv[-1])
        msg = (
            f"{name} fell from its best {best:.4g} at step {int(ms[best_i])} to {now:.4g} and stayed at least "
            f"{drop:.3g} below it in each of the last {k} evaluations while {why}: the model is overfitting."
        )
        ev = {"series": name, "best": best, "best_step": int(ms[best_i]), "now": now, "training": why}
        return make(ID, "warning", int(ms[best_i + 1]), msg, ev, ADVICE)
    return None


def _memorised(history: History, t) -> Finding | None:
    """Training accuracy 100% and training loss under a tenth of the validation loss, held-out score off its best."""
    k = t.of_few_evals
    acc, loss, vloss = finite(history, "train/acc"), finite(history, LOSS), finite(history, "val/loss")
    if acc is None or loss is None or vloss is None or len(vloss[1]) < k:
        return None
    if not np.all(acc[1][-k:] >= 0.999) or not np.all(loss[1][-k:] * 10 < vloss[1][-k:]):
        return None
    train, val = float(loss[1][-1]), float(vloss[1][-1])
    for name, ms, mv in scores(history, k + 1, ("val",)):
        best, now = float(mv.max()), float(mv[-1])
        if not np.all(mv[-k:] < best - t.of_metric_tol):
            continue  # a score at its best (0.999 vs 1.0) is not hurt by the memorising
        msg = (
            f"The training set is memorised: train/acc is 100% and {LOSS} {fmt(train)} is "
            f"{val / max(train, 1e-30):.0f}x below val/loss {fmt(val)} "
            f"in each of the last {k} evaluations, while {name} ({now:.4g}) stays below its best {best:.4g}."
        )
        ev = {"series": name, "best": best, "now": now, "train_loss": train, "val_loss": val}
        return make(ID, "warning", int(ms[-k]), msg, ev, ADVICE)
    return None


def check(history: History, config: DoctorConfig) -> list[Finding]:
    t = config.thresholds
    rules = [_val_loss_rise(history, t)]
    if history.complete:  # few-evaluation rules judge a whole log, not a young run
        rules += [_metric_falls(history, t), _memorised(history, t)]
    found = [f for f in rules if f]
    found.sort(key=lambda f: f.severity != "warning")
    return found[:1]

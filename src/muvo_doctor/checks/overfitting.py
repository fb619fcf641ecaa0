"""Validation loss rises while training loss falls.

What it does:
    Finds the best (lowest) ``val/loss`` so far. When the last ``of_patience`` validation points all
    sit at least ``of_min_rise`` above it (relative), and the training loss since that best point
    kept falling (its median after the best step is lower than before it), the model is
    overfitting. A warning: the model learns, only too specifically. When a validation quality
    metric (``val/auroc``, ``val/acc``, ``val/map``) is still within ``of_metric_tol`` of its best,
    the rise is over-confidence (calibration) rather than lost accuracy, and it is reported as info.

Why it matters:
    From the best validation point on, every step makes the model worse on unseen data; the final
    checkpoint is not the best one and the reported metrics overstate generalisation.

What to do:
    Keep the checkpoint at the best validation step (early stopping), add regularisation (weight
    decay, dropout, augmentation), use more data or a smaller model.
"""

from __future__ import annotations

import numpy as np

from muvo_doctor.checks._common import LOSS, finite, fmt, make
from muvo_doctor.config import DoctorConfig
from muvo_doctor.finding import Finding
from muvo_doctor.history import History

ID = "overfitting"

ADVICE = "Keep the checkpoint at the best validation step (early stopping), add weight decay/dropout/augmentation, or use more data."


def check(history: History, config: DoctorConfig) -> list[Finding]:
    t = config.thresholds
    val = finite(history, "val/loss")
    train = finite(history, LOSS)
    if val is None or train is None:
        return []
    vs, vv = val
    if len(vv) < t.of_patience + 1:
        return []
    best_i = int(np.argmin(vv))
    best = float(vv[best_i])
    tail = vv[-t.of_patience :]
    if best_i >= len(vv) - t.of_patience:
        return []
    if not np.all(tail >= best + t.of_min_rise * max(abs(best), 1e-12)):
        return []
    ts, tv = train
    best_step = int(vs[best_i])
    before, after = tv[ts <= best_step], tv[ts > best_step]
    if len(before) == 0 or len(after) == 0:
        return []
    tb, ta = float(np.median(before[-max(len(after), 1) :])), float(np.median(after))
    if not ta < tb:
        return []
    now = float(vv[-1])
    holds = []
    for name in ("val/auroc", "val/map", "val/acc"):
        got = finite(history, name)
        if got is not None and len(got[1]) > t.of_patience:
            m = got[1]
            recent = float(np.median(m[-t.of_patience :]))
            if recent >= float(m.max()) - t.of_metric_tol:
                holds.append(f"{name} holds at {recent:.3f} (best {float(m.max()):.3f})")
            else:
                holds = []
                break
    msg = (
        f"val/loss rose from its best {fmt(best)} at step {best_step} to {fmt(now)} "
        f"(+{(now - best) / abs(best) if best else 0:.0%}, the last {t.of_patience} evaluations all higher) "
        f"while {LOSS} fell from {fmt(tb)} to {fmt(ta)}"
        + (
            f"; {holds[0]}, so it is over-confident rather than worse."
            if holds
            else ": the model is overfitting."
        )
    )
    return [
        make(
            ID,
            "info" if holds else "warning",
            int(vs[best_i + 1]),
            msg,
            {
                "best_val_loss": best,
                "best_step": best_step,
                "val_loss": now,
                "train_before": tb,
                "train_after": ta,
            },
            ADVICE,
        )
    ]

"""Validation loss rises while training loss falls.

What it does:
    Finds the best (lowest) ``val/loss`` so far. When the last ``of_patience`` validation points all
    sit at least ``of_min_rise`` above it (relative), and the training loss since that best point
    kept falling (its median after the best step is lower than before it), the model is
    overfitting. A warning: the model learns, only too specifically.

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
    msg = (
        f"val/loss rose from its best {fmt(best)} at step {best_step} to {fmt(now)} "
        f"(+{(now - best) / abs(best) if best else 0:.0%}, the last {t.of_patience} evaluations all higher) "
        f"while {LOSS} fell from {fmt(tb)} to {fmt(ta)}: the model is overfitting."
    )
    return [
        make(
            ID,
            "warning",
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

"""Parameters that never change: no gradient, not in the optimizer, zero learning rate.

What it does:
    Reads the recorder's fractions of trainable parameter elements that did not change over the
    window (``param/frozen``), got no gradient (``param/no_grad``), are in no optimizer group
    (``param/not_in_optimizer``) or have a zero learning rate (``param/zero_lr``), and ``optim/lr``
    staying at exactly 0 for ``window`` points. A fraction of at least ``frozen_min_fraction`` warns;
    critical when at least ``frozen_all_fraction`` is frozen and the loss is not improving.
    From logs alone: per-step losses that repeat exactly one epoch later (``frozen_repeat_fraction``
    of them, over at least ``frozen_repeat_min_distinct`` distinct values) mean the same batches
    meet the same weights every epoch.

Why it matters:
    Weights that never change cannot learn. It happens when a module is built after the optimizer,
    when ``requires_grad`` is switched off by mistake, when the loss is computed from detached
    tensors, or when a scheduler drives the learning rate to zero.

What to do:
    Build the optimizer from ``model.parameters()`` after the model is complete, check
    ``requires_grad`` of the reported modules, remove ``.detach()``/``.item()``/``torch.no_grad()``
    from the loss path, and print the learning rate of every parameter group.
"""

from __future__ import annotations

import numpy as np

from muvo_doctor.checks._common import LOSS, make, outcome_failure, series
from muvo_doctor.config import DoctorConfig
from muvo_doctor.finding import Finding
from muvo_doctor.history import History

ID = "frozen_parameters"

ADVICE = (
    "Create the optimizer from model.parameters() after the model is built, check requires_grad of the "
    "reported modules, remove .detach()/.item()/no_grad from the loss path, and print each group's lr."
)

STATES = {
    "param/frozen": "did not change over the window",
    "param/no_grad": "received no gradient",
    "param/not_in_optimizer": "are in no optimizer parameter group",
    "param/zero_lr": "have a zero learning rate",
}


def _repeating(history: History, t) -> tuple[int, float, int, int] | None:
    """(period, share repeating, points, first repeat step) when the loss repeats epoch after epoch."""
    s = series(history, LOSS)
    if s is None:
        return None
    ok = np.isfinite(s.values)
    v, steps = s.values[ok], s.steps[ok]
    n = len(v)
    if n < max(2 * t.frozen_repeat_min_distinct, t.min_points):
        return None
    uniq, inv = np.unique(v, return_inverse=True)
    if len(uniq) < t.frozen_repeat_min_distinct:
        return None
    # Only points that differ from their predecessor count: a loss stuck at one value (e.g. exactly
    # 0) repeats at every lag and is flat_loss's business, not an epoch-periodic repetition.
    moving = np.r_[True, v[1:] != v[:-1]]
    if int(moving.sum()) < 2 * t.frozen_repeat_min_distinct:
        return None
    order = np.lexsort((np.arange(n), inv))
    g = inv[order]
    same = (g[1:] == g[:-1]) & moving[order[1:]]
    lags = (order[1:] - order[:-1])[same]
    lags = lags[lags >= 2]
    if len(lags) == 0:
        return None
    period = int(np.bincount(lags).argmax())
    if n < 2 * period:
        return None
    m = moving[period:]
    share = float(np.mean((v[period:] == v[:-period])[m]))
    if share < t.frozen_repeat_fraction:
        return None
    return period, share, n, int(steps[period])


def check(history: History, config: DoctorConfig) -> list[Finding]:
    t = config.thresholds
    warm = history.last_step >= t.min_points
    worst: tuple[float, str, str, int] | None = None  # (fraction, signal, description, first step)
    parts: list[str] = []
    evidence: dict = {}
    for name, desc in STATES.items():
        s = series(history, name)
        if s is None or not warm:
            continue
        w = s.values[-t.window :]
        w = w[np.isfinite(w)]
        if len(w) == 0:
            continue
        frac = float(np.median(w))
        evidence[name.split("/", 1)[1]] = frac
        if frac < t.frozen_min_fraction:
            continue
        above = np.flatnonzero(~(s.values >= t.frozen_min_fraction))
        first = int(s.steps[above[-1] + 1]) if len(above) and above[-1] + 1 < len(s) else int(s.steps[0])
        parts.append(f"{frac:.0%} of trainable parameter elements {desc} ({name})")
        if worst is None or frac > worst[0]:
            worst = (frac, name, desc, first)
    lr = series(history, "optim/lr")
    if lr is not None and len(lr) >= t.min_points:
        w = lr.values[-t.window :]
        if np.isfinite(w).all() and np.all(w == 0):
            nz = np.flatnonzero(lr.values != 0)
            first = int(lr.steps[nz[-1] + 1]) if len(nz) else int(lr.steps[0])
            parts.append(
                f"the learning rate optim/lr has been 0 for {len(lr) - (nz[-1] + 1 if len(nz) else 0)} points"
            )
            evidence["lr"] = 0.0
            if worst is None or worst[0] < 1.0:
                worst = (1.0, "optim/lr", "have a zero learning rate", first)
    rep = _repeating(history, t)
    if rep is not None:
        period, share, n, first = rep
        parts.append(
            f"{LOSS} repeats exactly every {period} points: {share:.0%} of {n} values equal the one an epoch "
            f"earlier, so the weights did not change between epochs"
        )
        evidence.update({"repeat_period": period, "repeat_share": share})
        if worst is None or worst[0] < 1.0:
            worst = (1.0, LOSS, "repeat", first)
    if worst is None:
        return []
    frac, signal, _, first = worst
    modules = [n for n in history.names("param/frozen/") if "@rank" not in n]
    if modules:
        mods = ", ".join(n[len("param/frozen/") :] for n in modules[:5]) + (
            " ..." if len(modules) > 5 else ""
        )
        parts.append(f"modules affected: {mods}")
        evidence["modules"] = [n[len("param/frozen/") :] for n in modules[:20]]
    failing = outcome_failure(history, t)
    critical = frac >= t.frozen_all_fraction and failing is not None
    msg = "; ".join(parts)
    msg = (msg if msg.startswith(LOSS) else msg[0].upper() + msg[1:]) + (f", {failing}." if failing else ".")
    evidence["fraction"] = frac
    evidence["signal"] = signal
    return [make(ID, "critical" if critical else "warning", first, msg, evidence, ADVICE)]

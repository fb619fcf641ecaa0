"""Gradients accumulate across steps: a missing ``optimizer.zero_grad()``.

What it does:
    Reads ``grad/stale`` (1.0 when the previous step's gradient was still present when the next
    forward began): a mean above ``stale_fraction`` over the last ``window`` points is stale. Without
    that signal (logs), a total gradient norm that grows ``stale_growth_ratio``-fold nearly linearly
    with the step (Pearson r >= ``stale_growth_corr``) while the loss does not improve is the same
    symptom: each step adds a new gradient to the old sum. A warning; critical when the loss is not
    improving.

Why it matters:
    Without ``zero_grad`` every step applies the sum of all past gradients: the effective learning
    rate grows with the step count, the updates point at where the model was long ago, and the run
    oscillates or diverges.

What to do:
    Call ``optimizer.zero_grad(set_to_none=True)`` once per optimizer step (before ``backward``).
    If you accumulate gradients on purpose, zero them after each ``optimizer.step()``.
"""

from __future__ import annotations

import numpy as np

from muvo_doctor.core.checks._common import fmt, make, mechanism, outcome_failure, progress, series
from muvo_doctor.core.config import DoctorConfig
from muvo_doctor.core.finding import Finding
from muvo_doctor.core.history import History

ID = "stale_gradients"

ADVICE = "Call optimizer.zero_grad(set_to_none=True) once per optimizer step; when accumulating on purpose, zero after each optimizer.step()."


def check(history: History, config: DoctorConfig) -> list[Finding]:
    t = config.thresholds
    failing = outcome_failure(history, t)
    s = series(history, "grad/stale")
    if s is not None and len(s) >= min(t.min_points, 5):
        w = s.values[-t.window :]
        w = w[np.isfinite(w)]
        if len(w) and float(w.mean()) > t.stale_fraction:
            stale = np.flatnonzero(s.values > 0.5)
            first = int(s.steps[stale[0]]) if len(stale) else int(s.steps[0])
            what = (
                f"The previous step's gradient was still present at {float(w.mean()):.0%} of the last {len(w)} "
                f"steps (grad/stale): gradients accumulate because zero_grad is not called"
            )
            ev = {"stale_fraction": float(w.mean()), "points": len(w)}
            return [mechanism(ID, first, what, failing, ev, ADVICE)]
        return []
    g = series(history, "grad/norm/total")
    if g is None or failing is None:
        return []
    ok = np.isfinite(g.values)
    steps, v = g.steps[ok].astype(np.float64), g.values[ok]
    if len(v) < 2 * t.min_points:
        return []
    early = float(np.median(v[: t.min_points]))
    recent = float(np.median(v[-t.min_points :]))
    if not (early > 0 and recent / early >= t.stale_growth_ratio):
        return []
    if np.std(v) == 0 or np.std(steps) == 0:
        return []
    r = float(np.corrcoef(steps, v)[0, 1])
    if not r >= t.stale_growth_corr:
        return []
    p = progress(history, t)
    msg = (
        f"The total gradient norm grew {recent / early:.1f}x ({fmt(early)} -> {fmt(recent)}) almost linearly "
        f"with the step (r = {r:.3f}) {failing}: gradients look like they accumulate without zero_grad."
    )
    return [
        make(
            ID,
            "critical",
            int(g.steps[0]),
            msg,
            {
                "early_norm": early,
                "recent_norm": recent,
                "growth": recent / early,
                "linear_r": r,
                "loss_recent": p.recent if p else None,
            },
            ADVICE,
        )
    ]

"""Gradient norms are huge or growing.

What it does:
    Reads ``grad/norm/total`` (or the largest ``grad/norm/<module>``). Compares the median of the
    last ``window`` points with the median of the first ``min_sampled_points``: growth by ``eg_growth`` or
    more, or a recent median above ``eg_abs``, is exploding. Non-finite norms are ``nan_inf``'s. A
    warning; critical when the loss is also not improving.

    Mixed precision: a dynamic loss scale (``optim/loss_scale``: fp16 GradScaler, fairseq, DeepSpeed,
    Apex) halves at each step whose gradients overflowed, and that step is skipped. A scale that fell
    ``eg_scale_collapse`` x (2^10: ten overflows with no successful step between them to grow it
    back) below its highest value and sits there means the gradients overflow at every step and
    nothing is being updated: critical.

Why it matters:
    Exploding gradients make each step overshoot: the loss oscillates, spikes, then diverges to Inf
    or NaN. Typical causes are a learning rate that is too high, no normalisation in a deep or
    recurrent stack, or gradients that accumulate because ``zero_grad`` is missing.

What to do:
    Lower the learning rate, clip gradients (``clip_grad_norm_(params, 1.0)``), add normalisation,
    and check that ``optimizer.zero_grad()`` runs every step.
"""

from __future__ import annotations

import numpy as np

from muvo_doctor.core.checks._common import fmt, make, mechanism, module_names, outcome_failure, series
from muvo_doctor.core.config import DoctorConfig
from muvo_doctor.core.finding import Finding
from muvo_doctor.core.history import History

ID = "exploding_gradients"

ADVICE = "Lower the learning rate, clip gradients (clip_grad_norm_ 1.0), add normalisation, and call optimizer.zero_grad() every step."


def _norm_series(history: History) -> tuple[str, np.ndarray, np.ndarray] | None:
    s = series(history, "grad/norm/total")
    if s is not None:
        return s.name, s.steps, s.values
    best = None
    for n in module_names(history, "grad/norm/"):
        m = series(history, n)
        if m is None:
            continue
        level = (
            float(np.nanmedian(np.where(np.isfinite(m.values), m.values, np.nan)))
            if np.isfinite(m.values).any()
            else 0.0
        )
        if best is None or level > best[0]:
            best = (level, m)
    if best is None:
        return None
    return best[1].name, best[1].steps, best[1].values


def _scale_collapse(history: History, t) -> Finding | None:
    s = series(history, "optim/loss_scale")
    if s is None:
        return None
    v = s.values[np.isfinite(s.values)]
    if len(v) < 2 or float(v.max()) <= 0:
        return None
    top_i = int(np.argmax(v))
    last = float(v[-1])
    if last <= 0 or float(v[top_i]) / last < t.eg_scale_collapse or last > float(v[top_i:].min()) * 1.001:
        return None
    halvings = int(np.sum(np.diff(v[top_i:]) < 0))
    msg = (
        f"The fp16 loss scale fell from {fmt(float(v[top_i]))} to {fmt(last)} ({halvings} overflow halvings, "
        f"{float(v[top_i]) / last:.0f}x) and did not recover: the gradients overflow at every step, so every "
        f"update is skipped and nothing is learned."
    )
    ev = {
        "series": "optim/loss_scale",
        "top": float(v[top_i]),
        "last": last,
        "halvings": halvings,
        "rule": "loss_scale",
    }
    return make(ID, "critical", int(s.steps[top_i]), msg, ev, ADVICE)


def check(history: History, config: DoctorConfig) -> list[Finding]:
    collapsed = _scale_collapse(history, config.thresholds)
    if collapsed is not None:
        return [collapsed]
    t = config.thresholds
    got = _norm_series(history)
    if got is None:
        return []
    name, steps, v = got
    ok = np.isfinite(v)
    steps, v = steps[ok], v[ok]
    k = t.min_sampled_points
    if len(v) < max(k * 2, 2):
        return []
    early = float(np.median(v[:k]))
    recent_w = v[-t.window :]
    recent = float(np.median(recent_w))
    growth = recent / early if early > 0 else (float("inf") if recent > 0 else 1.0)
    huge = recent > t.eg_abs
    if not (growth >= t.eg_growth or huge):
        return []
    # First step of the final run above the trigger level.
    level = t.eg_abs if huge and growth < t.eg_growth else t.eg_growth * early
    below = np.flatnonzero(v <= level)
    first = int(below[-1]) + 1 if len(below) else 0
    first = min(first, len(v) - 1)
    failing = outcome_failure(history, t)
    why = (
        f"grew {growth:.0f}x from {fmt(early)} to {fmt(recent)} (median of the last {len(recent_w)} points)"
        if growth >= t.eg_growth
        else f"is {fmt(recent)} (median of the last {len(recent_w)} points), above {fmt(t.eg_abs)}"
    )
    ev = {"series": name, "early_median": early, "recent_median": recent, "growth": growth}
    return [mechanism(ID, int(steps[first]), f"The gradient norm {name} {why}", failing, ev, ADVICE)]

"""The loss grows without bound or explodes.

What it does:
    Takes medians of blocks of ``div_block`` loss points (so a single spike does not count) and tracks
    the best block so far. The loss diverges when ``div_patience`` blocks in a row sit above
    ``best + div_factor * scale``, where the scale is the larger of |best| and how far the loss had
    come down from its first point: far above anything the run has seen. Non-finite loss points count as
    infinitely high. Critical while it stays up; a warning if it came back down.

Why it matters:
    A diverging run does not come back on its own: every further step is wasted and the weights end
    up as Inf or NaN. The usual causes are a learning rate too high for the model or batch size, no
    warm-up, fp16 overflow, or a loss that is unbounded below the sign it should have.

What to do:
    Lower the learning rate (try 3-10x smaller) or add warm-up, clip gradients
    (``clip_grad_norm_(params, 1.0)``), and check the loss's sign and scale.
"""

from __future__ import annotations

import numpy as np

from muvo_doctor.checks._common import LOSS, first_run_start, fmt, make, series
from muvo_doctor.config import DoctorConfig
from muvo_doctor.finding import Finding
from muvo_doctor.history import History

ID = "divergence"

ADVICE = "Lower the learning rate 3-10x or add warm-up, clip gradients (clip_grad_norm_ 1.0), check the loss's sign and scale."


def check(history: History, config: DoctorConfig) -> list[Finding]:
    t = config.thresholds
    s = series(history, LOSS)
    b = max(1, t.div_block)
    if s is None or len(s) < max(t.min_points, b * (t.div_patience + 1)):
        return []
    if not np.isfinite(s.values).any():
        return []
    v = np.where(np.isnan(s.values), np.inf, s.values)
    nb = len(v) // b
    # Sort-based block median: np.median(axis=1) is 10x slower on many short rows.
    blocks = np.sort(v[: nb * b].reshape(nb, b), axis=1)[:, b // 2]
    if not np.isfinite(blocks[0]):
        return []
    # The very first point is the start: a learning rate that explodes the loss within the first
    # block would otherwise make that block the reference.
    v0 = float(v[0]) if np.isfinite(v[0]) else float(blocks[0])
    best = np.minimum(np.minimum.accumulate(blocks), v0)
    scale = np.maximum(np.abs(best), np.abs(v0 - best))
    scale = np.maximum(scale, 1e-12)
    with np.errstate(invalid="ignore"):
        high = (blocks - best) > t.div_factor * scale
    start = first_run_start(high, t.div_patience)
    if start is None:
        return []
    step = int(s.steps[start * b])
    last = float(blocks[-1])
    peak = float(np.max(blocks[start:]))
    msg = (
        f"{LOSS} diverged from step {step}: its block median rose from a best of {fmt(float(best[start]))} "
        f"to {fmt(peak)} (now {fmt(last)}), more than {t.div_factor:g}x its scale {fmt(float(scale[start]))} "
        f"above the best" + ("." if bool(high[-1]) else "; it has since come back down.")
    )
    return [
        make(
            ID,
            "critical" if bool(high[-1]) else "warning",
            step,
            msg,
            {
                "series": LOSS,
                "best": float(best[start]),
                "peak": peak,
                "recent": last,
                "scale": float(scale[start]),
            },
            ADVICE,
        )
    ]

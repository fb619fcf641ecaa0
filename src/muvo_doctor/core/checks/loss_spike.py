"""Sudden isolated jumps in the loss.

What it does:
    Computes a robust z-score of every step-to-step change of the training loss (median and MAD of
    the differences, so the noise itself sets the scale). A spike is a jump above ``spike_z`` that is
    also at least ``spike_min_rel`` of the loss level before it and that comes back down within
    ``spike_return_points`` points. A spike warns when it set the run back: the median of the 10
    points after it sits at least ``spike_setback`` (relative) and ``spike_setback_of_jump`` (of the
    jump) above the median of the 10 before. Spikes that
    vanish at once (a hard batch; a rare positive under ``pos_weight``) are info. A jump that never
    comes back is ``divergence``.

Why it matters:
    Isolated spikes come from bad batches (corrupt samples, extreme labels), a learning rate at the
    edge of stability, or Adam's epsilon with rare features. Each one can undo progress, and
    growing spikes often precede divergence.

What to do:
    Log the batch indices of the spiking steps and inspect those samples; clip gradients; lower the
    learning rate or raise Adam's eps; check for label or input outliers.
"""

from __future__ import annotations

import numpy as np

from muvo_doctor.core.checks._common import LOSS, fmt, make, series
from muvo_doctor.core.config import DoctorConfig
from muvo_doctor.core.finding import Finding
from muvo_doctor.core.history import History

ID = "loss_spike"

ADVICE = "Inspect the batches at the spiking steps for outliers; clip gradients; lower the learning rate or raise Adam's eps."


def _short(v: np.ndarray, steps: np.ndarray, t) -> list[Finding]:
    """Short logs (epochs, excerpts): the largest jump to ``spike_short_factor`` x, never recovered from."""
    if len(v) < 4:
        return []
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(v[:-1] > 0, v[1:] / v[:-1], 0.0)
    i = int(np.argmax(ratio))
    if ratio[i] < t.spike_short_factor or i + 2 >= len(v):
        return []
    after = v[i + 2 :]
    if float(after.min()) <= v[i] * (1 + t.spike_short_setback):
        return []
    msg = (
        f"{LOSS} jumped from {fmt(float(v[i]))} to {fmt(float(v[i + 1]))} at step {int(steps[i + 1])} "
        f"({ratio[i]:.1f}x) and never came back: its lowest value in the {len(after)} records after is "
        f"{fmt(float(after.min()))}, still {float(after.min()) / v[i] - 1:.0%} above where it was."
    )
    ev = {
        "series": LOSS,
        "before": float(v[i]),
        "peak": float(v[i + 1]),
        "after_min": float(after.min()),
        "rule": "short",
    }
    return [make(ID, "warning", int(steps[i + 1]), msg, ev, ADVICE)]


def check(history: History, config: DoctorConfig) -> list[Finding]:
    t = config.thresholds
    s = series(history, LOSS)
    if s is None:
        return []
    ok = np.isfinite(s.values)
    v, steps = s.values[ok], s.steps[ok]
    n = len(v)
    if n < max(t.min_points, 3):
        return _short(v, steps, t) if history.complete else []
    d = np.diff(v)
    med = float(np.median(d))
    mad = float(np.median(np.abs(d - med))) * 1.4826
    if mad <= 0:
        # Quantised or constant losses: the printed unit is the smallest real change.
        mad = 10.0 ** (-s.digits) if s.digits is not None else 0.0
        if mad <= 0:
            return []
    z = (d - med) / mad
    before = v[:-1]
    # Jumps far below the loss's own scale (1e-6 -> 5e-6 on a collapsed loss) are not spikes.
    floor = 1e-3 * float(np.max(np.abs(v)))
    level = np.maximum(np.abs(before), max(floor, 1e-12))
    cand = np.flatnonzero((z > t.spike_z) & (d > t.spike_min_rel * level))
    if len(cand) == 0:
        return []
    r = t.spike_return_points
    spikes: list[int] = []
    setbacks: list[int] = []
    for i in cand[:1000]:  # i: jump from v[i] to v[i+1]
        after = v[i + 2 : i + 2 + r]
        if len(after) == 0:
            continue  # too recent to tell a spike from a divergence
        if after.min() <= v[i] + 0.5 * d[i]:
            spikes.append(int(i))
            pre, post = v[max(0, i - 9) : i + 1], v[i + 2 : i + 12]
            rise = float(np.median(post) - np.median(pre)) if len(post) >= 5 else 0.0
            if rise > t.spike_setback * abs(float(np.median(pre))) and rise > t.spike_setback_of_jump * d[i]:
                setbacks.append(int(i))
    if not spikes:
        return []
    i = setbacks[0] if setbacks else spikes[0]
    biggest = max(spikes, key=lambda j: z[j])
    msg = (
        f"{LOSS} jumped from {fmt(float(v[i]))} to {fmt(float(v[i + 1]))} at step {int(steps[i + 1])} "
        f"(robust z = {z[i]:.1f}) and came back; {len(spikes)} such spike(s), the largest z = {z[biggest]:.1f} "
        f"at step {int(steps[biggest + 1])}"
        + (
            f"; {len(setbacks)} set the loss back by more than {t.spike_setback:.0%}."
            if setbacks
            else "; each vanished at once (no setback)."
        )
    )
    return [
        make(
            ID,
            "warning" if setbacks else "info",
            int(steps[i + 1]),
            msg,
            {
                "series": LOSS,
                "spikes": len(spikes),
                "setbacks": len(setbacks),
                "spike_steps": [int(steps[j + 1]) for j in spikes[:20]],
                "max_z": float(z[biggest]),
                "before": float(v[i]),
                "peak": float(v[i + 1]),
            },
            ADVICE,
        )
    ]

"""Outputs do not depend on the input (near-zero spread across the batch) or are saturated.

What it does:
    Over the last ``window`` points (after ``min_sampled_points``), reads ``output/std`` (spread of the model's outputs across the
    batch) and ``output/mean``: a median std below ``co_abs_std``, or below ``co_rel_std`` times
    |mean|, means every sample gets the same output. Reads ``output/saturated`` (share of logits with
    |x| > 6, or probabilities within 1e-3 of 0 or 1): a median above ``co_saturated`` is saturated.
    Constant outputs warn, and are critical when the loss is not improving. Saturation is reported
    only when the loss is not improving (critical): a confident model that learns saturates too.

Why it matters:
    A model whose output ignores its input can only learn the label prior: its loss stops at the
    prior's entropy and its accuracy at the majority rate. Saturated outputs have vanishing
    gradients through the sigmoid/tanh, so the model stops learning where it is.

What to do:
    Check that the input actually reaches the model (not zeros, not one repeated sample), look for
    dead ReLUs or a collapsed normalisation before the head, lower the learning rate, and remove any
    sigmoid/softmax in front of a with-logits loss.
"""

from __future__ import annotations

import numpy as np

from muvo_doctor.core.checks._common import fmt, fmt_apart, make, mechanism, outcome_failure, series
from muvo_doctor.core.config import DoctorConfig, Thresholds
from muvo_doctor.core.finding import Finding
from muvo_doctor.core.history import History

ID = "constant_output"

ADVICE = (
    "Check the input reaches the model (not zeros or one repeated sample), look for dead ReLUs or a "
    "collapsed normalisation before the head, lower the learning rate, drop a sigmoid before a with-logits loss."
)


def _recent(
    history: History, name: str, window: int, min_points: int
) -> tuple[float, np.ndarray, np.ndarray] | None:
    s = series(history, name)
    if s is None or len(s) < min_points:
        return None
    w = s.values[-window:]
    w = w[np.isfinite(w)]
    if len(w) == 0:
        return None
    return float(np.median(w)), s.steps, s.values


def flat_output(history: History, t: Thresholds) -> tuple[float, float] | None:
    """(median output/std of the last ``window`` points, the limit) when the output ignores the input."""
    std = _recent(history, "output/std", t.window, t.min_sampled_points)
    if std is None:
        return None
    mean = _recent(history, "output/mean", t.window, t.min_sampled_points)
    limit = max(t.co_abs_std, t.co_rel_std * (abs(mean[0]) if mean else 0.0))
    return (std[0], limit) if std[0] < limit else None


def check(history: History, config: DoctorConfig) -> list[Finding]:
    t = config.thresholds
    failing = outcome_failure(history, t)
    std = _recent(history, "output/std", t.window, t.min_sampled_points)
    if std is not None:
        mean = _recent(history, "output/mean", t.window, t.min_sampled_points)
        m = abs(mean[0]) if mean else 0.0
        limit = max(t.co_abs_std, t.co_rel_std * m)
        if std[0] < limit:
            steps, values = std[1], std[2]
            above = np.flatnonzero(~(values < limit))
            first = int(steps[above[-1] + 1]) if len(above) and above[-1] + 1 < len(steps) else int(steps[0])
            shown, bound = fmt_apart(std[0], limit)
            if limit > t.co_abs_std:
                bound += f" ({t.co_rel_std:g} x |mean|)"
            what = (
                f"The model's output spread across the batch (output/std) is {shown} around a mean of "
                f"{fmt(mean[0]) if mean else 'unknown'} over the last {t.window} points, below {bound}: "
                f"every sample gets the same output"
            )
            ev = {"output_std": std[0], "output_mean": mean[0] if mean else None, "limit": limit}
            return [mechanism(ID, first, what, failing, ev, ADVICE)]
    sat = _recent(history, "output/saturated", t.window, t.min_sampled_points)
    if sat is not None and sat[0] >= t.co_saturated and failing:
        steps, values = sat[1], sat[2]
        below = np.flatnonzero(~(values >= t.co_saturated))
        first = int(steps[below[-1] + 1]) if len(below) and below[-1] + 1 < len(steps) else int(steps[0])
        msg = (
            f"{sat[0]:.0%} of the model's outputs are saturated (output/saturated, median of the last "
            f"{t.window} points; |logit| > 6 or probability within 1e-3 of 0 or 1) {failing}."
        )
        return [make(ID, "critical", first, msg, {"saturated_fraction": sat[0]}, ADVICE)]
    return []

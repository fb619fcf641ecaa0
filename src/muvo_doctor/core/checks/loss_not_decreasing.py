"""The loss trend is flat or rising over a long window.

What it does:
    Once the training loss has ``lnd_min_points`` points, compares the median of its first third (or
    of its very first points, whichever is higher) with the median of its last third. A learning loss
    drops by at least ``lnd_min_rel_drop`` of its start; a rise must exceed that and ``lnd_noise_z``
    standard errors of the two medians. Medians make it robust to spikes. A loss that fell and then
    plateaued has learned and is not reported. Critical when the loss never dropped, a warning when
    it rises or falls slowly but beyond its noise (``lnd_noise_z`` standard errors); only info when
    the held-out AUROC is clearly above chance (the model learns anyway). The latest evaluation
    rules: a loss that sat still and then started to learn is not reported as dead at the end.

Why it matters:
    A loss that has not moved after hundreds of steps is a run that is not learning: a too-small or
    zero learning rate, frozen weights, labels the inputs cannot predict, or a bug between the model
    and the loss.

What to do:
    Try to overfit a single batch: if the loss cannot go to ~0 there, the bug is in the model, the
    loss or the optimizer wiring, not in the data. Check the learning rate and the labels, and look
    at the other findings for the mechanism.
"""

from __future__ import annotations

from muvo_doctor.core.checks._common import LOSS, auroc_learns, fmt, make, progress, series
from muvo_doctor.core.config import DoctorConfig
from muvo_doctor.core.finding import Finding
from muvo_doctor.core.history import History

ID = "loss_not_decreasing"

ADVICE = (
    "Overfit one batch to separate wiring bugs from data problems; check the learning rate, the labels "
    "and that the loss uses the model's output; see the other findings for the cause."
)


def check(history: History, config: DoctorConfig) -> list[Finding]:
    t = config.thresholds
    p = progress(history, t, LOSS, min_points=t.lnd_min_points)
    if p is None or (p.improved and not p.rising):
        return []
    s = series(history, LOSS)
    zero = 0.5 * 10.0 ** (-s.digits) if s is not None and s.digits is not None else t.flat_abs_zero
    if abs(p.start) < zero and abs(p.recent) < zero:
        return []  # a loss at zero cannot decrease; flat_loss and display_precision judge it
    if p.rising:
        what = f"rose from {fmt(p.start)} to {fmt(p.recent)}"
        sev = "warning"
    elif p.slow:
        what = (
            f"went from {fmt(p.start)} to {fmt(p.recent)}, a real but slow drop ({fmt(p.drop)}, beyond its "
            f"noise but less than the {fmt(p.needed)}, {t.lnd_min_rel_drop:.0%} of the start, that counts as learning)"
        )
        sev = "warning"  # it moves: a slow learner (small learning rate, long warm-up), not a dead run
    else:
        what = f"went from {fmt(p.start)} to {fmt(p.recent)} (a drop of {fmt(p.drop)}, less than the {fmt(p.needed)}, {t.lnd_min_rel_drop:.0%} of the start, that counts as learning)"
        sev = "critical"
    auroc = auroc_learns(history, t)
    if auroc is not None:
        sev = "info"  # the held-out scores rank: the loss is a poor read of this run
    verdict = "it decreases too slowly to tell" if p.slow and not p.rising else "it is not decreasing"
    msg = f"{LOSS} {what} over {p.n} points (steps {p.first_step}-{p.last_step}): {verdict}"
    msg += f", although val/auroc is {auroc:.3f}." if auroc is not None else "."
    return [
        make(
            ID,
            sev,
            p.first_step,
            msg,
            {
                "series": LOSS,
                "start_median": p.start,
                "recent_median": p.recent,
                "drop": p.drop,
                "needed_drop": p.needed,
                "points": p.n,
            },
            ADVICE,
        )
    ]

"""The loss grows without bound or explodes.

What it does:
    Takes medians of blocks of ``div_block`` loss points (so a single spike does not count) and tracks
    the best block so far. The loss diverges when ``div_patience`` blocks in a row sit above
    ``best + div_factor * scale``, where the scale is the larger of |best| and how far the loss had
    come down from its first point: far above anything the run has seen. Non-finite loss points count as
    infinitely high. Critical while it stays up; a warning if it came back down. The start is the
    first block, or the first point when it is higher (an explosion inside the first block); a first
    point below the rest is a warm-up artefact (logged at lr ~0), not a best to return to.

    Rules for logs with few points (epochs, evaluations, excerpts), each on any loss series it names:
    - a loss of ``div_abs`` or more in each of its last ``div_abs_points`` records that has not fallen
      10x over them: no cross-entropy or likelihood loss of a working model is that large (ln K is
      below 14 for a million classes). Critical.
    - the run ends worse than it started: the training loss and a held-out loss both end (median of
      their last third) ``div_worse`` x or more above their first records. Critical: it unlearned.
    - a held-out loss at ``div_heldout_factor`` x its best in each of its last two evaluations
      (critical unless the training loss falls: then the training side still learns), unless a
      held-out quality score still sits at its best (then it is over-confidence, see overfitting).
    - the training loss rose at each of its last ``div_rises`` records, by ``div_rise_rel`` of its level
      in all, in a log of at most ``div_short_points`` records (epochs: each record an average, so
      four rises in a row are a trend, not noise): a learning rate too high for this stage.
    - a held-out loss ``div_rebound`` x above its best in each of its last ``div_rebound_evals``
      evaluations while the training loss did not fall either: both sides got worse. Warnings.

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

from muvo_doctor.core.checks._common import (
    LOSS,
    around,
    finite,
    first_run_start,
    fmt,
    heldout_losses,
    make,
    scores,
    series,
    training_falls,
)
from muvo_doctor.core.config import DoctorConfig
from muvo_doctor.core.finding import Finding
from muvo_doctor.core.history import History

ID = "divergence"

ADVICE = "Lower the learning rate 3-10x or add warm-up, clip gradients (clip_grad_norm_ 1.0), check the loss's sign and scale."


def _after_warmup(history: History, steps: np.ndarray) -> np.ndarray:
    """Mask of the steps from which the learning rate first reached 10% of its peak.

    A loss logged while the learning rate still warms up from ~0 (MMDetection logs iteration 1 at
    lr 4e-8) was not produced by training yet: it is no best to return to.
    """
    lr = finite(history, "optim/lr")
    if lr is None or not float(lr[1].max()) > 0:
        return np.ones(len(steps), dtype=bool)
    warm = int(lr[0][int(np.argmax(lr[1] >= 0.1 * float(lr[1].max())))])
    return steps >= warm


def _blocks(history: History, t) -> Finding | None:
    s0 = series(history, LOSS)
    b = max(1, t.div_block)
    if s0 is None:
        return None
    keep = _after_warmup(history, s0.steps)
    steps, values = s0.steps[keep], s0.values[keep]
    if len(values) < max(t.min_points, b * (t.div_patience + 1)):
        return None
    if not np.isfinite(values).any():
        return None
    v = np.where(np.isnan(values), np.inf, values)
    nb = len(v) // b
    # Sort-based block median: np.median(axis=1) is 10x slower on many short rows.
    blocks = np.sort(v[: nb * b].reshape(nb, b), axis=1)[:, b // 2]
    if not np.isfinite(blocks[0]):
        return None
    # The first point counts only when it is above the first block (the loss exploded inside it);
    # a first point below it was logged before warm-up and is no best to return to.
    v0 = max(float(v[0]), float(blocks[0])) if np.isfinite(v[0]) else float(blocks[0])
    best = np.minimum(np.minimum.accumulate(blocks), v0)
    scale = np.maximum(np.abs(best), np.abs(v0 - best))
    scale = np.maximum(scale, 1e-12)
    with np.errstate(invalid="ignore"):
        high = (blocks - best) > t.div_factor * scale
    start = first_run_start(high, t.div_patience)
    if start is None:
        return None
    step = int(steps[start * b])
    last = float(blocks[-1])
    peak = float(np.max(blocks[start:]))
    msg = (
        f"{LOSS} diverged from step {step}: its block median rose from a best of {fmt(float(best[start]))} "
        f"to {fmt(peak)} (now {fmt(last)}), more than {t.div_factor:g}x its scale {fmt(float(scale[start]))} "
        f"above the best" + ("." if bool(high[-1]) else "; it has since come back down.")
    )
    ev = {
        "series": LOSS,
        "best": float(best[start]),
        "peak": peak,
        "recent": last,
        "scale": float(scale[start]),
    }
    return make(ID, "critical" if bool(high[-1]) else "warning", step, msg, ev, ADVICE)


def _astronomical(history: History, t) -> Finding | None:
    k = t.div_abs_points
    train = finite(history, LOSS)
    losses = [(LOSS, train[0], train[1])] if train is not None and len(train[1]) >= k else []
    for name, steps, v in losses + heldout_losses(history, k):
        w = v[-k:]
        if float(w.min()) >= t.div_abs and float(w[-1]) > float(w[0]) / 10:
            msg = (
                f"{name} is between {fmt(float(w.min()))} and {fmt(float(w.max()))} in its last {k} records and does "
                f"not fall: no classification or likelihood loss of a working model is that large (ln K < 14 for a "
                f"million classes); the weights have blown up."
            )
            ev = {
                "series": name,
                "min": float(w.min()),
                "max": float(w.max()),
                "points": k,
                "rule": "astronomical",
            }
            return make(ID, "critical", int(steps[-k]), msg, ev, ADVICE)
    return None


def _third(v: np.ndarray) -> float:
    return float(np.median(v[-max(1, len(v) // 3) :]))


def _worse_than_start(history: History, t) -> Finding | None:
    train = finite(history, LOSS)
    if train is None or len(train[1]) < 3:
        return None
    tv = train[1]
    if not (float(tv[0]) > 0 and _third(tv) >= t.div_worse * float(tv[0])):
        return None
    for name, _, hv in heldout_losses(history, 3):
        if float(hv[0]) > 0 and _third(hv) >= t.div_worse * float(hv[0]):
            msg = (
                f"The run ends worse than it started: {LOSS} {fmt(float(tv[0]))} -> {fmt(_third(tv))} and {name} "
                f"{fmt(float(hv[0]))} -> {fmt(_third(hv))} (first record -> median of the last third, both "
                f"{t.div_worse:g}x or more up): training made the model worse on seen and unseen data."
            )
            ev = {
                "series": LOSS,
                "train_first": float(tv[0]),
                "train_end": _third(tv),
                "heldout": name,
                "heldout_first": float(hv[0]),
                "heldout_end": _third(hv),
                "rule": "worse_than_start",
            }
            return make(ID, "critical", int(train[0][int(np.argmin(tv))]), msg, ev, ADVICE)
    return None


def _quality_holds(history: History, t) -> bool:
    """A held-out quality score (accuracy, AUROC, mAP ...) whose latest value is within ``of_metric_tol`` of its best."""
    return any(float(v[-1]) >= float(v.max()) - t.of_metric_tol for _, _, v in scores(history, 2))


def _heldout_blowup(history: History, t) -> Finding | None:
    for name, steps, v in heldout_losses(history, 3):
        best_i = int(np.argmin(v[:-2]))
        best = float(v[best_i])
        if best > 0 and np.all(v[-2:] >= t.div_heldout_factor * best):
            if _quality_holds(history, t):
                continue  # the held-out scores still rank/classify: calibration (overfitting's info), not a blow-up
            learns = training_falls(history, t.lnd_min_rel_drop) is not None
            msg = (
                f"{name} blew up from its best {fmt(best)} at step {int(steps[best_i])} to {fmt(float(v[-1]))} "
                f"({float(v[-1]) / best:.0f}x, {t.div_heldout_factor:g}x or more in each of the last 2 evaluations)"
                + (
                    f" while {LOSS} still falls: the evaluated model is unusable (fp16 overflow, bad statistics?)."
                    if learns
                    else "."
                )
            )
            ev = {"series": name, "best": best, "now": float(v[-1]), "rule": "heldout_blowup"}
            return make(ID, "warning" if learns else "critical", int(steps[best_i + 1]), msg, ev, ADVICE)
    return None


def _rising(history: History, t) -> Finding | None:
    got = finite(history, LOSS)
    if got is None:
        return None
    steps, v = got
    if len(v) > t.div_short_points:
        # A dense per-step log: four rising block medians happen by chance in noisy healthy runs
        # (measured: a healthy plain-PyTorch run), and _blocks / loss_not_decreasing judge its trend.
        return None
    k = t.div_rises
    if len(v) < k + 2:
        return None
    tail = v[-(k + 1) :]
    if not np.all(np.diff(tail) > 0):
        return None
    rise = float(tail[-1] - tail[0])
    if rise < t.div_rise_rel * abs(float(tail[0])):
        return None
    msg = (
        f"{LOSS} rose at each of the last {k} records ({fmt(float(tail[0]))} -> {fmt(float(tail[-1]))}, "
        f"+{rise / abs(float(tail[0])):.1%}): the training loss itself is getting worse, so the learning rate is "
        f"too high for this stage (not overfitting, which shows on held-out data only)."
    )
    ev = {"series": LOSS, "from": float(tail[0]), "to": float(tail[-1]), "records": k, "rule": "rising"}
    return make(ID, "warning", int(steps[-(k + 1)]), msg, ev, ADVICE)


def _rebound(history: History, t) -> Finding | None:
    k = t.div_rebound_evals
    train = finite(history, LOSS)
    if train is None:
        return None
    for name, steps, v in heldout_losses(history, k + 1):
        best_i = int(np.argmin(v[:-k]))
        best = float(v[best_i])
        if not (best > 0 and np.all(v[-k:] >= t.div_rebound * best)):
            continue
        got = around(train, int(steps[best_i]))
        if got is None:
            continue
        tb, ta = got
        if ta < tb:
            continue  # the training side still improves: overfitting's business
        now = float(v[-1])
        msg = (
            f"{name} rose from its best {fmt(best)} at step {int(steps[best_i])} to {fmt(now)} and stayed "
            f"{t.div_rebound:g}x or more above it in each of the last {k} evaluations, while {LOSS} did not fall either "
            f"({fmt(tb)} -> {fmt(ta)}): both sides got worse, so the learning rate is too high."
        )
        ev = {
            "series": name,
            "best": best,
            "now": now,
            "train_before": tb,
            "train_after": ta,
            "rule": "rebound",
        }
        return make(ID, "warning", int(steps[best_i + 1]), msg, ev, ADVICE)
    return None


def check(history: History, config: DoctorConfig) -> list[Finding]:
    t = config.thresholds
    rules: tuple = (_blocks, _astronomical, _heldout_blowup)
    if history.complete:  # judged over a whole log: during a run the end is not known yet
        rules += (_worse_than_start, _rising, _rebound)
    found = [f for f in (rule(history, t) for rule in rules) if f is not None]
    found.sort(key=lambda f: f.severity != "critical")
    return found[:1]

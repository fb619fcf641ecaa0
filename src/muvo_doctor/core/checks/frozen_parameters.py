"""Parameters that never change: no gradient, not in the optimizer, zero learning rate.

What it does:
    Reads, at each sampled step, the recorder's fractions of trainable parameter elements that did
    not change over that step (``param/frozen``), got no gradient (``param/no_grad``), are in no
    optimizer group (``param/not_in_optimizer``) or have a zero learning rate (``param/zero_lr``),
    and the learning rate ``optim/lr``. These fractions are judged only over the steps where
    something can move: gradients exist (``param/no_grad`` below ``frozen_all_fraction``) and the
    learning rate is above 0. So Lightning's first step (its gradients are computed inside
    ``optimizer.step(closure)``) and a warm-up that starts at lr 0 are not frozen parameters.
    Over the last ``window`` such steps (at least ``frozen_min_observed`` of them), a median fraction
    of ``frozen_min_fraction`` or more warns. Where no step qualifies, the run itself is the finding:
    the learning rate was 0 at every recorded step, or no parameter received a gradient at any step
    (a detached loss), over at least ``frozen_min_observed`` recorded steps; the message says which,
    and nothing else. Critical when (nearly) everything, ``frozen_all_fraction``, is frozen and the
    loss is not improving; with nothing able to move, a held-out metric is the untrained model's and
    does not veto. From logs alone: per-step losses that repeat exactly one epoch later
    (``frozen_repeat_fraction`` of them, over at least ``frozen_repeat_min_distinct`` distinct values)
    mean the same batches meet the same weights every epoch.

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

from muvo_doctor.core.checks._common import LOSS, fmt, mechanism, outcome_failure, progress, series
from muvo_doctor.core.config import DoctorConfig, Thresholds
from muvo_doctor.core.finding import Finding
from muvo_doctor.core.history import History

ID = "frozen_parameters"

ADVICE = (
    "Create the optimizer from model.parameters() after the model is built, check requires_grad of the "
    "reported modules, remove .detach()/.item()/no_grad from the loss path, and print each group's lr."
)
ADVICE_LR = (
    "Set a learning rate above 0 (print optimizer.param_groups[i]['lr'] at the first steps); a scheduler "
    "that starts at 0 must warm up, and one that multiplies by 0 must not."
)
ADVICE_DETACHED = (
    "Compute the loss from the model's output tensors: remove .detach(), .item(), .numpy() or torch.no_grad() "
    "from the path between the model and the loss, and check that loss.grad_fn is not None."
)

STATES = {
    "param/frozen": "did not change",
    "param/no_grad": "received no gradient",
    "param/not_in_optimizer": "are in no optimizer parameter group",
    "param/zero_lr": "have a zero learning rate",
}
_SIGNALS = ("optim/lr", *STATES)


def _repeating(history: History, t: Thresholds) -> tuple[int, float, int, int] | None:
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


def _table(history: History) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """The sampled steps (sorted) and each signal's value at them (NaN where it was not recorded)."""
    got = {n: series(history, n) for n in _SIGNALS}
    present = [s for s in got.values() if s is not None and len(s)]
    if not present:
        return None
    steps = np.unique(np.concatenate([s.steps for s in present]))
    cols: dict[str, np.ndarray] = {}
    for n, s in got.items():
        col = np.full(len(steps), np.nan)
        if s is not None and len(s):
            col[np.searchsorted(steps, s.steps)] = s.values  # a repeated step keeps its last value
        cols[n] = col
    return steps, cols


def _not_learning(history: History, t: Thresholds, nothing_moves: bool) -> str | None:
    """The outcome clause that makes a frozen run critical, or None.

    When nothing can move (every parameter frozen at every step that counts), a held-out AUROC or
    accuracy is the untrained model's: it cannot veto, so only the loss's own progress decides.
    """
    failing = outcome_failure(history, t)
    if failing is not None or not nothing_moves:
        return failing
    p = progress(history, t, min_points=t.lnd_min_points)
    if p is None or p.improved or p.slow:
        return None
    return f"and the loss is not improving ({fmt(p.start)} -> {fmt(p.recent)} over {p.n} points)"


def _whole_run(
    history: History, t: Thresholds, steps: np.ndarray, cols: dict[str, np.ndarray]
) -> Finding | None:
    """No recorded step could move anything: lr 0 everywhere, or no gradient anywhere."""
    n = len(steps)
    if n < t.frozen_min_observed:
        return None
    lr, zero_lr, no_grad, frozen = (
        cols[k] for k in ("optim/lr", "param/zero_lr", "param/no_grad", "param/frozen")
    )
    lr_zero = (lr == 0) | (zero_lr >= t.frozen_all_fraction)
    grads_none = no_grad >= t.frozen_all_fraction
    evidence: dict = {"recorded_steps": n, "first_step": int(steps[0]), "last_step": int(steps[-1])}
    moved = frozen[np.isfinite(frozen)]
    still = (
        f"; {float(np.median(moved)):.0%} of trainable parameter elements did not change (param/frozen)"
        if len(moved)
        else ""
    )
    if len(moved):
        evidence["frozen_fraction"] = float(np.median(moved))
    if lr_zero.all():
        lrs = lr[np.isfinite(lr)]
        span = f"steps {int(steps[0])}-{int(steps[-1])}"
        what = (
            f"The learning rate is 0 at all {n} recorded steps ({span}, optim/lr)"
            if len(lrs)
            else f"Every trainable parameter has learning rate 0 at all {n} recorded steps ({span}, param/zero_lr = 100%)"
        ) + f", so no parameter can change{still}"
        evidence.update({"lr": 0.0, "signal": "optim/lr" if len(lrs) else "param/zero_lr", "fraction": 1.0})
        advice = ADVICE_LR
    elif (grads_none | lr_zero).all():
        k = int(grads_none.sum())
        where = (
            f"any of the {n} recorded steps"
            if k == n
            else f"any of the {k} recorded steps with a learning rate above 0"
        )
        lrs = lr[np.isfinite(lr) & (lr > 0)]
        lr_part = f"; the learning rate is {fmt(float(np.median(lrs)))}" if len(lrs) else ""
        what = (
            f"No trainable parameter received a gradient at {where} (param/no_grad = 100%{lr_part}): the "
            f"loss does not reach the parameters (it is computed from detached tensors, or backward() is "
            f"not called)" + still
        )
        evidence.update({"no_grad_steps": k, "signal": "param/no_grad", "fraction": 1.0})
        advice = ADVICE_DETACHED
    else:
        return None
    failing = _not_learning(history, t, nothing_moves=True)
    return mechanism(ID, int(steps[0]), what, failing, evidence, advice)


def _modules(history: History, steps: np.ndarray) -> list[str]:
    """Modules frozen (per ``param/frozen/<module>``, recorded only when > 0) at most of ``steps``."""
    out = []
    for name in history.names("param/frozen/"):
        if "@rank" in name:
            continue
        s = series(history, name)
        if s is None:
            continue
        at = np.zeros(len(steps))
        hit = np.isin(s.steps, steps)
        at[np.searchsorted(steps, s.steps[hit])] = s.values[hit]
        if float(np.median(at)) >= 0.5:
            out.append(name[len("param/frozen/") :])
    return out


def _over_active(
    history: History, t: Thresholds, steps: np.ndarray, cols: dict[str, np.ndarray], active: np.ndarray
) -> Finding | None:
    """Fractions over the recent steps where gradients exist and the learning rate is above 0."""
    idx = np.flatnonzero(active)
    if len(idx) < t.frozen_min_observed:
        return None
    recent = idx[-t.window :]
    worst: tuple[float, str] | None = None
    parts: list[str] = []
    evidence: dict = {}
    for name, desc in STATES.items():
        w = cols[name][recent]
        w = w[np.isfinite(w)]
        if len(w) == 0:
            continue
        frac = float(np.median(w))
        evidence[name.split("/", 1)[1]] = frac
        if frac < t.frozen_min_fraction:
            continue
        parts.append(f"{frac:.0%} of trainable parameter elements {desc} ({name})")
        if worst is None or frac > worst[0]:
            worst = (frac, name)
    if worst is None:
        return None
    frac, signal = worst
    col = cols[signal]
    below = [i for i in idx if not col[i] >= t.frozen_min_fraction]
    first = int(steps[idx[0]]) if not below else int(steps[next((i for i in idx if i > below[-1]), idx[-1])])
    everything = frac >= t.frozen_all_fraction
    whole = everything and all(col[i] >= t.frozen_all_fraction for i in idx if np.isfinite(col[i]))
    parts[-1] += (
        f" (medians over the {len(recent)} recorded steps {int(steps[recent[0]])}-{int(steps[recent[-1]])} "
        f"where gradients exist and the learning rate is above 0)"
    )
    mods = _modules(history, steps[recent])
    if mods and not everything:
        parts.append("modules affected: " + ", ".join(mods[:5]) + (" ..." if len(mods) > 5 else ""))
        evidence["modules"] = mods[:20]
    failing = _not_learning(history, t, nothing_moves=whole) if everything else None
    msg = "; ".join(parts)
    what = msg[0].upper() + msg[1:]
    evidence.update({"fraction": frac, "signal": signal, "steps_judged": len(recent)})
    return mechanism(ID, first, what, failing, evidence, ADVICE)


def check(history: History, config: DoctorConfig) -> list[Finding]:
    t = config.thresholds
    table = _table(history)
    if table is not None:
        steps, cols = table
        lr = cols["optim/lr"]
        # A step counts when something could move: lr above 0 (or unknown) and gradients present.
        active = ~(lr == 0) & ~(cols["param/zero_lr"] >= t.frozen_all_fraction)
        active &= ~(cols["param/no_grad"] >= t.frozen_all_fraction)
        if not active.any():
            f = _whole_run(history, t, steps, cols)
            if f is not None:
                return [f]
        else:
            f = _over_active(history, t, steps, cols, active)
            if f is not None:
                return [f]
    rep = _repeating(history, t)
    if rep is None:
        return []
    period, share, n, first = rep
    msg = (
        f"{LOSS} repeats exactly every {period} points: {share:.0%} of {n} values equal the one an epoch "
        f"earlier, so the weights did not change between epochs"
    )
    failing = outcome_failure(history, t)

    evidence = {"repeat_period": period, "repeat_share": share, "fraction": 1.0, "signal": LOSS}
    return [mechanism(ID, first, msg, failing, evidence, ADVICE)]

"""Printed or logged values hide the real ones.

What it does:
    In-process (``printed/<key>`` from the ``run`` wrapper's output parser): compares every printed
    number with the real series it names (``printed/loss`` with ``train/loss``, ``printed/val_acc``
    with ``val/acc`` ...). A printed value that lies more than one unit of its last digit outside the
    range of the real values since the previous print is wrong; when at least
    ``dp_mismatch_fraction`` of ``dp_min_points`` or more prints are, the display hides the real
    value (a warning naming both numbers). From logs alone: the main loss shown as zero at its
    precision for the whole run while other series move (a warning), a loss series that takes at most
    ``dp_max_distinct`` distinct printed values over ``dp_min_records`` records (a warning), and a
    loss that collapses to zero at its precision after a decline (info: a display issue, not a flat
    line).

Why it matters:
    People judge runs by what they see. A loss printed with 4 decimals that reads 0.0000 while the
    real loss is 0.507 (or a tiny loss printed as a constant zero) hides whether the model learns;
    the original team watched ``0.0000`` for a whole run.

What to do:
    Print with enough significant digits (``f"{loss:.6g}"``), print the value you optimise (not a
    scaled or averaged-away copy), and log raw values to a file (JSON lines) next to the console.
"""

from __future__ import annotations

import numpy as np

from muvo_doctor.checks._common import LOSS, fmt, make, series
from muvo_doctor.config import DoctorConfig
from muvo_doctor.finding import Finding
from muvo_doctor.history import History, Series

ID = "display_precision"

ADVICE = "Print with significant digits (f'{loss:.6g}'), print the value you optimise, and keep a raw JSON-lines log."

KEYMAP = {
    "loss": "train/loss",
    "train_loss": "train/loss",
    "val_loss": "val/loss",
    "valid_loss": "val/loss",
    "acc": "train/acc",
    "accuracy": "train/acc",
    "train_acc": "train/acc",
    "val_acc": "val/acc",
    "val_accuracy": "val/acc",
    "lr": "optim/lr",
    "learning_rate": "optim/lr",
    "auroc": "val/auroc",
    "auc": "val/auroc",
}


def real_name(history: History, printed: str) -> str | None:
    """The recorded series a ``printed/<key>`` value stands for, if it was recorded."""
    key = printed[len("printed/") :]
    for cand in (KEYMAP.get(key), key.replace("_", "/", 1), f"train/{key}", f"val/{key}", key):
        if cand and cand in history and not cand.startswith("printed/"):
            return cand
    return None


def _compare(p: Series, r: Series, t) -> Finding | None:
    ok = np.isfinite(r.values)
    rs, rv = r.steps[ok], r.values[ok]
    pk = np.isfinite(p.values)
    ps, pv = p.steps[pk][-500:], p.values[pk][-500:]
    if len(ps) < t.dp_min_points or len(rv) == 0:
        return None
    unit = 10.0 ** (-(p.digits or 0)) * 1.01
    # Real values between the previous print (exclusive) and this one (inclusive); at least the nearest point.
    hi_idx = np.searchsorted(rs, ps, side="right")
    lo_idx = np.searchsorted(rs, np.concatenate(([ps[0] - 1], ps[:-1])), side="right")
    lo_idx = np.minimum(lo_idx, np.maximum(hi_idx - 1, 0))
    hi_idx = np.maximum(hi_idx, lo_idx + 1)
    hi_idx = np.minimum(hi_idx, len(rv))
    lo_idx = np.minimum(lo_idx, hi_idx - 1)
    # Min/max over ragged windows: a loop over the last 500 prints (numpy slices, ~10 ms).
    rmin = np.fromiter((rv[a:b].min() for a, b in zip(lo_idx, hi_idx, strict=True)), float, len(ps))
    rmax = np.fromiter((rv[a:b].max() for a, b in zip(lo_idx, hi_idx, strict=True)), float, len(ps))
    wrong = (pv < rmin - unit) | (pv > rmax + unit)
    share = float(wrong.mean())
    if share < t.dp_mismatch_fraction:
        return None
    i = int(np.argmax(wrong))
    shown = float(np.median(pv[wrong]))
    real = float(np.median((rmin + rmax)[wrong] / 2))
    msg = (
        f"{p.name} shows {shown:.{p.digits or 0}f} ({p.digits} decimals) while {r.name} is {fmt(real)} "
        f"(medians over {int(wrong.sum())} of {len(pv)} prints that disagree): the printed number hides the real one."
    )
    return make(
        ID,
        "warning",
        int(ps[i]),
        msg,
        {
            "printed": p.name,
            "real": r.name,
            "shown": shown,
            "actual": real,
            "digits": p.digits,
            "mismatch_share": share,
        },
        ADVICE,
    )


def _moving_others(history: History, skip: str) -> str | None:
    for n in history.names():
        if n == skip or n.startswith("printed/") or "@rank" in n:
            continue
        s = series(history, n)
        if s is None or len(s) < 3:
            continue
        v = s.values[np.isfinite(s.values)]
        if len(v) >= 3 and v.max() > v.min():
            return n
    return None


def _log_only(s: Series, history: History, t) -> Finding | None:
    v = s.values[np.isfinite(s.values)]
    if s.digits is None or len(v) < t.dp_min_points:
        return None
    d = s.digits
    unit = 10.0 ** (-d)
    zero = np.abs(v) < 0.5 * unit
    main = s.name in (LOSS, "printed/loss")
    if main and zero.all():
        other = _moving_others(history, s.name)
        moving = f" while {other} moves" if other else ""
        msg = (
            f"{s.name} shows {0:.{d}f} ({d} decimals) in all {len(v)} records{moving}: "
            f"the printed precision hides the real loss (below {0.5 * unit:g}, or not the value optimised)."
        )
        return make(
            ID,
            "warning",
            int(s.steps[0]),
            msg,
            {"series": s.name, "digits": d, "records": len(v), "moving": other or ""},
            ADVICE,
        )
    tail = zero[-t.dp_min_points :]
    if "loss" in s.name and tail.all() and not zero.all() and np.max(np.abs(v)) >= 100 * unit:
        nz = np.flatnonzero(~zero)
        first = int(s.steps[nz[-1] + 1]) if nz[-1] + 1 < len(s.steps) else int(s.steps[-1])
        msg = (
            f"{s.name} declined from {fmt(float(v[0]))} and has shown {0:.{d}f} ({d} decimals) since step {first}: "
            f"the value is below {0.5 * unit:g}, which the display rounds away (not a flat loss)."
        )
        return make(ID, "info", first, msg, {"series": s.name, "digits": d, "start": float(v[0])}, ADVICE)
    if "loss" in s.name and len(v) >= t.dp_min_records:
        distinct = np.unique(v[-t.dp_min_records :])
        level = float(np.median(np.abs(v)))
        if len(distinct) <= t.dp_max_distinct and level > 0 and unit >= 0.01 * level and not zero.all():
            msg = (
                f"{s.name} took only {len(distinct)} distinct values ({', '.join(f'{x:.{d}f}' for x in distinct)}) "
                f"over its last {t.dp_min_records} records: {d} decimals are too few for a value near {fmt(level)}."
            )
            return make(
                ID,
                "warning",
                int(s.steps[-t.dp_min_records]),
                msg,
                {"series": s.name, "digits": d, "distinct": len(distinct)},
                ADVICE,
            )
    return None


def check(history: History, config: DoctorConfig) -> list[Finding]:
    t = config.thresholds
    found: list[Finding] = []
    for name in history.names("printed/"):
        p = series(history, name)
        if p is None or p.digits is None:
            continue
        real = real_name(history, name)
        f = None
        if real is not None:
            r = series(history, real)
            if r is not None:
                f = _compare(p, r, t)
        if f is None and real is None:
            f = _log_only(p, history, t)
        if f is not None:
            found.append(f)
    for name in history.names():
        if name.startswith("printed/"):
            continue
        s = series(history, name)
        if s is None or s.digits is None:
            continue
        f = _log_only(s, history, t)
        if f is not None:
            found.append(f)
    found.sort(key=lambda f: ({"critical": 0, "warning": 1, "info": 2}[f.severity], f.step or 0))
    return found[:1]

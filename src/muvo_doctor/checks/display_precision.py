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

from muvo_doctor.checks._common import LOSS, fmt, make, series, step_noise
from muvo_doctor.config import DoctorConfig
from muvo_doctor.finding import Finding
from muvo_doctor.history import History, Series
from muvo_doctor.logs.base import classify

ID = "display_precision"

ADVICE = "Print with significant digits (f'{loss:.6g}'), print the value you optimise, and keep a raw JSON-lines log."

# Last parts of a signal name that are an axis or bookkeeping, never a displayed training value.
_AXIS_WORDS = frozenset(
    {"step", "steps", "epoch", "epochs", "iter", "iters", "iteration", "time", "eta", "wall_s", "s"}
)


def real_name(history: History, printed: str) -> str | None:
    """The tensor-recorded series a ``printed/<key>`` value stands for, or None.

    The key maps through the log readers' normalisation (``loss`` -> ``train/loss``, ``acc`` ->
    ``train/acc``, ``val_loss`` -> ``val/loss`` ...) and only to that signal: a printed training
    ``acc`` is never compared with ``val/acc``. Axis and bookkeeping keys (step, epoch, time,
    throughput) have no counterpart. A counterpart that itself came from printed text (it has
    ``digits``) is the same number twice, not a measurement: None.
    """
    key = printed[len("printed/") :]
    if _axis_key(key):
        return None
    name, _, _ = classify(key)
    if name is None or name.startswith("printed/") or name not in history:
        return None
    s = series(history, name)
    if s is None or s.digits is not None:
        return None
    return name


def _axis_key(key: str) -> bool:
    """Step/epoch/time counters and rates (``samples/s``, ``it/s``): numbers that are not a signal."""
    name, _, is_step = classify(key)
    if is_step or name is None:
        return True
    last = name.rsplit("/", 1)[-1]
    return last in _AXIS_WORDS or key.endswith(("/s", "_s", "per_sec", "per_second", "/it"))


def _per_step(s: Series) -> tuple[np.ndarray, np.ndarray]:
    """Finite points, one per step (the last one).

    A progress bar redrawn many times at one step (``\\r``) is one print there, so no decision
    depends on how often a program redraws its output.
    """
    ok = np.isfinite(s.values)
    st, v = s.steps[ok], s.values[ok]
    if len(st) > 1:
        keep = np.r_[st[1:] != st[:-1], True]
        st, v = st[keep], v[keep]
    return st, v


def _windows(rs: np.ndarray, ps: np.ndarray, slack: int) -> tuple[np.ndarray, np.ndarray]:
    """Index ranges ``[lo, hi)`` into the real steps ``rs`` for each print step in ``ps``.

    Each print stands for the real values since the previous print (a window mean, a running
    mean, or the last value), widened by ``slack`` steps on both sides because the step a wrapped
    program's print is filed under follows the telemetry, which can lag or lead the print. An
    empty window gets the nearest real point before it.
    """
    prev = np.r_[ps[0] - max(slack, 1), ps[:-1]]
    lo = np.searchsorted(rs, prev - slack, side="right")
    hi = np.searchsorted(rs, ps + slack, side="right")
    lo = np.minimum(lo, np.maximum(hi - 1, 0))
    hi = np.minimum(np.maximum(hi, lo + 1), len(rs))
    lo = np.minimum(lo, hi - 1)
    return lo, hi


def _compare(p: Series, r: Series, t) -> Finding | None:
    ok = np.isfinite(r.values)
    rs, rv = r.steps[ok], r.values[ok]
    ps, pv = _per_step(p)
    if len(rv) == 0:
        return None
    # A print past the last real step is waiting for its telemetry (it crosses in batches): not judged yet.
    keep = ps <= rs[-1]
    ps, pv = ps[keep], pv[keep]
    if p.digits is None or len(ps) < t.dp_min_points:
        return None
    ps, pv = ps[-500:], pv[-500:]
    unit = 10.0 ** (-p.digits)
    gap = max(int(np.median(np.diff(ps))), 1)
    lo, hi = _windows(rs, ps, 2 * gap)
    region = rv[lo[0] : hi[-1]]
    sigma = step_noise(region)
    n = len(pv)
    # Ragged windows: a loop over at most 500 prints (numpy slices, a few ms).
    rmin = np.fromiter((rv[a:b].min() for a, b in zip(lo, hi, strict=True)), float, n)
    rmax = np.fromiter((rv[a:b].max() for a, b in zip(lo, hi, strict=True)), float, n)
    k = (hi - lo).astype(float)
    # Rounding, plus the noise of a mean over batches the recorder did not sample (2 sigma for a
    # window with one real point; a well-sampled window's own range already holds the noise).
    tol = 0.5 * unit * 1.01 + 2.0 * sigma / np.sqrt(k)
    wrong = (pv < rmin - tol) | (pv > rmax + tol)
    share = float(wrong.mean())
    if share >= t.dp_mismatch_fraction:
        i = int(np.argmax(wrong))
        shown = float(np.median(pv[wrong]))
        rmean = np.fromiter((rv[a:b].mean() for a, b in zip(lo, hi, strict=True)), float, n)
        real = float(np.median(rmean[wrong]))
        msg = (
            f"{p.name} shows {shown:.{p.digits}f} ({p.digits} decimals) while {r.name} is {fmt(real)} "
            f"(medians over {int(wrong.sum())} of {n} prints that disagree): the printed number hides the real one."
        )
        evidence = {
            "printed": p.name,
            "real": r.name,
            "shown": shown,
            "actual": real,
            "digits": p.digits,
            "mismatch_share": share,
            "prints": n,
        }
        return make(ID, "warning", int(ps[i]), msg, evidence, ADVICE)
    if len(np.unique(pv)) == 1:
        return _constant_while_moving(p, r, ps, pv, rv, lo, hi, unit, t)
    return None


def _constant_while_moving(
    p: Series,
    r: Series,
    ps: np.ndarray,
    pv: np.ndarray,
    rv: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    unit: float,
    t,
) -> Finding | None:
    """Every print shows one value while the real series moves: the display cannot be right.

    The real series moves when its per-print window means span more than two units of the shown
    digit (10th to 90th percentile), or, below one unit, when it changes by half its level
    (a tiny loss that keeps falling while the display shows 0.0000).
    """
    means = np.fromiter((rv[a:b].mean() for a, b in zip(lo, hi, strict=True)), float, len(ps))
    q10, q90 = (float(x) for x in np.percentile(means, [10, 90]))
    third = max(len(means) // 3, 1)
    a, b = float(np.median(means[:third])), float(np.median(means[-third:]))
    level = max(abs(a), abs(b))
    moves = q90 - q10 > 2 * unit
    tiny = 0 < level < unit and abs(a - b) >= 0.5 * level and len(rv[lo[0] : hi[-1]]) >= 3 * t.dp_min_points
    if not (moves or tiny):
        return None
    shown = float(pv[0])
    msg = (
        f"{p.name} shows {shown:.{p.digits}f} ({p.digits} decimals) in all {len(pv)} prints while {r.name} "
        f"moves from {fmt(a)} to {fmt(b)}: the printed number hides the real one."
    )
    evidence = {
        "printed": p.name,
        "real": r.name,
        "shown": shown,
        "start": a,
        "end": b,
        "digits": p.digits,
        "prints": len(pv),
    }
    return make(ID, "warning", int(ps[0]), msg, evidence, ADVICE)


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
    steps, v = _per_step(s)
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
            int(steps[0]),
            msg,
            {"series": s.name, "digits": d, "records": len(v), "moving": other or ""},
            ADVICE,
        )
    tail = zero[-t.dp_min_points :]
    if "loss" in s.name and tail.all() and not zero.all() and np.max(np.abs(v)) >= 100 * unit:
        nz = np.flatnonzero(~zero)
        first = int(steps[nz[-1] + 1]) if nz[-1] + 1 < len(steps) else int(steps[-1])
        msg = (
            f"{s.name} declined from {fmt(float(v[0]))} and has shown {0:.{d}f} ({d} decimals) since step {first}: "
            f"the value is below {0.5 * unit:g}, which the display rounds away (not a flat loss)."
        )
        return make(ID, "info", first, msg, {"series": s.name, "digits": d, "start": float(v[0])}, ADVICE)
    # A redrawn progress bar repeats one value: consecutive repeats are one record here.
    changes = np.flatnonzero(np.r_[True, v[1:] != v[:-1]])
    if "loss" in s.name and len(changes) >= t.dp_min_records:
        recent = changes[-t.dp_min_records :]
        distinct = np.unique(v[recent])
        level = float(np.median(np.abs(v)))
        if len(distinct) <= t.dp_max_distinct and level > 0 and unit >= 0.01 * level and not zero.all():
            msg = (
                f"{s.name} took only {len(distinct)} distinct values ({', '.join(f'{x:.{d}f}' for x in distinct)}) "
                f"over its last {t.dp_min_records} records: {d} decimals are too few for a value near {fmt(level)}."
            )
            return make(
                ID,
                "warning",
                int(steps[recent[0]]),
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
        if p is None or p.digits is None or _axis_key(name[len("printed/") :]):
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

"""Printed or logged values hide the real ones.

What it does:
    Every rule is stated in what any log shows: the decimals a number was printed with (``digits``),
    the resolution ``10^-digits``, and the share of records that show exactly zero at that
    resolution (``|value| < resolution / 2``).
    Under ``run`` (``printed/<key>`` next to the tensor-recorded series it names: ``printed/loss``
    with ``train/loss``, ``printed/val_acc`` with ``val/acc`` ...): at least ``dp_mismatch_fraction``
    of ``dp_min_points`` or more prints show zero while the real value is not zero. Where the real
    value rounds to that zero (below half a unit), rounding hides it; where it does not, the printed
    number is another quantity (scaled, or not the value optimised) that sits at the resolution. Both
    warn, with both numbers. A print that merely differs from one step's value (a running mean, a
    window mean, a print filed a few steps off) is never a finding.
    From logs alone: the main loss shown as zero at its precision in every record (a warning), a loss
    series that takes at most ``dp_max_distinct`` distinct printed values over ``dp_min_records``
    records (a warning).
    Both: a loss that was shown at ``FALL_UNITS`` (5) units of its last digit or more and has shown
    zero in its latest records (at least ``FALL_TAIL``) fell below the resolution: info, a display
    limit of a converged loss, never a flat or dead run.

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

from muvo_doctor.core.checks._common import LOSS, fmt, make, series
from muvo_doctor.core.config import DoctorConfig
from muvo_doctor.core.finding import Finding
from muvo_doctor.core.history import History, Series
from muvo_doctor.core.names import classify

ID = "display_precision"

# A loss that "fell a long way" before showing zero: at least this many units of its last printed digit
# (0.85 at 1 decimal is 8.5 units), and it has shown zero in at least FALL_TAIL of its latest records.
FALL_UNITS = 5
FALL_TAIL = 2

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


def _zero(v: np.ndarray, unit: float) -> np.ndarray:
    """Values shown as zero at the printed resolution (``0.0000`` for 4 decimals: below half a unit)."""
    return np.abs(v) < 0.5 * unit


def _shown(d: int) -> str:
    return f"{0:.{d}f} ({d} decimal{'s' if d != 1 else ''})"


def _compare(p: Series, r: Series, t) -> Finding | None:
    """A printed series against the tensor-recorded one it names: does the display hide the real value?

    Only prints that show zero at their resolution can hide a value this way. Where the real value
    rounds to that zero (below half a unit), rounding hides it: a warning. A printed zero in (nearly)
    every print while the real value is far from zero is a display that shows nothing: also a warning
    (the loss printed scaled, or not the value optimised). A print that merely differs from one step's
    value (a running mean, a window mean, a value filed a few steps off) is never judged here.
    """
    ok = np.isfinite(r.values)
    rs, rv = r.steps[ok], r.values[ok]
    ps, pv = _per_step(p)
    if len(rv) == 0 or p.digits is None:
        return None
    # A print past the last real step is waiting for its telemetry (it crosses in batches): not judged yet.
    keep = ps <= rs[-1]
    ps, pv = ps[keep], pv[keep]
    if len(ps) < t.dp_min_points:
        return None
    ps, pv = ps[-500:], pv[-500:]
    d = p.digits
    unit = 10.0 ** (-d)
    gap = max(int(np.median(np.diff(ps))), 1) if len(ps) > 1 else 1
    lo, hi = _windows(rs, ps, 2 * gap)
    n = len(pv)
    # What each print stands for: the mean of the real values since the previous print (or a running
    # mean, or the last value; all round alike when they are below half a unit).
    real = np.fromiter((rv[a:b].mean() for a, b in zip(lo, hi, strict=True)), float, n)
    hidden = _zero(pv, unit) & (np.abs(real) > 0)
    share = float(hidden.mean())
    fell = _fell_to_zero(p, ps, pv, d, history_real=(r.name, real)) if hidden[-1] else None
    if fell is not None or share < t.dp_mismatch_fraction:
        return fell  # shown falling, then at the floor: a display limit (info), not a hidden run
    shown_real = float(np.median(real[hidden]))
    rounds = float(np.median(np.abs(real[hidden]))) < 0.5 * unit
    k = int(hidden.sum())
    if rounds:
        why = f"rounding to {d} decimals hides it (the value is below {0.5 * unit:g}, the printed resolution)"
    else:
        why = (
            "the printed number sits at the printed resolution and is not the value optimised "
            "(printed scaled, or another quantity)"
        )
    msg = (
        f"{p.name} shows {_shown(d)} in {k} of {n} prints while {r.name} is {fmt(shown_real)} "
        f"(median over those prints): {why}."
    )
    evidence = {
        "printed": p.name,
        "real": r.name,
        "shown": 0.0,
        "actual": shown_real,
        "digits": d,
        "resolution": unit,
        "zero_share": share,
        "prints": n,
    }
    first = int(ps[int(np.argmax(hidden))])
    return make(ID, "warning", first, msg, evidence, ADVICE)


def _fell_to_zero(
    s: Series, steps: np.ndarray, v: np.ndarray, d: int, history_real: tuple[str, np.ndarray] | None = None
) -> Finding | None:
    """A loss that fell from at least ``FALL_UNITS`` units and now shows zero at its precision: info.

    The display shows the fall and then the floor: a converged loss below the printed resolution, not a
    flat or dead one.
    """
    if "loss" not in s.name:
        return None
    unit = 10.0 ** (-d)
    zero = _zero(v, unit)
    nz = np.flatnonzero(~zero)
    if not len(nz) or nz[-1] + FALL_TAIL > len(v) or float(np.max(np.abs(v))) < FALL_UNITS * unit:
        return None
    i = nz[-1] + 1
    first = int(steps[i])
    real = ""
    evidence = {
        "printed": s.name,  # every display_precision finding names the displayed series here
        "series": s.name,
        "digits": d,
        "resolution": unit,
        "start": float(v[0]),
        "since": first,
    }
    if history_real is not None:
        name, rv = history_real
        tail = rv[i:]
        if len(tail) and float(np.median(np.abs(tail))) >= 0.5 * unit:
            return None  # the real value did not fall: the zeros hide it (judged by _compare)
        if len(tail) and np.any(tail != 0):
            real = f" ({name} is {fmt(float(np.median(tail)))} there)"
            evidence["actual"] = float(np.median(tail))
    msg = (
        f"{s.name} fell from {float(np.max(v)):.{d}f} to {_shown(d)} and has shown zero in its last {len(v) - i} "
        f"records (since step {first}){real}: the loss went below the printed resolution {0.5 * unit:g}. "
        f"A display limit, not a flat or dead run."
    )
    return make(ID, "info", first, msg, evidence, ADVICE)


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
    """Rules for printed numbers alone, in terms of their decimals, the resolution 10^-digits and the
    fraction of records at exactly zero at that resolution."""
    steps, v = _per_step(s)
    if s.digits is None or len(v) < t.dp_min_points:
        return None
    d = s.digits
    unit = 10.0 ** (-d)
    zero = _zero(v, unit)
    main = s.name in (LOSS, "printed/loss")
    if main and zero.all():
        other = _moving_others(history, s.name)
        moving = f" while {other} moves" if other else ""
        msg = (
            f"{s.name} shows {_shown(d)} in all {len(v)} records{moving}: the value sits at the printed "
            f"resolution (below {0.5 * unit:g}, or it is not the value optimised), so the display hides the loss."
        )
        evidence = {
            "printed": s.name,
            "series": s.name,
            "digits": d,
            "resolution": unit,
            "zero_share": 1.0,
            "records": len(v),
            "moving": other or "",
        }
        return make(ID, "warning", int(steps[0]), msg, evidence, ADVICE)
    fell = _fell_to_zero(s, steps, v, d)
    if fell is not None:
        return fell
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
                {"printed": s.name, "series": s.name, "digits": d, "distinct": len(distinct)},
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

"""The loss (or the logged loss) does not change.

What it does:
    Over the last ``flat_window`` points of every loss series it compares the spread (max - min) with
    the level: a spread below ``flat_rel_range`` of the level is flat. Minibatch noise alone moves a
    live loss by 1% or more, so this never needs exact equality. For printed or logged values it works
    at the printed precision: a value that stays within one unit of its last digit is flat only when it
    spans at least ``flat_min_printed_units`` units (0.6931 is flat; a loss shown as 0.0000 or 0.0012 is
    a display question, see ``display_precision``). A loss that is exactly zero, like an unused
    auxiliary loss, is not flat; neither is a small loss that still moves. A loss sitting at zero at
    its printed precision is never flat_loss: the display hides the value (``display_precision``).

    Short logs (epochs, excerpts) get two rules made for few points: the last ``flat_min_repeats``
    or more records of a loss repeat one value exactly (at the printed precision, spanning at least
    ``flat_min_printed_units`` units, or bit-equal raw floats): a loss that learns never repeats
    itself to four significant digits five times in a row (three times when the value shows five or
    more significant digits: ``flat_min_repeats_precise``). And a log of ``flat_short_min_points``
    to ``flat_window`` records whose every value lies within ``flat_short_rel`` of the median,
    from the first record to the last: the whole log shows no movement at all.
    A raw loss that collapsed to exactly zero after falling is a warning (nothing left to learn
    from, or a logger that rounds), and nothing when a held-out metric improved.

Why it matters:
    A loss that does not move means the weights do not change or do not affect it: a detached loss,
    a zero learning rate, frozen parameters, a constant target or a loss that no longer depends on
    the model. The run spends compute and learns nothing.

What to do:
    Check that ``loss.backward()`` reaches the parameters (no ``.detach()``, ``.item()`` or
    ``torch.no_grad()`` on the path), that the optimizer holds the model's parameters with a
    non-zero learning rate, and that the loss really uses the model's output.
"""

from __future__ import annotations

import numpy as np

from muvo_doctor.core.checks._common import LOSS, any_metric_improved, fmt, make, series
from muvo_doctor.core.config import DoctorConfig
from muvo_doctor.core.finding import Finding
from muvo_doctor.core.history import History

ID = "flat_loss"

ADVICE = (
    "Make sure loss.backward() reaches the parameters (no .detach()/.item()/no_grad on the path), the "
    "optimizer holds them with a non-zero learning rate, and the loss depends on the model's output."
)


def loss_names(history: History) -> list[str]:
    """Training-side loss series (not validation, not printed copies, not other ranks)."""
    out = []
    for n in history.names():
        if n.startswith(("printed/", "val/", "test/", "nonfinite/")) or "@rank" in n:
            continue
        if "loss" in n.split("/")[-1] or n.startswith("train/loss"):
            out.append(n)
    return out


def _flat(values: np.ndarray, digits: int | None, t) -> tuple[bool, float, float, float]:
    """(flat, level, spread, tolerance) over one window."""
    level = float(np.median(values))
    spread = float(values.max() - values.min())
    if digits is not None:
        unit = 10.0 ** (-digits)
        tol = 1.01 * unit
        return spread <= tol and abs(level) >= t.flat_min_printed_units * unit, level, spread, tol
    tol = t.flat_rel_range * max(abs(level), t.flat_abs_zero)
    return spread <= tol and abs(level) > t.flat_abs_zero, level, spread, tol


def _raw_zero_main(s) -> Finding:
    msg = (
        f"{s.name}, the main training loss, is exactly 0 in all {len(s)} records from step {int(s.steps[0])} on: "
        f"a loss that is identically zero gives no gradient, so nothing learns."
    )
    ev = {"series": s.name, "level": 0.0, "points": len(s), "digits": None}
    return make(ID, "critical", int(s.steps[0]), msg, ev, ADVICE)


def _exact_zero_after_decline(s) -> Finding:
    nz = np.flatnonzero(~(np.abs(s.values) < 1e-12))
    start = int(nz[-1]) + 1 if len(nz) else 0
    msg = (
        f"{s.name} fell from {fmt(float(s.values[0]))} to (almost) exactly 0 (below 1e-12) and has stayed there for "
        f"{len(s) - start} points since step {int(s.steps[start])}: a loss that is exactly zero gives no gradient "
        f"(saturated outputs, or a loss the model can satisfy without the labels), unless the logger rounds it."
    )
    ev = {"series": s.name, "level": 0.0, "points": len(s) - start, "start": float(s.values[0])}
    return make(ID, "warning", int(s.steps[start]), msg, ev, ADVICE)


def _repeats(s, t) -> Finding | None:
    """The last records repeat one value exactly (see the module docstring), or None."""
    v = s.values
    if len(v) < t.flat_min_repeats_precise or not np.isfinite(v[-t.flat_min_repeats_precise :]).all():
        return None
    last = float(v[-1])
    if s.digits is not None:
        unit = 10.0 ** (-s.digits)
        same = np.abs(v - last) <= 0.5 * unit
        if abs(last) < t.flat_min_printed_units * unit:
            return None  # 0.0000 or 0.0012: what the display can show, not the loss
    else:
        same = v == last
        if abs(last) <= t.flat_abs_zero:
            return None
    differ = np.flatnonzero(~same)
    start = int(differ[-1]) + 1 if len(differ) else 0
    run = len(v) - start
    # Significant digits shown: 0.6931 has 4, 66.5625 and -6.43825e-20 have 6. At 5 or more, three
    # equal records already mean the loss moved less than 1e-5 of itself between them.
    sig = (s.digits + int(np.floor(np.log10(abs(last)))) + 1) if s.digits is not None else 17
    need = t.flat_min_repeats_precise if sig >= 5 else t.flat_min_repeats
    if run < need:
        return None
    shown = f"{last:.{s.digits}f}" if s.digits is not None and s.digits <= 12 else repr(last)
    msg = (
        f"{s.name} repeats exactly {shown} in each of its last {run} records (since step {int(s.steps[start])}"
        f"{', every record of the log' if start == 0 else ''}): a loss computed from changing weights on changing "
        f"batches does not repeat itself to the last printed digit."
    )
    ev = {"series": s.name, "level": last, "points": run, "digits": s.digits, "rule": "exact_repeats"}
    return make(ID, "critical", int(s.steps[start]), msg, ev, ADVICE)


def _short_log_flat(s, t) -> Finding | None:
    """A short log whose every record sits within ``flat_short_rel`` of its median, or None."""
    v = s.values
    if not t.flat_short_min_points <= len(v) < t.flat_window or not np.isfinite(v).all():
        return None
    level = float(np.median(v))
    if abs(level) <= t.flat_abs_zero:
        return None
    spread = float(v.max() - v.min())
    if s.digits is not None and abs(level) < t.flat_min_printed_units * 10.0 ** (-s.digits):
        return None
    rel = spread / abs(level)
    if rel > t.flat_short_rel:
        return None
    msg = (
        f"{s.name} stays between {fmt(float(v.min()))} and {fmt(float(v.max()))} in all {len(v)} records of the log "
        f"(steps {int(s.steps[0])}-{int(s.steps[-1])}, spread {rel:.2%} of its level, flat below "
        f"{t.flat_short_rel:.1%}): it never moved."
    )
    ev = {
        "series": s.name,
        "level": level,
        "spread": spread,
        "relative_spread": rel,
        "points": len(v),
        "rule": "short_log",
    }
    return make(ID, "critical", int(s.steps[0]), msg, ev, ADVICE)


def check(history: History, config: DoctorConfig) -> list[Finding]:
    t = config.thresholds
    found: list[Finding] = []
    names = loss_names(history)
    for name in names:
        s = series(history, name)
        if s is None:
            continue
        main = name == LOSS or len(names) == 1
        if len(s) < t.flat_window:
            if not history.complete:
                continue  # short-log rules judge a whole log, not a young run
            short = _repeats(s, t) or _short_log_flat(s, t)
            if short is not None:
                found.append(short if main else short.model_copy(update={"severity": "warning"}))
            continue
        w = s.values[-t.flat_window :]
        if not np.isfinite(w).all():
            continue  # nan_inf's business
        flat, level, spread, tol = _flat(w, s.digits, t)
        if main and s.digits is None and not np.any(s.values):
            found.append(_raw_zero_main(s))  # raw values, not a display: the loss really is 0
            continue
        if (
            not flat
            and main
            and s.digits is None
            and bool(np.all(np.abs(w) < t.flat_abs_zero))
            and abs(s.values[0]) >= t.flat_abs_zero
            and any_metric_improved(history) is None
        ):
            found.append(_exact_zero_after_decline(s))
            continue
        if not flat:
            continue
        # First step of the final run of points inside the band around the level.
        inside = np.isfinite(s.values) & (np.abs(s.values - level) <= tol)
        outside = np.flatnonzero(~inside)
        start = int(outside[-1]) + 1 if len(outside) else 0
        run = len(s) - start
        shown = f" (shown with {s.digits} decimals)" if s.digits is not None else ""
        rel = spread / abs(level)
        msg = (
            f"{name} has stayed at {fmt(level)}{shown} for {run} points since step {int(s.steps[start])}: "
            f"spread {fmt(spread)} over the last {t.flat_window} points, {rel:.2e} of its level "
            f"(flat below {t.flat_rel_range:.0e})."
        )
        found.append(
            make(
                ID,
                "critical" if main else "warning",
                int(s.steps[start]),
                msg,
                {
                    "series": name,
                    "level": level,
                    "spread": spread,
                    "relative_spread": rel,
                    "points": run,
                    "digits": s.digits,
                },
                ADVICE,
            )
        )
    # One finding per check id: keep the most severe (the main loss first).
    found.sort(key=lambda f: (f.severity != "critical", f.step or 0))
    return found[:1]

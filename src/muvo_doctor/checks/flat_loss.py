"""The loss (or the logged loss) does not change.

What it does:
    Over the last ``flat_window`` points of every loss series it compares the spread (max - min) with
    the level: a spread below ``flat_rel_range`` of the level is flat. Minibatch noise alone moves a
    live loss by 1% or more, so this never needs exact equality. For printed or logged values it works
    at the printed precision: a value that stays within one unit of its last digit is flat only when it
    spans at least ``flat_min_printed_units`` units (0.6931 is flat; a loss shown as 0.0000 or 0.0012 is
    a display question, see ``display_precision``). A loss that is exactly zero, like an unused
    auxiliary loss, is not flat; neither is a small loss that still moves. The main training loss
    sitting at zero (at its precision) from its very first record on is flat: nothing shows learning;
    so is a raw (unrounded) main loss that collapsed below ``flat_abs_zero`` and stays there: a
    stochastic loss is never that close to zero unless its outputs saturated, and then no gradient
    flows. (A loss that is small but still moving, 1e-5 and falling, is not flat.)

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

from muvo_doctor.checks._common import LOSS, fmt, make, series
from muvo_doctor.config import DoctorConfig
from muvo_doctor.finding import Finding
from muvo_doctor.history import History

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


def _zero_all_along(values: np.ndarray, digits: int | None, t) -> bool:
    """The series sat at zero (at its printed precision) from its first point on."""
    zero = 0.5 * 10.0 ** (-digits) if digits is not None else t.flat_abs_zero
    return bool(np.isfinite(values).all() and np.all(np.abs(values) < zero))


def _zero_main(s) -> Finding:
    shown = f"{0:.{s.digits}f} ({s.digits} decimals)" if s.digits is not None else "exactly 0"
    msg = (
        f"{s.name}, the main training loss, shows {shown} in all {len(s)} records from step {int(s.steps[0])} on: "
        f"it never moved, so either the loss is identically zero (nothing to learn) or it is too small for "
        f"the display to show any change."
    )
    ev = {"series": s.name, "level": 0.0, "points": len(s), "digits": s.digits}
    return make(ID, "critical", int(s.steps[0]), msg, ev, ADVICE)


def _exact_zero_after_decline(s) -> Finding:
    nz = np.flatnonzero(~(np.abs(s.values) < 1e-12))
    start = int(nz[-1]) + 1 if len(nz) else 0
    msg = (
        f"{s.name} fell from {fmt(float(s.values[0]))} to (almost) exactly 0 (below 1e-12) and has stayed there for "
        f"{len(s) - start} points since step {int(s.steps[start])}: a minibatch loss that is exactly zero "
        f"gives no gradient (saturated outputs, or a loss the model can satisfy without the labels)."
    )
    ev = {"series": s.name, "level": 0.0, "points": len(s) - start, "start": float(s.values[0])}
    return make(ID, "critical", int(s.steps[start]), msg, ev, ADVICE)


def check(history: History, config: DoctorConfig) -> list[Finding]:
    t = config.thresholds
    found: list[Finding] = []
    for name in loss_names(history):
        s = series(history, name)
        if s is None or len(s) < t.flat_window:
            continue
        w = s.values[-t.flat_window :]
        if not np.isfinite(w).all():
            continue  # nan_inf's business
        flat, level, spread, tol = _flat(w, s.digits, t)
        main = name == LOSS or len(loss_names(history)) == 1
        if not flat and main and _zero_all_along(s.values, s.digits, t):
            found.append(_zero_main(s))
            continue
        if (
            not flat
            and main
            and s.digits is None
            and bool(np.all(np.abs(w) < t.flat_abs_zero))
            and abs(s.values[0]) >= t.flat_abs_zero
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

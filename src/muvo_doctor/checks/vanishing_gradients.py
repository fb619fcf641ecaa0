"""Gradients (of some or all layers) are too small to move the weights.

What it does:
    Reads the per-module gradient norms ``grad/norm/<module>`` (or, without them, the update ratios
    ``update/ratio/<module>``) over the last ``window`` points (after ``min_sampled_points``). Scale-free: a module is quiet when its
    median norm is below ``vg_ratio`` times the loudest module's AND below ``vg_abs`` (AUTOTRAINER's
    1e-3 / 1e-4). Absolute: a total gradient norm below ``vg_total_abs`` means nothing moves at all.
    A warning when at least ``vg_quiet_fraction`` of the modules, or ``vg_quiet_count`` of them, are
    quiet (or all gradients vanished), critical when the loss is also not improving (or the held-out AUROC is at chance).
    Fewer quiet modules are info in a run that learns, a warning in one that does not: one quiet
    layer is not what kills a run.

Why it matters:
    Layers whose gradients vanish keep their initial weights: a deep stack of saturating activations
    (sigmoid, tanh), dead ReLUs, a detached branch, or a bad initialisation leaves the early layers
    untrained while the head tries alone.

What to do:
    Use non-saturating activations (ReLU/GELU) with a matching initialisation (Kaiming), add
    normalisation layers or residual connections, check that no ``.detach()`` cuts the quiet
    modules off, and compare their gradient norm with the head's after the fix.
"""

from __future__ import annotations

import numpy as np

from muvo_doctor.checks._common import fmt, make, module_names, outcome_failure, series
from muvo_doctor.config import DoctorConfig
from muvo_doctor.finding import Finding, Severity
from muvo_doctor.history import History

ID = "vanishing_gradients"
RETRACTABLE = True  # judged over the run so far: the latest evaluation rules (see Doctor)

ADVICE = (
    "Use non-saturating activations (ReLU/GELU) with Kaiming init, add normalisation or residual "
    "connections, and make sure no .detach() cuts the quiet modules off the loss."
)


def _medians(
    history: History, names: list[str], window: int, min_points: int
) -> dict[str, tuple[float, int]]:
    out: dict[str, tuple[float, int]] = {}
    for n in names:
        s = series(history, n)
        if s is None or len(s) < min_points:
            continue
        w = s.values[-window:]
        w = w[np.isfinite(w)]
        if len(w) == 0:
            continue
        # Start of the final run of points at or below this window's median scale.
        out[n] = (float(np.median(w)), int(s.steps[max(0, len(s) - window)]))
    return out


def check(history: History, config: DoctorConfig) -> list[Finding]:
    t = config.thresholds
    prefix = "grad/norm/"
    k = t.min_sampled_points
    med = _medians(history, module_names(history, prefix), t.window, k)
    if not med:
        prefix = "update/ratio/"
        med = _medians(history, module_names(history, prefix), t.window, k)
    total = _medians(history, ["grad/norm/total"], t.window, k).get("grad/norm/total")
    if total is None and prefix == "grad/norm/" and med:
        total = (float(np.sqrt(sum(m * m for m, _ in med.values()))), min(s for _, s in med.values()))
    evidence: dict = {}
    if total is not None and total[0] < t.vg_total_abs:
        quiet = sorted(med) or ["grad/norm/total"]
        what = (
            f"the total gradient norm is {fmt(total[0])} (median of the last {t.window} points), "
            f"below {t.vg_total_abs:.0e}: no layer receives a gradient"
        )
        fraction, step = 1.0, total[1]
        evidence = {"total_norm": total[0], "quiet_modules": quiet[:20], "quiet_fraction": 1.0}
    else:
        if len(med) < 2:
            return []
        loud_name = max(med, key=lambda n: med[n][0])
        loud = med[loud_name][0]
        if not loud > 0:
            return []
        absolute = t.vg_abs if prefix == "grad/norm/" else float("inf")
        quiet = sorted(n for n, (m, _) in med.items() if m < t.vg_ratio * loud and m < absolute)
        if not quiet:
            return []
        fraction = len(quiet) / len(med)
        q = min(quiet, key=lambda n: med[n][0])
        step = min(med[n][1] for n in quiet)
        names = ", ".join(n[len(prefix) :] for n in quiet[:5]) + (" ..." if len(quiet) > 5 else "")
        what = (
            f"{len(quiet)} of {len(med)} modules ({names}) have {prefix.rstrip('/')} below "
            f"{t.vg_ratio:.0e} x the largest: {q[len(prefix) :]} at {fmt(med[q][0])} vs "
            f"{loud_name[len(prefix) :]} at {fmt(loud)} (ratio {med[q][0] / loud:.1e})"
        )
        evidence = {
            "signal": prefix.rstrip("/"),
            "quiet_modules": quiet[:20],
            "quiet_fraction": fraction,
            "quietest": q,
            "quietest_norm": med[q][0],
            "loudest": loud_name,
            "loudest_norm": loud,
            "ratio": med[q][0] / loud,
        }
    failing = outcome_failure(history, t)
    severity: Severity
    # A few quiet modules (an unused head, a layer norm) are not the mechanism of a failing run.
    if fraction >= t.vg_quiet_fraction or len(quiet) >= t.vg_quiet_count:
        severity = "critical" if failing else "warning"
    else:
        severity = "warning" if failing else "info"
    msg = what + (f", {failing}." if failing else ".")
    msg = msg[0].upper() + msg[1:]
    return [make(ID, severity, step, msg, evidence, ADVICE)]

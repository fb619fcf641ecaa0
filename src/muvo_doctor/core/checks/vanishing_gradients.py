"""Gradients (of some or all layers) are too small to move the weights.

What it does:
    Reads the per-module gradient norms ``grad/norm/<module>`` (or, without them, the update ratios
    ``update/ratio/<module>``) over the last ``window`` points (after ``min_sampled_points``).
    Relative to the module's kind: modules whose names differ only in their numbers (the layers of a
    stack, ``encoder.layer.3.attention.self.query`` and ``encoder.layer.0...``, ``head.0`` and
    ``head.6``, ``fc1`` and ``fc3``) are one kind, and a module is quiet when its median norm is below
    ``vg_ratio`` times the loudest module of its kind AND below ``vg_abs`` (AUTOTRAINER's 1e-3 / 1e-4).
    Modules of different kinds are not compared: an attention query/key gradient 1e-5 of a
    classifier's, or a LayerNorm's far below a Linear's, is normal; a module with no other of its
    kind is not judged by ratio. Absolute: a total gradient norm below ``vg_total_abs`` means nothing
    moves at all.
    A finished log with a printed gradient norm (``grad_norm: 0.0000``): zero at its printed
    precision in each of its finite records (``vg_log_min_records`` or more) while the learning rate
    is above 0 means no layer received a gradient; critical when no training loss fell
    ``ms_train_rel_drop`` over the log, else a warning.
    Outcome before mechanism: only info while the run learns. A warning when learning also stalls
    (the loss's progress, ``checks._common.progress``: no drop of ``lnd_min_rel_drop`` between its
    first and last thirds; or the output no longer depends on the input, as ``constant_output``
    measures) and at least ``vg_quiet_fraction`` of the judged modules, or ``vg_quiet_count`` of them,
    are quiet (or all gradients vanished); critical when the outcome fails (the loss is not improving
    over the long window, or the held-out AUROC is at chance). Fewer quiet modules are a warning at
    most, and only in a failing run: one quiet layer is not what kills a run.

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

import re

import numpy as np

from muvo_doctor.core.checks._common import (
    fmt,
    fmt_apart,
    make,
    module_names,
    outcome_failure,
    progress,
    series,
    training_falls,
)
from muvo_doctor.core.checks.constant_output import flat_output
from muvo_doctor.core.config import DoctorConfig, Thresholds
from muvo_doctor.core.finding import Finding, Severity
from muvo_doctor.core.history import History

ID = "vanishing_gradients"

ADVICE = (
    "Use non-saturating activations (ReLU/GELU) with Kaiming init, add normalisation or residual "
    "connections, and make sure no .detach() cuts the quiet modules off the loss."
)

_NUMBER = re.compile(r"\d+")


def kind(module: str) -> str:
    """The module's kind: its name with every number replaced by ``*`` (``enc.layer.*.query``, ``fc*``)."""
    return _NUMBER.sub("*", module)


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
        out[n] = (float(np.median(w)), int(s.steps[max(0, len(s) - window)]))
    return out


def stall(history: History, t: Thresholds) -> str | None:
    """A clause saying learning stalls (the loss does not fall, or the output ignores the input), or None."""
    p = progress(history, t)
    if p is not None and not p.improved and not p.slow:
        return f"and the loss is not improving ({fmt(p.start)} -> {fmt(p.recent)} over {p.n} points)"
    flat = flat_output(history, t)
    if flat is not None:
        shown, bound = fmt_apart(*flat)
        return f"and the model's output is the same for every input (output/std {shown}, below {bound})"
    return None


def _quiet(
    med: dict[str, tuple[float, int]], prefix: str, t: Thresholds
) -> tuple[list[str], int, dict[str, str]] | None:
    """Quiet modules (each against the loudest of its kind), the number judged, and each quiet one's loudest peer."""
    kinds: dict[str, list[str]] = {}
    for n in med:
        kinds.setdefault(kind(n[len(prefix) :]), []).append(n)
    absolute = t.vg_abs if prefix == "grad/norm/" else float("inf")
    quiet: list[str] = []
    peer: dict[str, str] = {}
    judged = 0
    for members in kinds.values():
        if len(members) < 2:
            continue  # no peer of its kind: nothing says what is normal for it
        judged += len(members)
        loud_name = max(members, key=lambda n: med[n][0])
        loud = med[loud_name][0]
        if not loud > 0:
            continue
        for n in members:
            if med[n][0] < t.vg_ratio * loud and med[n][0] < absolute:
                quiet.append(n)
                peer[n] = loud_name
    if not judged:
        return None
    return sorted(quiet), judged, peer


def _zero_logged_norm(history: History, t: Thresholds) -> Finding | None:
    """A whole log whose printed total gradient norm is zero at its precision in every finite record."""
    s = series(history, "grad/norm/total")
    if s is None or s.digits is None:
        return None  # raw norms: the window rules above judge them
    ok = np.isfinite(s.values)
    v = s.values[ok]
    unit = 10.0 ** (-s.digits)
    if len(v) < t.vg_log_min_records or not np.all(np.abs(v) < 0.5 * unit):
        return None
    lr = series(history, "optim/lr")
    if lr is not None and not np.any(lr.values > 0):
        return None  # lr 0 is frozen_parameters' finding
    falls = training_falls(history, t.ms_train_rel_drop)
    shown = f"{0:.{s.digits}f}"
    where = f"grad/norm/total shows {shown} in all {len(v)} finite records (steps {int(s.steps[0])}-{int(s.steps[-1])})"
    lr_text = f" while the learning rate is {fmt(float(np.median(lr.values)))}" if lr is not None else ""
    if falls:
        # A loss that falls was updated: the printed norm is not what trains the model (a norm below the
        # printed resolution still moves Adam-style optimizers by about the learning rate, or the logger
        # reports something else). Worth knowing, not a fault of the run.
        msg = (
            f"{where}{lr_text}, yet {falls}: the printed gradient norm is below its resolution "
            f"({0.5 * unit:g}) or is not the norm of the gradients that train the model."
        )
    else:
        msg = f"{where}{lr_text}: no layer receives a gradient (below {0.5 * unit:g}), so nothing is updated, and no training loss falls."
    ev = {
        "series": "grad/norm/total",
        "records": len(v),
        "digits": s.digits,
        "training_falls": falls,
        "rule": "log_zero",
    }
    if falls:
        advice = (
            "Nothing to fix in the training; to read the gradient norm, print it in scientific notation "
            "(e.g. {:.3e}) and check which norm the logger reports (before or after clipping and unscaling)."
        )
        return make(ID, "info", int(s.steps[0]), msg, ev, advice)
    return make(ID, "critical", int(s.steps[0]), msg, ev, ADVICE)


def check(history: History, config: DoctorConfig) -> list[Finding]:
    t = config.thresholds
    if history.complete:
        logged = _zero_logged_norm(history, t)
        if logged is not None:
            return [logged]
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
        many, step = True, total[1]
        evidence = {"total_norm": total[0], "quiet_modules": quiet[:20], "quiet_fraction": 1.0}
    else:
        got = _quiet(med, prefix, t)
        if got is None or not got[0]:
            return []
        quiet, judged, peer = got
        fraction = len(quiet) / judged
        many = fraction >= t.vg_quiet_fraction or len(quiet) >= t.vg_quiet_count
        q = min(quiet, key=lambda n: med[n][0] / med[peer[n]][0])
        loud_name, loud = peer[q], med[peer[q]][0]
        step = min(med[n][1] for n in quiet)
        names = ", ".join(n[len(prefix) :] for n in quiet[:5]) + (" ..." if len(quiet) > 5 else "")
        what = (
            f"{len(quiet)} of {judged} modules compared with others of their kind ({names}) have "
            f"{prefix.rstrip('/')} below {t.vg_ratio:.0e} x the loudest of their kind: {q[len(prefix) :]} at "
            f"{fmt(med[q][0])} vs {loud_name[len(prefix) :]} at {fmt(loud)} (ratio {med[q][0] / loud:.1e}, "
            f"kind {kind(q[len(prefix) :])})"
        )
        evidence = {
            "signal": prefix.rstrip("/"),
            "quiet_modules": quiet[:20],
            "quiet_fraction": fraction,
            "judged_modules": judged,
            "quietest": q,
            "quietest_norm": med[q][0],
            "loudest": loud_name,
            "loudest_norm": loud,
            "ratio": med[q][0] / loud,
            "kind": kind(q[len(prefix) :]),
        }
    failing = outcome_failure(history, t)
    stalled = failing or stall(history, t)
    severity: Severity
    if many:
        severity = "critical" if failing else "warning" if stalled else "info"
    else:  # a few quiet modules (an unused head, one odd layer) are not the mechanism of a failing run
        severity = "warning" if failing else "info"
    if failing or (stalled and severity != "info"):
        msg = f"{what}, {failing or stalled}."
    else:
        p = progress(history, t)
        learns = p is not None and (p.improved or p.slow) and not stalled
        msg = what + (f", while the loss falls ({fmt(p.start)} -> {fmt(p.recent)})." if learns and p else ".")
    msg = msg[0].upper() + msg[1:]
    return [make(ID, severity, step, msg, evidence, ADVICE)]

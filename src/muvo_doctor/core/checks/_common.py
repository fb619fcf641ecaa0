"""Shared pieces of the checks: finite series, robust noise, loss progress, the label prior.

Not a check (no ``ID``). Everything is O(n) numpy over one series, so the Doctor can run all
checks on every flush over a 20,000-point history.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import numpy as np

from muvo_doctor.core.config import Thresholds
from muvo_doctor.core.finding import Finding, Severity
from muvo_doctor.core.history import History, Series

LOSS = "train/loss"


def fmt(x: float) -> str:
    """A number as a user reads it: 4 significant digits, no exponent for ordinary sizes."""
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    if 1e-4 <= abs(x) < 1e5:
        return f"{x:.4g}" if abs(x) < 1 else f"{x:.4f}".rstrip("0").rstrip(".")
    return f"{x:.3g}"


def fmt_apart(x: float, limit: float) -> tuple[str, str]:
    """A value and the limit it is compared with, with as many digits as it takes to read them apart
    ("1.46e-06, below 1.46e-06" said nothing: 1.4555e-06 against 1.4592e-06)."""
    a, b = fmt(x), fmt(limit)
    digits = 4
    while a == b and x != limit and digits < 17:
        digits += 1
        a, b = f"{x:.{digits}g}", f"{limit:.{digits}g}"
    return a, b


# One Series object per name per evaluation (16 checks read the same series; History.series() is
# cheap now, views over growable arrays, but still a dict lookup and a dataclass). Keyed weakly by
# the history object and checked against its point count, so any new point invalidates it.
_CACHE: weakref.WeakKeyDictionary[History, tuple[int, dict[str, Series | None]]] = weakref.WeakKeyDictionary()


def series(history: History, name: str) -> Series | None:
    """``history.series(name)``, once per evaluation (cached until a point is added)."""
    entry = _CACHE.get(history)
    if entry is None or entry[0] != history.count:
        entry = _CACHE[history] = (history.count, {})
    got = entry[1]
    if name not in got:
        got[name] = history.series(name)
    return got[name]


def finite(history: History, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Steps and values of ``name`` with non-finite points dropped; None when absent or empty."""
    s = series(history, name)
    if s is None:
        return None
    ok = np.isfinite(s.values)
    if not ok.any():
        return None
    return s.steps[ok], s.values[ok]


def robust_sigma(x: np.ndarray) -> float:
    """Standard deviation estimated from the median absolute deviation (outlier-proof)."""
    if len(x) < 2:
        return 0.0
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


def step_noise(x: np.ndarray) -> float:
    """Per-point noise from first differences (insensitive to a slow trend)."""
    if len(x) < 3:
        return 0.0
    return robust_sigma(np.diff(x)) / math.sqrt(2.0)


def median_se(x: np.ndarray) -> float:
    """Standard error of the median of ``x`` (1.2533 sigma / sqrt(n) for a normal sample)."""
    if len(x) < 2:
        return 0.0
    return 1.2533 * max(robust_sigma(x), step_noise(x)) / math.sqrt(len(x))


def make(
    check: str,
    severity: Severity,
    step: int | None,
    message: str,
    evidence: dict,
    advice: str,
) -> Finding:
    clean: dict = {}
    for k, v in evidence.items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            v = str(v)
        clean[k] = v
    return Finding(
        check=check,
        severity=severity,
        step=None if step is None else int(step),
        message=message,
        evidence=clean,
        advice=advice,
    )


@dataclass(frozen=True)
class Progress:
    """How the training loss moved: start level, recent level, and whether that is a real drop."""

    n: int
    start: float  # median of the first third (or the first few points, whichever is higher)
    recent: float  # median of the last third
    drop: float  # start - recent
    needed: float  # the drop that counts as learning (relative floor or noise, whichever is larger)
    improved: bool
    rising: bool
    first_step: int
    last_step: int
    slow: bool = (
        False  # not a relative drop of lnd_min_rel_drop, but a drop beyond lnd_noise_z standard errors
    )


def progress(
    history: History, t: Thresholds, name: str = LOSS, min_points: int | None = None
) -> Progress | None:
    """Compare the first and last thirds of a loss series with their noise; None when too short."""
    got = finite(history, name)
    if got is None:
        return None
    steps, v = got
    n = len(v)
    if n < (t.min_points if min_points is None else min_points):
        return None
    k = max(n // 3, 1)
    first, last = v[:k], v[-k:]
    head = v[: max(3, min(k, n // 20))]
    # The start is the higher of the first third and the very first points: a run that learned
    # in its first 5% and then plateaued has learned, even if its thirds look alike.
    start = max(float(np.median(first)), float(np.median(head)))
    recent = float(np.median(last))
    se = math.hypot(median_se(first), median_se(last))
    # Learning = a relative drop; noise only guards the "rising" verdict. (A very noisy loss, e.g.
    # BCE with pos_weight on small batches, can fall 20% without the drop being "significant": that
    # is not a stalled run.)
    needed = t.lnd_min_rel_drop * abs(start)
    drop = start - recent
    rising = (recent - float(np.median(first))) > max(needed, t.lnd_noise_z * se)
    improved = drop > needed
    slow = not improved and drop > t.lnd_noise_z * se and drop > 0
    return Progress(n, start, recent, drop, needed, improved, rising, int(steps[0]), int(steps[-1]), slow)


def auroc_learns(history: History, t: Thresholds) -> float | None:
    """The latest ``val/auroc`` when it is clearly above chance, else None.

    Clearly: the last two evaluations (the only one, if there is one) above 0.5 + 2 ``ms_auroc_tol``.
    One evaluation alone can jump there while a model's scores drift (measured: the original arch
    on CPU went 0.44, 0.52, 0.61, 0.46 over four evaluations without learning).
    """
    au = finite(history, "val/auroc")
    if au is None:
        return None
    last = float(au[1][-1])
    return last if float(au[1][-2:].min()) > 0.5 + 2 * t.ms_auroc_tol else None


def mechanism(
    check: str, step: int | None, what: str, failing: str | None, evidence: dict, advice: str
) -> Finding:
    """A mechanism finding: critical only with a failing outcome (its clause ends the message), else a warning.

    ``what``: the mechanism, as a sentence without its final period; ``failing``: ``outcome_failure``'s
    clause (or a check's own), or None.
    """
    msg = what + (f", {failing}." if failing else ".")
    return make(check, "critical" if failing else "warning", step, msg, evidence, advice)


def outcome_failure(history: History, t: Thresholds) -> str | None:
    """A clause saying the training outcome fails (loss not finite or not improving, AUROC at chance), or None.

    Mechanism checks escalate to critical only when this is not None.
    """
    got = series(history, LOSS)
    if got is not None and len(got) >= t.min_points and not np.isfinite(got.values[-t.min_points :]).any():
        return "and the loss is no longer finite"
    if auroc_learns(history, t):
        return None  # the held-out scores rank: whatever the loss does, the model learns
    au = finite(history, "val/auroc")
    if au is not None and len(au[1]) >= 3:
        recent = float(np.median(au[1][-3:]))
        if abs(recent - 0.5) <= t.ms_auroc_tol and float(au[1].max()) <= 0.5 + 2 * t.ms_auroc_tol:
            return f"and the held-out AUROC is at chance ({recent:.3f})"
    # The long window: a loss that has not moved in its first 50 steps may be in warm-up.
    p = progress(history, t, min_points=t.lnd_min_points)
    if p is None or p.improved or p.slow:
        return None
    return f"and the loss is not improving ({fmt(p.start)} -> {fmt(p.recent)} over {p.n} points)"


def short_p(p: float) -> str:
    """A fraction as the message shows it: 0.10, or 0.103 when the third decimal matters."""
    return f"{p:.2f}" if round(p, 2) == round(p, 3) else f"{p:.3f}"


def bernoulli_entropy(p: float) -> float:
    """H(p) = -p ln p - (1-p) ln(1-p) in nats: the BCE of predicting the prior p."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -p * math.log(p) - (1 - p) * math.log(1 - p)


@dataclass(frozen=True)
class Prior:
    """The label prior seen so far and what predicting it alone scores."""

    kind: str  # "binary" | "multiclass"
    p: float  # positive fraction (binary) or the majority class's fraction
    entropy: float  # loss of predicting the prior (nats)
    majority: float  # accuracy of predicting the majority class
    classes: int
    label: str  # how the message names the entropy, e.g. "H(0.10)"
    weighted: float | None  # binary: loss at the prior under BCE with pos_weight=(1-p)/p


def label_prior(history: History) -> Prior | None:
    """The prior from ``label/positive_fraction`` or ``label/fraction/<k>``; None when no labels were seen."""
    got = finite(history, "label/positive_fraction")
    if got is not None:
        p = float(np.clip(np.mean(got[1]), 0.0, 1.0))
        weighted = 2.0 * (1.0 - p) * math.log(2.0) if 0.0 < p < 1.0 else None
        return Prior("binary", p, bernoulli_entropy(p), max(p, 1 - p), 2, f"H({short_p(p)})", weighted)
    names = [n for n in history.names("label/fraction/") if n.rsplit("/", 1)[-1].isdigit()]
    if not names:
        return None
    fr = []
    for n in names:
        g = finite(history, n)
        fr.append(float(np.mean(g[1])) if g is not None else 0.0)
    f = np.clip(np.asarray(fr), 0.0, 1.0)
    if f.sum() <= 0:
        return None
    f = f / f.sum()
    nz = f[f > 0]
    ent = float(-(nz * np.log(nz)).sum())
    return Prior(
        "multiclass", float(f.max()), ent, float(f.max()), len(names), f"({len(names)} classes)", None
    )


def first_run_start(mask: np.ndarray, length: int) -> int | None:
    """Index where the first run of ``length`` consecutive True values starts, or None."""
    if length <= 1:
        idx = np.flatnonzero(mask)
        return int(idx[0]) if len(idx) else None
    m = mask.astype(np.int64)
    c = np.concatenate(([0], np.cumsum(m)))
    ok = (c[length:] - c[:-length]) == length
    idx = np.flatnonzero(ok)
    return int(idx[0]) if len(idx) else None


def module_names(history: History, prefix: str) -> list[str]:
    """Per-module series under ``prefix`` (``grad/norm/`` ...), without ``total`` or rank copies."""
    return [n for n in history.names(prefix) if not n.endswith("/total") and "@rank" not in n]


# ---------------------------------------------------------------------------------------------
# Log-only evidence: splits, few-point series, what a printed number can and cannot say.

SPLITS = ("train", "val", "test")
# Metrics where higher is better, as the log readers name them (``<split>/<metric>``).
HIGHER_BETTER = frozenset(
    {"acc", "auroc", "auprc", "map", "map50", "map50_95", "precision", "recall", "f1", "bleu", "iou", "miou"}
)
# Metrics where lower is better besides losses.
LOWER_BETTER = frozenset({"wer", "cer", "ppl", "perplexity", "fpr95", "error", "err", "top1_err", "top5_err"})


def metric_of(name: str) -> str:
    """The metric of ``split/metric[/part]``: ``val/acc/target`` -> ``acc``."""
    parts = name.split("/")
    return parts[1] if len(parts) > 1 else ""


def scores(
    history: History, min_points: int, splits: tuple[str, ...] = ("val", "test")
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, steps, values)`` of the higher-is-better scores of ``splits`` with ``min_points`` finite points."""
    out = []
    for name in history.names():
        if name.partition("/")[0] in splits and metric_of(name) in HIGHER_BETTER:
            got = finite(history, name)
            if got is not None and len(got[1]) >= min_points:
                out.append((name, got[0], got[1]))
    return out


def heldout_losses(history: History, min_points: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, steps, values)`` of ``val/loss`` and ``test/loss`` with ``min_points`` finite points."""
    out = []
    for split in ("val", "test"):
        got = finite(history, f"{split}/loss")
        if got is not None and len(got[1]) >= min_points:
            out.append((f"{split}/loss", got[0], got[1]))
    return out


def split_series(history: History, metric: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (steps, values)}`` for ``<split>/<metric>`` in train, val, test order (finite points)."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in SPLITS:
        got = finite(history, f"{split}/{metric}")
        if got is not None:
            out[split] = got
    return out


def resolution(s: Series) -> float:
    """The smallest change the series can show: one unit of its last printed digit, 0 for raw values."""
    return 10.0 ** (-s.digits) if s.digits is not None else 0.0


def improved(values: np.ndarray, higher_better: bool, tol: float) -> bool:
    """Whether a short series (evaluations, epochs) got better than its first value by more than ``tol``."""
    if len(values) < 2:
        return False
    best = float(values.max()) if higher_better else float(values.min())
    return (best - float(values[0])) > tol if higher_better else (float(values[0]) - best) > tol


def any_metric_improved(history: History, tol_rel: float = 0.05) -> str | None:
    """A held-out metric that clearly improved over its first value (a sentence), else None.

    Higher-better metrics must gain ``max(0.02, tol_rel x first)`` absolute; lower-better ones and
    held-out losses must fall by ``tol_rel`` of their first value. Used as a veto: a run whose held-out
    numbers improve has learned something, whatever its training loss shows.
    """
    for name in history.names():
        split, metric = name.partition("/")[0], metric_of(name)
        if split not in ("val", "test") or not metric:
            continue
        got = finite(history, name)
        if got is None or len(got[1]) < 2:
            continue
        v = got[1]
        if metric in HIGHER_BETTER:
            if improved(v, True, max(0.02, tol_rel * abs(float(v[0])))):
                return f"{name} rose {fmt(float(v[0]))} -> {fmt(float(v.max()))}"
        elif metric == "loss" or metric in LOWER_BETTER:
            if improved(v, False, tol_rel * abs(float(v[0]))):
                return f"{name} fell {fmt(float(v[0]))} -> {fmt(float(v.min()))}"
    return None


def training_falls(history: History, rel: float) -> str | None:
    """A training loss (the main one or a component) whose last value is ``rel`` below its first, as a clause."""
    for name in history.names("train/"):
        if "loss" not in name.rsplit("/", 1)[-1]:
            continue
        got = finite(history, name)
        if got is None or len(got[1]) < 2:
            continue
        v = got[1]
        head = float(np.median(v[: max(1, len(v) // 3)]))
        tail = float(np.median(v[-max(1, len(v) // 3) :]))
        if head > 0 and tail < (1 - rel) * head:
            return f"{name} fell {fmt(head)} -> {fmt(tail)}"
    return None


def around(series_: tuple[np.ndarray, np.ndarray], step: int, k: int = 1) -> tuple[float, float] | None:
    """(median before, median after) of ``series_`` around ``step``: the points after it, and as many
    (at least ``k``) just before it. None when either side is empty."""
    st, v = series_
    before, after = v[st <= step], v[st > step]
    if len(before) == 0 or len(after) == 0:
        return None
    return float(np.median(before[-max(len(after), k, 1) :])), float(np.median(after))

"""The model performs at the label-prior baseline: loss at the prior's entropy, accuracy at the majority rate.

What it does:
    With labels recorded (``label/positive_fraction`` or ``label/fraction/<k>``) it computes what
    predicting the prior alone scores: the binary cross-entropy H(p) = -p ln p - (1-p) ln(1-p) (and,
    for BCE with ``pos_weight = (1-p)/p``, 2 (1-p) ln 2), the multiclass -sum p_k ln p_k, and the
    majority rate max(p, 1-p). Where labels and loss share their steps, each point first loses what
    its batch's own label mix adds to the prior's loss (a batch of 32 at 10% holds 1 to 7
    positives). When the median training loss of the last ``pb_window`` points lies
    within ``pb_rel_band`` of one of them (or ``pb_noise_z`` standard errors of the loss and of the
    baseline, which inherits the error of p estimated from sampled batches; whichever is larger)
    and does not trend down inside the window, the model has learned only the prior: critical. The
    message adds the accuracy (vs the majority rate, ``pb_acc_tol``) and AUROC (vs 0.5,
    ``pb_auroc_tol``) when they were recorded. When a held-out AUROC is recorded it must confirm:
    3 evaluations whose median is at most 0.5 + ``pb_auroc_tol`` (a slow learner sits at the prior for
    a while too); with that second witness the loss window is ``pb_window_heldout`` points. A latest AUROC above 0.5 + 2 ``ms_auroc_tol``, or an accuracy clearly above the
    majority rate, vetoes it: the model uses its input. Without labels (logs) the prior is inferred
    split by split from an accuracy that does not improve: above 0.5 it is a binary majority rate a
    and the loss of predicting it is H(1 - a) (0.325 at 90%); at or below 0.5 it is chance over
    K = 1/a classes and a uniform prediction scores ln K (1.386 at 25%). The loss of the same split
    (or the training loss, when the split prints only accuracy) must sit within the band of that
    baseline. K is never guessed from the loss alone: above ~2.5 every value is within 3% of some ln K.

Why it matters:
    A model that predicts the prior reports a reasonable-looking loss and an accuracy equal to the
    majority rate (89.9% with 10% positives) while it ignores its input entirely. No other tool
    checks this; the original team celebrated exactly such a run.

What to do:
    Judge the run against the prior, not against zero: AUROC/AUPRC instead of accuracy, and a loss
    clearly below H(p). Check that labels match inputs (no shuffling of one without the other, no
    random or pseudo-labels that carry no signal), that the input reaches the model, and rebalance
    the classes (``pos_weight``, a weighted sampler).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from muvo_doctor.core.checks._common import (
    LOSS,
    auroc_learns,
    bernoulli_entropy,
    finite,
    fmt,
    label_prior,
    make,
    median_se,
    short_p,
    split_series,
)
from muvo_doctor.core.config import DoctorConfig
from muvo_doctor.core.finding import Finding
from muvo_doctor.core.history import History

ID = "prior_baseline"

ADVICE = (
    "Judge the run against the prior: AUROC/AUPRC instead of accuracy and a loss clearly below H(p). "
    "Check that labels match inputs (no random/pseudo-labels, no shuffling of one side only), that the "
    "input reaches the model, and rebalance the classes (pos_weight, weighted sampler)."
)

BLOCK = 10  # points per block when finding where the plateau began


def _plateau(
    history: History, t, window: int, points: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray, float, float, float] | None:
    """(steps, values, median, standard error, drop) of the last ``window`` points.

    Of the training loss, or of ``points`` (steps, values) when given (see :func:`_batch_adjusted`).
    """
    got = points if points is not None else finite(history, LOSS)
    if got is None or len(got[1]) < window:
        return None
    steps, v = got
    w = v[-window:]
    half = len(w) // 2
    med = float(np.median(w))
    se = median_se(w)
    drop = float(np.median(w[:half]) - np.median(w[half:]))
    return steps, v, med, se, drop


def _batch_adjusted(history: History, prior, weighted: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """The loss at the steps whose labels were recorded, less what each batch's own label mix adds.

    A batch of 32 with 10% positives holds 1 to 7 of them, and the loss of predicting p moves with
    that count, linearly: L(f) = -f ln p - (1-f) ln(1-p), or ln 2 (w f + 1 - f) with
    ``pos_weight`` w = (1-p)/p. The binomial skew puts the median batch loss about 4% under H(p)
    (batches of 32 at 10%, measured over 100,000 draws).
    ``loss - (L(f) - L(p))`` removes that noise and skew: a model at the prior then sits on L(p)
    within about 1%, and one that learns stays below it as before. Labels are
    recorded on sampled steps only (the loss on every step), so this covers the sampled steps.
    None without labelled loss points.
    """
    if prior.kind != "binary" or not 0.0 < prior.p < 1.0:
        return None
    loss = finite(history, LOSS)
    lab = finite(history, "label/positive_fraction")
    if loss is None or lab is None:
        return None
    # Both step arrays are increasing; a label point and a loss point of one step pair up.
    ls, li, fi = np.intersect1d(loss[0], lab[0], assume_unique=False, return_indices=True)
    if not len(ls):
        return None
    f = lab[1][fi]
    p = prior.p
    slope = math.log(2.0) * ((1.0 - p) / p - 1.0) if weighted else math.log((1.0 - p) / p)
    return ls, loss[1][li] - slope * (f - p)


def _band(c: float, se: float, t, se_c: float = 0.0) -> float:
    """How far from the baseline ``c`` the loss may sit: a relative band, or the noise of both."""
    return max(t.pb_rel_band * abs(c), t.pb_noise_z * math.hypot(se, se_c))


def _baseline_se(history: History, prior, weighted: bool) -> float:
    """Standard error of the baseline loss that comes from estimating p from sampled batches.

    The prior is the mean of the recorded batch fractions: 18 sampled batches of 16 labels give p
    to about +-0.026, which moves H(p) by 0.047 near p = 0.14, more than the loss's own noise. So the
    baseline carries its own error bar: |dc/dp| x std(fractions)/sqrt(n).
    """
    got = finite(history, "label/positive_fraction")
    if prior.kind != "binary" or got is None or len(got[1]) < 2 or not 0.0 < prior.p < 1.0:
        return 0.0
    p = prior.p
    slope = 2.0 * math.log(2.0) if weighted else abs(math.log((1.0 - p) / p))
    return slope * float(np.std(got[1], ddof=1)) / math.sqrt(len(got[1]))


class _Hit(NamedTuple):
    label: str  # how the message names the baseline
    c: float  # the baseline loss
    band: float
    adjusted: bool  # judged on the batch-adjusted loss
    plateau: tuple[np.ndarray, np.ndarray, float, float, float]  # what _plateau returned
    se_c: float  # the baseline's own standard error


def _at_baseline(
    history: History, t, prior, pl: tuple[np.ndarray, np.ndarray, float, float, float], window: int
) -> _Hit | None:
    """The first prior baseline the loss plateau ``pl`` sits on, or None.

    Baselines: H(p), then the pos_weight prior loss. For each, the batch-adjusted loss first (over the
    labelled steps, at least half a window of them), then the raw loss, for a loss the labels do not
    drive alone.
    """
    cands = [(f"prior entropy {prior.label}", prior.entropy, False)]
    if prior.weighted is not None:
        cands.append(("the prior loss under pos_weight=(1-p)/p, 2(1-p)ln2", prior.weighted, True))
    for label, c, weighted in cands:
        tries = [(pl, False)]
        adj = _batch_adjusted(history, prior, weighted)
        if adj is not None and len(adj[1]) >= window // 2:
            got = _plateau(history, t, min(window, len(adj[1])), adj)
            if got is not None:
                tries.insert(0, (got, True))
        se_c = _baseline_se(history, prior, weighted)
        for got, adjusted in tries:
            band = _band(c, got[3], t, se_c)
            if abs(got[2] - c) <= band and got[4] <= band:
                return _Hit(label, c, band, adjusted, got, se_c)
    return None


def _onset(steps: np.ndarray, v: np.ndarray, c: float, band: float) -> int:
    nb = len(v) // BLOCK
    if nb == 0:
        return int(steps[0])
    off = len(v) - nb * BLOCK
    blocks = np.median(v[off:].reshape(nb, BLOCK), axis=1)
    out = np.flatnonzero(np.abs(blocks - c) > band)
    b = int(out[-1]) + 1 if len(out) else 0
    return int(steps[min(off + b * BLOCK, len(steps) - 1)])


def _recent_median(history: History, name: str, window: int) -> tuple[float, float] | None:
    got = finite(history, name)
    if got is None:
        return None
    w = got[1][-window:]
    return float(np.median(w)), median_se(w)


def _with_labels(history: History, t, prior) -> Finding | None:
    auroc = _recent_median(history, "val/auroc", 3)
    # "At chance" includes below it: scores that do not beat chance carry no signal either.
    auroc_at = auroc is not None and auroc[0] <= 0.5 + t.pb_auroc_tol
    if auroc_learns(history, t) is not None:
        return None  # the held-out scores rank: the model uses its input, whatever the loss says
    evals = finite(history, "val/auroc")
    if evals is not None and (len(evals[1]) < 3 or not auroc_at):
        return None  # with a held-out AUROC, wait for 3 evaluations and require them at chance
    # A held-out AUROC at chance is a second, independent witness: the training loss then needs a
    # shorter stay at the prior to rule out a slow start.
    window = t.pb_window_heldout if evals is not None else t.pb_window
    pl = _plateau(history, t, window)
    # Training accuracy only: the majority rate comes from the training labels, and a held-out split
    # has its own class balance (64 frames with 4 positives "beat" a 10% prior at 93.75%).
    acc = _recent_median(history, "train/acc", window)
    acc_at = acc is not None and abs(acc[0] - prior.majority) <= t.pb_acc_tol + 2 * acc[1]
    if acc is not None and acc[0] > prior.majority + t.pb_acc_tol + 2 * acc[1]:
        return None  # beats the majority rate
    evidence: dict = {"prior_p": prior.p, "prior_entropy": prior.entropy, "majority_rate": prior.majority}
    parts: list[str] = []
    step = None
    if pl is not None and prior.entropy > 0:
        hit = _at_baseline(history, t, prior, pl, window)
        if hit is None:
            return None  # the loss is away from every prior baseline: whatever acc says, it learns
        label, c, band, adjusted, (steps, v, med, se, _), se_c = hit
        evidence.update(
            {
                "loss": med,
                "loss_se": se,
                "batch_adjusted": adjusted,
                "baseline_loss": c,
                "band": band,
                "baseline_se": se_c,
            }
        )
        step = _onset(steps, v, c, band)
        mix = " (each batch's label mix taken out)" if adjusted else ""
        # A band wider than the relative one comes from noise (the loss's, or p's estimated from few
        # sampled batches): say so, or "0.314 ≈ 0.377" reads as false.
        wide = band > t.pb_rel_band * abs(c) * 1.01
        why = (
            "the noise of the loss and of p estimated from sampled batches"
            if se_c > 0
            else "the loss's noise"
        )
        within = f" (within ±{band:.3f}, {why})" if wide else ""
        parts.append(f"loss {fmt(med)}{mix} ≈ {label}={c:.3f}{within}")
    elif LOSS in history or acc is None or not (acc_at and (auroc_at or auroc is None)):
        return None  # a loss still warming up decides later; without one, accuracy and AUROC must agree
    if acc is not None:
        # "≈" only when the accuracy is near the majority rate in points too: a noisy per-batch accuracy
        # can be "within its noise" of it while 20 points away, and the message must not say it is close.
        rel = "≈" if acc_at and abs(acc[0] - prior.majority) <= t.pb_acc_near else "vs"
        parts.append(f"accuracy {acc[0]:.1%} {rel} majority rate {prior.majority:.1%}")
        evidence["accuracy"] = acc[0]
    if auroc is not None:
        parts.append(f"AUROC {auroc[0]:.3f}" + (" (chance 0.5)" if auroc_at else ""))
        evidence["auroc"] = auroc[0]
    if step is None:
        got = finite(history, "train/acc") or finite(history, "val/acc")
        step = int(got[0][0]) if got else None
    source = (
        f"p = {prior.p:.3f} from the labels"
        if prior.kind == "binary"
        else f"majority class {prior.p:.1%} of {prior.classes} from the labels"
    )
    msg = ", ".join(parts) + f" ({source}): the model predicts the label prior."
    return make(ID, "critical", step, msg[0].upper() + msg[1:], evidence, ADVICE)


def _without_labels(history: History, t) -> Finding | None:
    """The prior inferred from the log, split by split: loss and accuracy of one split are paired.

    A split that prints accuracy but no loss (a test line with accuracy only) borrows the training
    loss when training prints no accuracy: a model at the prior sits at it on every split.
    """
    losses = split_series(history, "loss")
    accs = split_series(history, "acc")
    for split, acc in accs.items():
        loss_split = split if split in losses else "train"
        if loss_split not in losses or (loss_split != split and "train" in accs):
            continue
        f = _inferred(t, split, acc, loss_split, losses[loss_split], history)
        if f is not None:
            return f
    return None


def _unit(history: History, split: str) -> float:
    s = history.series(f"{split}/loss")
    return 10.0 ** (-s.digits) if s is not None and s.digits is not None else 0.0


def _accuracy_prior(a: float) -> tuple[float, str, str, dict, str]:
    """What an accuracy plateau ``a`` says about the prior: (its loss, the baseline's name, where the
    prior comes from, evidence, the accuracy's target). Above 0.5 a binary majority rate, whose loss is
    H(1 - a); at or below it chance over K = 1/a classes, whose loss is ln K."""
    if a > 0.5:
        p = 1.0 - a
        c = bernoulli_entropy(p)
        evidence: dict = {"prior_p": p, "majority_rate": a}
        return (
            c,
            f"prior entropy H({short_p(p)})={c:.3f}",
            "the prior inferred from the accuracy plateau",
            evidence,
            f"majority rate {a:.1%}",
        )
    k_est = 1.0 / a
    k = round(k_est)
    classes = k if k >= 2 and abs(k_est - k) <= 0.05 * k_est else None
    c = math.log(classes if classes else k_est)
    what = f"ln {classes} = {c:.4f}" if classes else f"ln(1/{a:.3g}) = {c:.3f}"
    k_shown = classes if classes else f"~{k_est:.0f}"
    prior_of = f"a uniform prior over K = {k_shown} classes, K inferred from the accuracy ≈ 1/K"
    evidence = {"classes": classes if classes else k_est, "chance_accuracy": a}
    return c, what, prior_of, evidence, (f"chance 1/{classes}" if classes else f"chance 1/{k_est:.0f}")


def _inferred(
    t,
    split: str,
    acc: tuple[np.ndarray, np.ndarray],
    loss_split: str,
    loss: tuple[np.ndarray, np.ndarray],
    history,
) -> Finding | None:
    """Loss at the entropy of the prior that the accuracy plateau implies, with the accuracy not improving.

    Two priors can be read off an accuracy ``a`` that does not improve: above 0.5, a binary majority rate
    (the loss of predicting it is H(1 - a)); at or below 0.5, chance over K = 1/a classes (the loss of a
    uniform prediction is ln K). The class count comes from the accuracy, never from the loss alone:
    above a loss of ~2.5 every value lies within 3% of some ln K, so a plateau at "ln K" for a K the log
    does not show is no evidence.
    """
    steps, v = loss
    av = acc[1]
    # A whole log may be a handful of epochs; during a run, a short series is a young run.
    need = t.pb_log_min_points if history.complete else 2 * t.min_points
    if len(v) < need or len(av) < 2:
        return None
    window = min(t.pb_window, max(2, len(v) // 2))
    pl = _plateau(history, t, window, loss)
    if pl is None:
        return None
    _, _, med, se, drop = pl
    a_recent = av[-max(1, len(av) // 2) :]
    a = float(np.median(a_recent))
    a_se = median_se(a_recent)
    if not 0.0 < a < 1.0:
        return None
    binary = a > 0.5
    # Not improving: the recent accuracy is no better than the first evaluation (within its noise, or a
    # fifth of it below 0.5: chance over K classes is small, and doubling it would be learning).
    tol = t.pb_acc_tol + 2 * a_se if binary else max(t.pb_acc_tol, 0.2 * float(av[0]))
    if a - float(av[0]) > tol or float(av.max()) - float(av[0]) > 2 * tol:
        return None
    c, what, prior_of, evidence, target = _accuracy_prior(a)
    # A standard error from a handful of epoch records is no noise estimate: the band is then the
    # relative one alone (plus what the printed digits cannot show).
    if window >= t.pb_window_for_noise:
        band = _band(c, se, t)
    else:
        band = t.pb_rel_band * c + 0.5 * _unit(history, loss_split)
    # H(1 - a) is the least entropy any prior with majority rate a has (grouping the other classes only
    # lowers it), so a loss above it, with an accuracy that has not moved over ms_min_evals records,
    # has not beaten predicting the prior, whatever the number of classes.
    # ... approached from above or flat: a loss that rises above it is over-confidence (overfitting), not the prior.
    above = binary and med > c + band and len(av) >= t.ms_min_evals and float(v[-1]) <= float(v[0])
    if not above and (abs(med - c) > band or drop > band):
        return None
    off = abs(med - c) / c
    sure = "high" if off <= t.pb_rel_band / 3 and loss_split == split and not above else "medium"
    evidence.update(
        {
            "prior_entropy": c,
            "loss": med,
            "loss_se": se,
            "loss_series": f"{loss_split}/loss",
            "accuracy_series": f"{split}/acc",
            "accuracy": a,
            "inferred": True,
            "confidence": sure,
        }
    )
    borrowed = "" if loss_split == split else f", no {split}/loss printed"
    msg = (
        f"Loss {fmt(med)} {'is above' if above else '≈'} {what} and accuracy {a:.2%} ≈ {target} ({loss_split}/loss and {split}/acc over "
        f"{len(av)} records, accuracy not improving{borrowed}; {prior_of}, {off:.1%} apart; confidence {sure}): "
        f"the model predicts the label prior."
    )
    return make(ID, "critical", _onset(steps, v, c, band), msg, evidence, ADVICE)


def check(history: History, config: DoctorConfig) -> list[Finding]:
    t = config.thresholds
    prior = label_prior(history)
    f = _with_labels(history, t, prior) if prior is not None else _without_labels(history, t)
    return [f] if f is not None else []

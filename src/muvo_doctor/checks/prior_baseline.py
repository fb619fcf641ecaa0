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
    a while too). A latest AUROC above 0.5 + 2 ``ms_auroc_tol``, or an accuracy clearly above the
    majority rate, vetoes it: the model uses its input. Without labels (logs) the prior is inferred: a loss
    plateau at the Bernoulli entropy H(1 - acc) of the accuracy plateau (0.325 with 90%: sure), or
    a plateau at ln K for K classes (uniform prediction; surer when the accuracy is 1/K).

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

from muvo_doctor.checks._common import (
    LOSS,
    auroc_learns,
    bernoulli_entropy,
    finite,
    fmt,
    label_prior,
    make,
    median_se,
    short_p,
)
from muvo_doctor.config import DoctorConfig
from muvo_doctor.finding import Finding
from muvo_doctor.history import History

ID = "prior_baseline"
RETRACTABLE = True  # judged over the run so far: the latest evaluation rules (see Doctor)

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
    history: History, t, prior, pl: tuple[np.ndarray, np.ndarray, float, float, float]
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
        if adj is not None and len(adj[1]) >= t.pb_window // 2:
            got = _plateau(history, t, min(t.pb_window, len(adj[1])), adj)
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
    pl = _plateau(history, t, t.pb_window)
    # Training accuracy only: the majority rate comes from the training labels, and a held-out split
    # has its own class balance (64 frames with 4 positives "beat" a 10% prior at 93.75%).
    acc = _recent_median(history, "train/acc", t.pb_window)
    auroc = _recent_median(history, "val/auroc", 3)
    acc_at = acc is not None and abs(acc[0] - prior.majority) <= t.pb_acc_tol + 2 * acc[1]
    # "At chance" includes below it: scores that do not beat chance carry no signal either.
    auroc_at = auroc is not None and auroc[0] <= 0.5 + t.pb_auroc_tol
    if auroc_learns(history, t) is not None:
        return None  # the held-out scores rank: the model uses its input, whatever the loss says
    evals = finite(history, "val/auroc")
    if evals is not None and (len(evals[1]) < 3 or not auroc_at):
        return None  # with a held-out AUROC, wait for 3 evaluations and require them at chance
    if acc is not None and acc[0] > prior.majority + t.pb_acc_tol + 2 * acc[1]:
        return None  # beats the majority rate
    evidence: dict = {"prior_p": prior.p, "prior_entropy": prior.entropy, "majority_rate": prior.majority}
    parts: list[str] = []
    step = None
    if pl is not None and prior.entropy > 0:
        hit = _at_baseline(history, t, prior, pl)
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
        parts.append(f"loss {fmt(med)}{mix} ≈ {label}={c:.3f}")
    elif LOSS in history or acc is None or not (acc_at and (auroc_at or auroc is None)):
        return None  # a loss still warming up decides later; without one, accuracy and AUROC must agree
    if acc is not None:
        rel = "≈" if acc_at else "vs"
        parts.append(f"accuracy {acc[0]:.1%} {rel} majority rate {prior.majority:.1%}")
        evidence["accuracy"] = acc[0]
    if auroc is not None:
        parts.append(f"AUROC {auroc[0]:.3f}" + (" (chance 0.5)" if auroc_at else ""))
        evidence["auroc"] = auroc[0]
    if step is None:
        got = finite(history, "train/acc") or finite(history, "val/acc")
        step = int(got[0][0]) if got else None
    msg = ", ".join(parts) + f" (p = {prior.p:.3f} from the labels): the model predicts the label prior."
    return make(ID, "critical", step, msg[0].upper() + msg[1:], evidence, ADVICE)


def _without_labels(history: History, t) -> Finding | None:
    got = finite(history, LOSS)
    if got is None or len(got[1]) < 2 * t.min_points:
        return None
    window = min(t.pb_window, len(got[1]) // 2)
    pl = _plateau(history, t, window)
    if pl is None:
        return None
    steps, v, med, se, drop = pl
    acc = _recent_median(history, "train/acc", window) or _recent_median(history, "val/acc", t.ms_min_evals)
    evidence: dict = {"loss": med, "loss_se": se, "inferred": True}
    if acc is not None and 0.5 < acc[0] < 1.0:
        p = 1.0 - acc[0]
        c = bernoulli_entropy(p)
        band = _band(c, se, t)
        if abs(med - c) <= band and drop <= band:
            off = abs(med - c) / c
            sure = "high" if off <= t.pb_rel_band / 3 else "medium"
            evidence.update(
                {
                    "prior_p": p,
                    "prior_entropy": c,
                    "majority_rate": acc[0],
                    "accuracy": acc[0],
                    "confidence": sure,
                }
            )
            msg = (
                f"Loss {fmt(med)} ≈ prior entropy H({short_p(p)})={c:.3f} and accuracy {acc[0]:.2%} ≈ majority rate "
                f"{acc[0]:.1%} (prior inferred from the accuracy plateau, {off:.1%} apart; confidence {sure}): "
                f"the model predicts the label prior."
            )
            return make(ID, "critical", _onset(steps, v, c, band), msg, evidence, ADVICE)
    if not (med > 0.5):
        return None
    k = int(round(math.exp(med)))
    if k < 2 or k > t.pb_ln_k_max:
        return None
    c = math.log(k)
    # A uniform prediction scores exactly ln K whatever the labels, and ln K values crowd together
    # (ln 11 - ln 10 = 0.095), so this band is much tighter than the Bernoulli one.
    band = max(min(t.pb_ln_k_rel_band * c, 0.05 / k), t.pb_noise_z * se)
    if abs(med - c) > band or drop > band:
        return None
    chance = acc is not None and abs(acc[0] - 1.0 / k) <= t.pb_acc_tol + 2 * acc[1]
    sure = "high" if chance else "medium"
    evidence.update({"classes": k, "prior_entropy": c, "confidence": sure})
    acc_part = ""
    if acc is not None:
        evidence["accuracy"] = acc[0]
        acc_part = f", accuracy {acc[0]:.1%}" + (f" ≈ chance 1/{k}" if chance else "")
    msg = (
        f"Loss {fmt(med)} ≈ ln {k} = {c:.4f}{acc_part}: the loss sits where a model predicting a uniform prior over "
        f"{k} classes sits (inferred from the plateau; confidence {sure})."
    )
    return make(ID, "critical", _onset(steps, v, c, band), msg, evidence, ADVICE)


def check(history: History, config: DoctorConfig) -> list[Finding]:
    t = config.thresholds
    prior = label_prior(history)
    f = _with_labels(history, t, prior) if prior is not None else _without_labels(history, t)
    return [f] if f is not None else []

"""Extreme or single-class labels, per batch or overall.

What it does:
    Binary labels: averages ``label/positive_fraction`` over every recorded batch. All batches
    single-class (mean 0 or 1) is critical; a mean below ``li_min_fraction`` (or above
    1 - ``li_min_fraction``) warns. Multiclass: ``label/classes`` stuck at 1 after ``li_min_batches``
    points is critical; one class holding more than 1 - ``li_min_fraction`` of
    ``label/fraction/<k>`` warns. Needs ``li_min_batches`` labelled batches.

Why it matters:
    With one class there is nothing to learn; with 1 positive in 100, predicting "negative" always
    scores 99% accuracy and a low loss, and a model easily settles there (see ``prior_baseline``).
    Extreme labels also point at label bugs: a threshold that marks every sample positive.

What to do:
    Check how labels are built (a rule like "any voxel > 0" can make every frame positive), then
    rebalance: a weighted sampler, ``pos_weight`` in BCEWithLogitsLoss, or focal loss, and judge the
    model with AUROC/AUPRC rather than accuracy.
"""

from __future__ import annotations

import numpy as np

from muvo_doctor.core.checks._common import finite, make
from muvo_doctor.core.config import DoctorConfig, Thresholds
from muvo_doctor.core.finding import Finding
from muvo_doctor.core.history import History

ID = "label_imbalance"

ADVICE = (
    "Check how labels are built (e.g. a rule that marks every sample positive), then rebalance with a "
    "weighted sampler, pos_weight or focal loss, and judge with AUROC/AUPRC rather than accuracy."
)


def check(history: History, config: DoctorConfig) -> list[Finding]:
    # A binary run records the positive share; a multi-class run the share of each class id.
    binary = finite(history, "label/positive_fraction")
    if binary is not None:
        return _positive_share(*binary, config.thresholds)
    return _one_class(history, config.thresholds) or _majority_class(history, config.thresholds)


def _positive_share(steps: np.ndarray, v: np.ndarray, t: Thresholds) -> list[Finding]:
    if len(v) < t.li_min_batches:
        return []
    p = float(np.clip(v.mean(), 0.0, 1.0))
    single = float(np.mean((v <= 0) | (v >= 1)))
    ev = {"positive_fraction": p, "batches": len(v), "single_class_batch_share": single}
    if p <= 0.0 or p >= 1.0:
        cls = "positive" if p >= 1.0 else "negative"
        msg = f"All {len(v)} recorded batches are {cls} only (label/positive_fraction = {p:.4g}): there is one class and nothing to learn."
        return [make(ID, "critical", int(steps[0]), msg, ev, ADVICE)]
    if p < t.li_min_fraction or p > 1 - t.li_min_fraction:
        rare = min(p, 1 - p)
        msg = (
            f"Labels are {p:.2%} positive over {len(v)} batches ({single:.0%} of batches hold a single class): "
            f"the rare class is 1 in {1 / rare:.0f}, beyond the 1 in {1 / t.li_min_fraction:.0f} limit."
        )
        return [make(ID, "warning", int(steps[0]), msg, ev, ADVICE)]
    return []


def _one_class(history: History, t: Thresholds) -> list[Finding]:
    cls = finite(history, "label/classes")
    if cls is None or len(cls[1]) < t.li_min_batches or float(cls[1].max()) > 1:
        return []
    msg = f"Only one label class was seen in {len(cls[1])} recorded batches (label/classes = 1): there is nothing to learn."
    return [make(ID, "critical", int(cls[0][0]), msg, {"classes": 1, "batches": len(cls[1])}, ADVICE)]


def _majority_class(history: History, t: Thresholds) -> list[Finding]:
    names = [n for n in history.names("label/fraction/") if n.rsplit("/", 1)[-1].isdigit()]
    means: dict[str, float] = {}
    first_step, count = 0, 0
    for n in names:
        g = finite(history, n)
        if g is None:
            continue
        first_step = int(g[0][0]) if not means else min(first_step, int(g[0][0]))
        means[n] = float(g[1].mean())
        count = max(count, len(g[1]))
    if len(means) < 2 or count < t.li_min_batches:
        return []
    top, total = max(means, key=means.__getitem__), sum(means.values())
    share = means[top] / total if total > 0 else 0.0
    if share <= 1 - t.li_min_fraction:
        return []
    msg = f"Class {top.rsplit('/', 1)[-1]} holds {share:.2%} of the labels over {count} batches: the other {len(means) - 1} classes are almost absent."
    return [make(ID, "warning", first_step, msg, {"majority_class": top, "majority_share": share}, ADVICE)]

"""Binary ranking metrics: AUROC, AUPRC (average precision) and FPR at 95% TPR, exact with ties.

All functions take 1-D scores and 0/1 labels as numpy arrays or torch tensors (any device, any dtype)
and compute in float64 numpy on the CPU. Higher score = more anomalous. An optional boolean ``mask``
selects the elements to score (point-level metrics over padded point tensors).

Definitions (the same as sklearn / the AnoVox benchmark, but without sklearn):
- ``auroc``: probability that a random positive scores above a random negative, ties counting 1/2
  (Mann-Whitney U with average ranks); equals the trapezoidal area under the ROC curve.
- ``auprc``: average precision, step-wise: sum over distinct thresholds of (R_k - R_{k-1}) * P_k,
  as ``sklearn.metrics.average_precision_score`` (no interpolation).
- ``fpr_at_95_tpr``: sweeping the threshold from the highest distinct score downwards (predict
  positive when score >= threshold), the false-positive rate at the first threshold whose TPR >= 0.95.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        arr = arr.reshape(-1) if arr.ndim > 1 and arr.size == max(arr.shape) else arr
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(arr.shape)}; flatten it or pass a mask")
    return arr


def _prepare(scores: ArrayLike, labels: ArrayLike, mask: ArrayLike | None) -> tuple[np.ndarray, np.ndarray]:
    """Returns (scores float64, labels bool) after masking, validated; raises ValueError on bad input."""
    s = _to_numpy(scores, "scores").astype(np.float64)
    y_raw = _to_numpy(labels, "labels").astype(np.float64)
    if s.shape != y_raw.shape:
        raise ValueError(f"scores and labels differ in length: {s.shape[0]} vs {y_raw.shape[0]}")
    if mask is not None:
        m = _to_numpy(mask, "mask").astype(bool)
        if m.shape != s.shape:
            raise ValueError(f"mask length {m.shape[0]} differs from scores length {s.shape[0]}")
        s, y_raw = s[m], y_raw[m]
    if s.size == 0:
        raise ValueError("no elements to score (empty input or all-False mask)")
    if not np.all(np.isfinite(s)):
        raise ValueError(
            f"scores contain {int((~np.isfinite(s)).sum())} non-finite values; fix the model output"
        )
    if not np.all((y_raw == 0) | (y_raw == 1)):
        bad = np.unique(y_raw[(y_raw != 0) & (y_raw != 1)])[:5].tolist()
        raise ValueError(f"labels must be 0 or 1, found {bad}; binarise them first")
    y = y_raw == 1
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        only = "positive" if n_pos else "negative"
        raise ValueError(
            f"only one class present ({y.size} {only} labels): AUROC/AUPRC/FPR95 need both; "
            "evaluate on a split that contains normal and anomalous samples"
        )
    return s, y


def _roc_points(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative TP and FP counts at each distinct threshold, highest first; thresholds returned too."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted, dtype=np.int64)
    fp = np.cumsum(~y_sorted, dtype=np.int64)
    # last index of each run of equal scores: predicting >= that score includes the whole tie group
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], s_sorted.size - 1]
    return tp[last], fp[last], s_sorted[last]


def auroc(scores: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks, ties count 1/2).

    Args:
        scores: 1-D scores, higher = more positive (numpy array or torch tensor on any device).
        labels: 1-D 0/1 labels of the same length.
        mask: optional 1-D boolean selection (e.g. ``point_mask.flatten()``).

    Returns:
        AUROC in [0, 1].

    Raises:
        ValueError: on mismatched shapes, non-finite scores, non-binary labels, or a single class.
    """
    s, y = _prepare(scores, labels, mask)
    # average ranks (1-based) handle ties exactly
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    starts = np.r_[0, np.nonzero(np.diff(s_sorted))[0] + 1]
    ends = np.r_[starts[1:], s.size]
    avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks[order] = np.repeat(avg, ends - starts)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def auprc(scores: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Average precision, step-wise as ``sklearn.metrics.average_precision_score``.

    Args:
        scores: 1-D scores, higher = more positive.
        labels: 1-D 0/1 labels.
        mask: optional 1-D boolean selection.

    Returns:
        Sum over distinct thresholds of (recall_k - recall_{k-1}) * precision_k, in [0, 1].

    Raises:
        ValueError: as ``auroc``.
    """
    s, y = _prepare(scores, labels, mask)
    tp, fp, _ = _roc_points(s, y)
    precision = tp / (tp + fp)
    recall = tp / tp[-1]
    d_recall = np.diff(np.r_[0.0, recall])
    return float(np.sum(d_recall * precision))


def fpr_at_95_tpr(scores: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None) -> float:
    """False-positive rate at the first (highest) threshold whose true-positive rate reaches 95%.

    AnoVox definition (``calculate_fpr95``), evaluated at the exact distinct scores instead of a
    0.01 grid, so scores need not lie in [0, 1].

    Args:
        scores: 1-D scores, higher = more positive.
        labels: 1-D 0/1 labels.
        mask: optional 1-D boolean selection.

    Returns:
        FPR in [0, 1]; lower is better.

    Raises:
        ValueError: as ``auroc``.
    """
    s, y = _prepare(scores, labels, mask)
    tp, fp, _ = _roc_points(s, y)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    # integer comparison avoids 0.95 float rounding: TPR >= 0.95  <=>  100*tp >= 95*n_pos
    k = int(np.argmax(100 * tp >= 95 * n_pos))
    return float(fp[k] / n_neg)


def binary_summary(scores: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None) -> dict[str, float]:
    """All binary metrics for logits in one dict.

    Args:
        scores: 1-D logits (accuracy thresholds them at 0, i.e. probability 0.5).
        labels: 1-D 0/1 labels.
        mask: optional 1-D boolean selection.

    Returns:
        ``{"auroc", "auprc", "fpr95", "acc", "positive_rate", "predicted_positive_rate", "n"}``:
        ``acc`` is the fraction with ``(score > 0) == label``, ``positive_rate`` the fraction of positive
        labels (the majority accuracy is ``max(p, 1 - p)``), ``predicted_positive_rate`` the fraction
        predicted positive.

    Raises:
        ValueError: as ``auroc``.
    """
    s, y = _prepare(scores, labels, mask)
    pred = s > 0
    return {
        "auroc": auroc(s, y),
        "auprc": auprc(s, y),
        "fpr95": fpr_at_95_tpr(s, y),
        "acc": float(np.mean(pred == y)),
        "positive_rate": float(np.mean(y)),
        "predicted_positive_rate": float(np.mean(pred)),
        "n": float(y.size),
    }


__all__ = ["auroc", "auprc", "binary_summary", "fpr_at_95_tpr"]

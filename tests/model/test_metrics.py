"""Metrics agree with plain reference implementations (pair counting, explicit threshold sweeps) to 1e-9."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from muvo_model.metrics import auprc, auroc, binary_summary, fpr_at_95_tpr


def ref_auroc(s: np.ndarray, y: np.ndarray) -> float:
    """O(n^2) pair counting: P(score_pos > score_neg) + 0.5 P(tie)."""
    pos, neg = s[y == 1], s[y == 0]
    wins = 0.0
    for p in pos:
        for n in neg:
            wins += 1.0 if p > n else 0.5 if p == n else 0.0
    return wins / (len(pos) * len(neg))


def ref_sweep(s: np.ndarray, y: np.ndarray) -> list[tuple[float, float, float]]:
    """(tpr, fpr, precision) at every distinct threshold, highest first, predicting score >= t."""
    out = []
    for t in sorted(set(s.tolist()), reverse=True):
        pred = s >= t
        tp = float(np.sum(pred & (y == 1)))
        fp = float(np.sum(pred & (y == 0)))
        out.append((tp / np.sum(y == 1), fp / np.sum(y == 0), tp / (tp + fp)))
    return out


def ref_ap(s: np.ndarray, y: np.ndarray) -> float:
    ap, prev_recall = 0.0, 0.0
    for recall, _, precision in ref_sweep(s, y):
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return ap


def ref_fpr95(s: np.ndarray, y: np.ndarray) -> float:
    for tpr, fpr, _ in ref_sweep(s, y):
        if tpr >= 0.95 - 1e-12:
            return fpr
    raise AssertionError("TPR never reaches 0.95")


def random_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = int(rng.integers(2, 80))
    # small integer range -> many ties between and within classes
    s = rng.integers(0, int(rng.integers(1, 6)) + 1, size=n).astype(np.float64)
    y = (rng.random(n) < rng.uniform(0.1, 0.9)).astype(np.int64)
    y[0], y[1] = 0, 1  # both classes present
    return s, y


def test_all_metrics_match_reference_on_random_inputs_with_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        s, y = random_case(rng)
        assert abs(auroc(s, y) - ref_auroc(s, y)) < 1e-9
        assert abs(auprc(s, y) - ref_ap(s, y)) < 1e-9
        assert abs(fpr_at_95_tpr(s, y) - ref_fpr95(s, y)) < 1e-9


def test_continuous_scores_match_reference() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        n = int(rng.integers(2, 200))
        y = (rng.random(n) < 0.3).astype(np.int64)
        y[0], y[1] = 0, 1
        s = rng.normal(size=n) + y
        assert abs(auroc(s, y) - ref_auroc(s, y)) < 1e-9
        assert abs(auprc(s, y) - ref_ap(s, y)) < 1e-9
        assert abs(fpr_at_95_tpr(s, y) - ref_fpr95(s, y)) < 1e-9


def test_known_values() -> None:
    # perfect separation
    assert auroc([0.1, 0.2, 0.8, 0.9], np.array([0, 0, 1, 1])) == 1.0
    assert auprc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert fpr_at_95_tpr(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 0.0
    # reversed
    assert auroc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 0.0
    assert fpr_at_95_tpr(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 1.0
    # all scores tied: chance AUROC, AP = prevalence, FPR95 = 1
    s, y = np.zeros(10), np.array([1, 0, 0, 0, 0, 1, 0, 0, 0, 0])
    assert auroc(s, y) == 0.5
    assert auprc(s, y) == pytest.approx(0.2, abs=1e-12)
    assert fpr_at_95_tpr(s, y) == 1.0
    # sklearn's documented example: average_precision_score([0,0,1,1],[0.1,0.4,0.35,0.8]) == 0.8333...
    assert auprc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.8333333333333333)
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)


def test_fpr95_threshold_is_first_reaching_95_percent() -> None:
    # 20 positives: 19/20 = 0.95 reached before the last positive; negatives interleaved below
    s = np.r_[np.arange(100, 81, -1), 50.0, 40.0, 1.0, 0.5]  # 19 high positives, then neg, neg, pos, neg
    y = np.r_[np.ones(19), 0, 0, 1, 0]
    assert fpr_at_95_tpr(s, y) == 0.0
    y2 = np.r_[np.ones(18), 0, 0, 1, 1, 0]  # 18/20 = 0.9 < 0.95: must go past 2 negatives
    assert fpr_at_95_tpr(s, y2) == pytest.approx(2 / 3)


def test_torch_inputs_bool_labels_and_mask() -> None:
    rng = np.random.default_rng(2)
    s, y = random_case(rng)
    st, yt = torch.tensor(s, dtype=torch.float32), torch.tensor(y, dtype=torch.bool)
    assert abs(auroc(st, yt) - ref_auroc(s, y)) < 1e-9
    # mask selects a subset: equal to scoring the subset directly
    s = np.r_[s, 99.0, -99.0]
    y = np.r_[y, 0, 1]
    mask = np.r_[np.ones(len(s) - 2, dtype=bool), False, False]
    assert auroc(torch.tensor(s), torch.tensor(y), mask=torch.tensor(mask)) == pytest.approx(
        ref_auroc(s[mask], y[mask]), abs=1e-9
    )
    assert auprc(s, y, mask=mask) == pytest.approx(ref_ap(s[mask], y[mask]), abs=1e-9)
    # (N, 1) column vectors are accepted
    assert auroc(torch.tensor(s)[:, None], torch.tensor(y)[:, None]) == pytest.approx(
        ref_auroc(s, y), abs=1e-9
    )


def test_one_class_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="only one class present"):
        auroc(np.array([0.1, 0.5]), np.array([0, 0]))
    with pytest.raises(ValueError, match="only one class present"):
        fpr_at_95_tpr(np.array([0.1, 0.5]), np.array([1, 1]))
    with pytest.raises(ValueError, match="only one class present"):
        auprc(np.array([0.1, 0.5, 0.7]), np.array([1, 0, 1]), mask=np.array([True, False, True]))


def test_bad_inputs_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        auroc(np.zeros(3), np.array([0, 1]))
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        auroc(np.zeros(3), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="non-finite"):
        auroc(np.array([0.0, np.nan]), np.array([0, 1]))
    with pytest.raises(ValueError, match="empty"):
        auroc(np.zeros(2), np.array([0, 1]), mask=np.zeros(2, dtype=bool))
    with pytest.raises(ValueError, match="1-D"):
        auroc(np.zeros((2, 2)), np.zeros((2, 2)))


def test_binary_summary() -> None:
    logits = torch.tensor([-2.0, -1.0, 0.5, 3.0, -0.5, 1.0])
    labels = torch.tensor([0, 0, 1, 1, 1, 0])
    out = binary_summary(logits, labels)
    assert out["acc"] == pytest.approx(4 / 6)
    assert out["positive_rate"] == pytest.approx(0.5)
    assert out["predicted_positive_rate"] == pytest.approx(0.5)
    assert out["n"] == 6
    assert out["auroc"] == pytest.approx(ref_auroc(logits.numpy().astype(np.float64), labels.numpy()))
    assert set(out) == {"auroc", "auprc", "fpr95", "acc", "positive_rate", "predicted_positive_rate", "n"}

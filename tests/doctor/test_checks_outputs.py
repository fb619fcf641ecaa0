"""Output, loss-input and label checks: thresholds and the numbers in the message."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import judge

from muvo_doctor.core.checks import constant_output, label_imbalance, wrong_loss_input
from muvo_doctor.core.config import DoctorConfig

CFG = DoctorConfig()
T = CFG.thresholds
N = 100
RNG = np.random.default_rng(0)
LEARNING = np.linspace(0.7, 0.2, N) + RNG.normal(0, 0.01, N)
STUCK = 0.6931 + RNG.normal(0, 0.01, N)


# ---------------------------------------------------------------- constant_output
@pytest.mark.parametrize(
    ("std", "mean", "loss", "severity"),
    [
        (T.co_abs_std * 0.5, 0.0, STUCK, "critical"),
        (T.co_abs_std * 0.5, 0.0, LEARNING, "warning"),
        (T.co_abs_std * 2, 0.0, STUCK, None),
        (5 * T.co_rel_std * 0.5, 5.0, STUCK, "critical"),  # relative to |mean| = 5
        (5 * T.co_rel_std * 2, 5.0, STUCK, None),
        (0.8, -1.0, LEARNING, None),
    ],
)
def test_constant_output(std: float, mean: float, loss: np.ndarray, severity: str | None) -> None:
    out = judge(constant_output, {"output/std": std, "output/mean": mean, "train/loss": loss}, n=N)
    assert [f.severity for f in out] == ([severity] if severity else [])
    if severity:
        assert f"{std:.4g}" in out[0].message


def test_constant_output_reads_apart_from_its_limit() -> None:
    # Just under the relative limit: at 4 digits both read 1.459e-06; the message shows them apart.
    mean = 0.014592
    std = T.co_rel_std * mean * 0.9975
    out = judge(constant_output, {"output/std": std, "output/mean": mean, "train/loss": STUCK}, n=N)
    assert len(out) == 1
    msg = out[0].message
    said = msg.split("(output/std) is ")[1].split(" ")[0]
    limit = msg.split("below ")[1].split(" ")[0]
    assert said != limit and float(said) < float(limit), msg
    assert f"{T.co_rel_std:g} x |mean|" in msg


@pytest.mark.parametrize(
    ("saturated", "loss", "found"),
    [(T.co_saturated + 0.02, STUCK, True), (T.co_saturated - 0.02, STUCK, False), (0.99, LEARNING, False)],
)
def test_saturation_counts_only_when_the_loss_fails(saturated: float, loss: np.ndarray, found: bool) -> None:
    out = judge(constant_output, {"output/std": 2.0, "output/saturated": saturated, "train/loss": loss}, n=N)
    assert bool(out) is found
    if found:
        assert out[0].severity == "critical" and f"{saturated:.0%}" in out[0].message


# ---------------------------------------------------------------- wrong_loss_input
@pytest.mark.parametrize(
    ("lo", "hi", "n", "found"),
    [
        (0.02, 0.97, T.wli_min_points, True),
        (0.02, 0.97, T.wli_min_points - 1, False),
        (-0.01, 0.97, 50, False),
        (0.02, 1.01, 50, False),
    ],
)
def test_probabilities_into_with_logits_loss(lo: float, hi: float, n: int, found: bool) -> None:
    out = judge(
        wrong_loss_input, {"loss_input/logits/min": lo, "loss_input/logits/max": hi, "train/loss": 0.7}, n=n
    )
    assert bool(out) is found
    if found:
        assert "0.02" in out[0].message and "0.97" in out[0].message


@pytest.mark.parametrize(("mx", "found"), [(T.wli_logprob_tol * 10, True), (0.0, False), (-0.1, False)])
def test_logits_into_nll(mx: float, found: bool) -> None:
    out = judge(wrong_loss_input, {"loss_input/logprobs/max": mx, "train/loss": LEARNING}, n=N)
    assert bool(out) is found


def test_wrong_loss_input_holds_only_while_the_recent_points_show_it() -> None:
    # Probabilities for 60 points, then the sigmoid is removed: logits leave [0, 1].
    lo = np.r_[np.full(60, 0.02), np.full(40, -2.5)]
    hi = np.r_[np.full(60, 0.97), np.full(40, 3.1)]
    series = {"loss_input/logits/min": lo, "loss_input/logits/max": hi, "train/loss": LEARNING}
    assert judge(wrong_loss_input, series, n=N) == []
    assert judge(
        wrong_loss_input, {k: v[:60] for k, v in series.items()}, n=60
    )  # while it held, it was found
    # The other way round: logits at first, probabilities for the last window (from step 40).
    series = {"loss_input/logits/min": lo[::-1], "loss_input/logits/max": hi[::-1], "train/loss": LEARNING}
    out = judge(wrong_loss_input, series, n=N)
    assert out and out[0].step == 40 and f"last {T.window} recorded steps" in out[0].message
    # NLL fed logits for the first 20 points, log-probabilities after.
    mx = np.r_[np.full(20, 2.0), np.full(80, -0.05)]
    assert judge(wrong_loss_input, {"loss_input/logprobs/max": mx, "train/loss": LEARNING}, n=N) == []
    assert judge(wrong_loss_input, {"loss_input/logprobs/max": mx[:30], "train/loss": LEARNING[:30]}, n=30)


# ---------------------------------------------------------------- label_imbalance
@pytest.mark.parametrize(
    ("p", "severity"),
    [
        (0.0, "critical"),
        (1.0, "critical"),
        (T.li_min_fraction * 0.5, "warning"),
        (1 - T.li_min_fraction * 0.5, "warning"),
        (T.li_min_fraction * 1.5, None),
        (0.1, None),
    ],
)
def test_label_imbalance(p: float, severity: str | None) -> None:
    out = judge(label_imbalance, {"label/positive_fraction": p}, n=N)
    assert [f.severity for f in out] == ([severity] if severity else [])
    if severity == "warning":
        assert f"{p:.2%}" in out[0].message


def test_label_imbalance_waits_for_batches() -> None:
    assert judge(label_imbalance, {"label/positive_fraction": 0.0}, n=T.li_min_batches - 1) == []
    assert (
        judge(label_imbalance, {"label/positive_fraction": 0.0}, n=T.li_min_batches)[0].severity == "critical"
    )


def test_single_multiclass_label() -> None:
    out = judge(label_imbalance, {"label/classes": 1.0}, n=N)
    assert out[0].severity == "critical"
    out = judge(label_imbalance, {"label/fraction/0": 0.995, "label/fraction/1": 0.005}, n=N)
    assert out[0].severity == "warning" and "99.50%" in out[0].message

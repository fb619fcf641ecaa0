"""prior_baseline with a held-out AUROC as a second witness: a shorter stay at the prior suffices."""

from __future__ import annotations

import numpy as np

from muvo_doctor.core.checks import prior_baseline
from muvo_doctor.core.checks._common import bernoulli_entropy
from muvo_doctor.core.config import DoctorConfig
from muvo_doctor.core.history import History

CFG = DoctorConfig()
T = CFG.thresholds


def at_prior(n: int, aurocs: list[float]) -> History:
    """n steps of a model predicting a 10% prior (loss, accuracy, labels), and held-out evaluations."""
    rng = np.random.default_rng(0)
    h = History()
    for i in range(n):
        f = rng.binomial(32, 0.1) / 32
        h.add_point("label/positive_fraction", i, f)
        # the loss of predicting p = 0.1 on a batch with f positives, plus a little noise
        h.add_point("train/loss", i, -f * np.log(0.1) - (1 - f) * np.log(0.9) + rng.normal(0, 0.003))
        h.add_point("train/acc", i, 1 - f)
    for j, a in enumerate(aurocs):
        h.add_point("val/auroc", (j + 1) * (n // (len(aurocs) + 1)), a)
    return h


def test_three_evaluations_at_chance_shorten_the_window() -> None:
    n = T.pb_window_heldout
    assert T.pb_window_heldout < T.pb_window
    (f,) = prior_baseline.check(at_prior(n, [0.45, 0.44, 0.45]), CFG)
    assert f.severity == "critical" and "prior entropy H(" in f.message and "AUROC 0.450" in f.message
    assert abs(f.evidence["prior_entropy"] - bernoulli_entropy(0.1)) < 0.02
    # One point short of the window: not yet.
    assert prior_baseline.check(at_prior(n - 1, [0.45, 0.44, 0.45]), CFG) == []


def test_without_the_held_out_witness_the_full_window_is_needed() -> None:
    n = T.pb_window_heldout
    assert prior_baseline.check(at_prior(n, []), CFG) == []
    assert prior_baseline.check(at_prior(n, [0.45, 0.44]), CFG) == []  # only two evaluations
    assert prior_baseline.check(at_prior(n, [0.45, 0.62, 0.70]), CFG) == []  # the scores rank
    assert [f.severity for f in prior_baseline.check(at_prior(T.pb_window, []), CFG)] == ["critical"]

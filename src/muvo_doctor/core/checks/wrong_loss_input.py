"""A with-logits loss receives probabilities, or a log-probability loss receives logits.

What it does:
    Reads the range of the input of with-logits losses (``loss_input/logits/min`` and ``/max``;
    BCEWithLogitsLoss, binary_cross_entropy_with_logits, CrossEntropyLoss): when every one of the
    last ``window`` points (at least ``wli_min_points``) lies inside [0, 1], the loss is being fed
    probabilities (a sigmoid or softmax applied twice). Reads ``loss_input/logprobs/max`` (the input
    of NLLLoss): above ``wli_logprob_tol`` at any of the last ``window`` points, it cannot be
    log-probabilities, so raw logits are fed to NLL. Only the recent window counts: once the input is
    right again the finding no longer holds. A warning; critical when the loss is not improving.

Why it matters:
    Probabilities in [0, 1] passed as logits squash every prediction to sigmoid(0..1) = 0.5..0.73:
    the model can barely express a negative and gradients shrink. Logits passed to NLLLoss make the
    loss unbounded below: it "improves" forever while the model learns nothing.

What to do:
    Remove the ``sigmoid``/``softmax`` before ``BCEWithLogitsLoss``/``CrossEntropyLoss`` (apply it
    only for metrics and inference), or add ``log_softmax`` before ``NLLLoss``.
"""

from __future__ import annotations

import numpy as np

from muvo_doctor.core.checks._common import fmt, mechanism, outcome_failure, series
from muvo_doctor.core.config import DoctorConfig
from muvo_doctor.core.finding import Finding
from muvo_doctor.core.history import History

ID = "wrong_loss_input"

ADVICE = (
    "Remove the sigmoid/softmax in front of BCEWithLogitsLoss/CrossEntropyLoss (use it only for metrics), "
    "or apply log_softmax before NLLLoss."
)


def _trailing_start(steps: np.ndarray, ok: np.ndarray) -> int:
    """The step where the final run of ``ok`` points begins."""
    not_ok = np.flatnonzero(~ok)
    return int(steps[not_ok[-1] + 1]) if len(not_ok) else int(steps[0])


def check(history: History, config: DoctorConfig) -> list[Finding]:
    t = config.thresholds
    # Judged over the recent window only: a finding holds while the current points show it, and a
    # fixed loss (or logits that left [0, 1]) ends it.
    window = max(t.window, t.wli_min_points)
    lo, hi = series(history, "loss_input/logits/min"), series(history, "loss_input/logits/max")
    if lo is not None and hi is not None:
        n = min(len(lo), len(hi))
        a_all, b_all = lo.values[-n:], hi.values[-n:]
        ok = np.isfinite(a_all) & np.isfinite(b_all) & (a_all >= 0) & (b_all <= 1)
        k = min(n, window)
        if k >= t.wli_min_points and ok[-k:].all():
            a, b = a_all[-k:], b_all[-k:]
            failing = outcome_failure(history, t)
            what = (
                f"The input of the with-logits loss stayed inside [0, 1] at all of the last {k} recorded steps "
                f"(min {fmt(float(a.min()))}, max {fmt(float(b.max()))}): it receives probabilities, "
                f"not logits"
            )
            ev = {"logits_min": float(a.min()), "logits_max": float(b.max()), "points": k}
            return [mechanism(ID, _trailing_start(lo.steps[-n:], ok), what, failing, ev, ADVICE)]
    lp = series(history, "loss_input/logprobs/max")
    if lp is not None:
        v, st = lp.values[-window:], lp.steps[-window:]
        bad = np.isfinite(v) & (v > t.wli_logprob_tol)
        if bad.any():
            failing = outcome_failure(history, t)
            i = int(np.argmax(bad))
            peak = float(v[bad].max())
            what = (
                f"The input of NLLLoss reached {fmt(peak)} > 0 at {int(bad.sum())} of the last {len(v)} recorded "
                f"steps (first at step {int(st[i])}): log-probabilities are never positive, so it receives logits"
            )
            ev = {"logprobs_max": peak, "bad_points": int(bad.sum()), "points": len(v)}
            return [mechanism(ID, int(st[i]), what, failing, ev, ADVICE)]
    return []

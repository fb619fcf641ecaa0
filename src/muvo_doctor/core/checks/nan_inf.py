"""NaN or Inf in the loss, gradients, outputs or parameters.

What it does:
    Looks for non-finite values in every loss series, the gradient norms, the model outputs and the
    recorder's ``nonfinite/*`` counters. Critical when the loss is non-finite at the end of the run or
    when most recent points are non-finite; a few isolated non-finite gradients (an fp16 GradScaler
    skipping a step) only warn. A loss at a saturation constant counts as infinite:
    -ln(FLT_MIN) = 87.3365 (float32) or -ln(DBL_MIN) = 708.396 (float64) is what a cross-entropy prints
    when the probability of the true class underflowed to the smallest normal number (Caffe's
    SoftmaxWithLoss clamps log(0) there); no finite model output gives exactly that value twice.

Why it matters:
    One NaN poisons every weight it touches: after it, the run computes nothing. It usually means an
    exploding learning rate, a log of zero, a division by a zero-size batch, or overflow in fp16.

What to do:
    Find the first step it happened (the finding's step). Lower the learning rate or clip gradients
    (``torch.nn.utils.clip_grad_norm_``), add an epsilon inside logs and divisions, use bf16 instead
    of fp16, and run a few steps under ``torch.autograd.detect_anomaly()`` to find the operation.
"""

from __future__ import annotations

import numpy as np

from muvo_doctor.core.checks._common import make, series
from muvo_doctor.core.config import DoctorConfig
from muvo_doctor.core.finding import Finding
from muvo_doctor.core.history import History

ID = "nan_inf"

# -ln of the smallest normal float32 / float64: a log-probability that underflowed, clamped.
SATURATION = {"-ln(FLT_MIN)": 87.33654475055310, "-ln(DBL_MIN)": 708.3964185322641}
_SAT_TOL = 2e-4  # relative: printed with 4-6 significant decimals (87.3365, 87.3366)


def _saturated(values: np.ndarray) -> tuple[np.ndarray, str | None]:
    """Mask of loss points at a saturation constant, and the constant's name."""
    for label, c in SATURATION.items():
        hit = np.abs(values - c) <= _SAT_TOL * c
        if hit.any():
            return hit, label
    return np.zeros(len(values), dtype=bool), None


ADVICE = (
    "Find the first bad step; lower the learning rate or clip gradients, guard logs/divisions with an "
    "epsilon, prefer bf16 over fp16, and localise it with torch.autograd.detect_anomaly()."
)


def _watched(history: History) -> list[str]:
    names = [n for n in history.names() if "loss" in n.split("/")[-1] or n.split("/")[-1].endswith("loss")]
    names += history.names("grad/norm/") + history.names("output/") + history.names("val/")
    names += history.names("train/")
    return sorted(set(n for n in names if not n.startswith("printed/")))


def check(history: History, config: DoctorConfig) -> list[Finding]:
    t = config.thresholds
    worst: tuple[int, str, int, int, bool] | None = None  # (first step, name, count, n, critical)
    saturated: dict[str, str] = {}  # loss series that hit a saturation constant -> its name
    hits: list[str] = []
    for name in _watched(history):
        s = series(history, name)
        if s is None:
            continue
        bad = ~np.isfinite(s.values)
        is_loss = "loss" in name
        if is_loss:
            sat, label = _saturated(s.values)
            if label is not None:
                bad = bad | sat
                saturated[name] = label
        if not bad.any():
            continue
        count = int(bad.sum())
        first = int(s.steps[np.argmax(bad)])
        recent = bad[-t.min_points :]
        critical = bool(bad[-1] and is_loss) or recent.mean() >= t.nan_critical_fraction
        hits.append(name)
        if worst is None or (critical, -first) > (worst[4], -worst[0]):
            worst = (first, name, count, len(s), critical)
    # Recorder counters: count of non-finite elements per window.
    for name in history.names("nonfinite/"):
        s = series(history, name)
        if s is None:
            continue
        bad = np.nan_to_num(s.values, nan=1.0, posinf=1.0) > 0
        if not bad.any():
            continue
        first = int(s.steps[np.argmax(bad)])
        recent = bad[-t.min_points :]
        critical = recent.mean() >= t.nan_critical_fraction or (name == "nonfinite/loss" and bool(bad[-1]))
        hits.append(name)
        if worst is None or (critical, -first) > (worst[4], -worst[0]):
            worst = (first, name, int(bad.sum()), len(s), critical)
    if worst is None:
        return []
    first, name, count, n, critical = worst
    others = [h for h in hits if h != name]
    also = f" (also in {', '.join(others[:4])}{' ...' if len(others) > 4 else ''})" if others else ""
    sat = saturated.get(name)
    what = (
        f"NaN/Inf (or {SATURATION[sat]:.4f} = {sat}, a log of an underflowed probability)"
        if sat
        else "NaN/Inf"
    )
    msg = (
        f"{name} became {what} at step {first}: {count} of {n} points are non-finite{also}"
        + ("" if critical else "; the run recovered, so this looks like isolated overflow")
        + "."
    )
    return [
        make(
            ID,
            "critical" if critical else "warning",
            first,
            msg,
            {
                "series": name,
                "first_step": first,
                "nonfinite_points": count,
                "points": n,
                "also": others,
                "saturation": sat,
            },
            ADVICE,
        )
    ]

"""NaN or Inf in the loss, gradients, outputs or parameters.

What it does:
    Looks for non-finite values in every loss series, the gradient norms, the model outputs and the
    recorder's ``nonfinite/*`` counters. Critical when the loss is non-finite at the end of the run or
    when most recent points are non-finite; a few isolated non-finite gradients (an fp16 GradScaler
    skipping a step) only warn.

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

from muvo_doctor.checks._common import make, series
from muvo_doctor.config import DoctorConfig
from muvo_doctor.finding import Finding
from muvo_doctor.history import History

ID = "nan_inf"

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
    hits: list[str] = []
    for name in _watched(history):
        s = series(history, name)
        if s is None:
            continue
        bad = ~np.isfinite(s.values)
        if not bad.any():
            continue
        count = int(bad.sum())
        first = int(s.steps[np.argmax(bad)])
        recent = bad[-t.min_points :]
        is_loss = "loss" in name
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
    msg = (
        f"{name} became NaN/Inf at step {first}: {count} of {n} points are non-finite{also}"
        + ("" if critical else "; the run recovered, so this looks like isolated overflow")
        + "."
    )
    return [
        make(
            ID,
            "critical" if critical else "warning",
            first,
            msg,
            {"series": name, "first_step": first, "nonfinite_points": count, "points": n, "also": others},
            ADVICE,
        )
    ]

"""Mechanism checks (gradients, parameters): thresholds, and escalation only when the outcome fails."""

from __future__ import annotations

import numpy as np
import pytest

from muvo_doctor.checks import exploding_gradients, frozen_parameters, stale_gradients, vanishing_gradients
from muvo_doctor.config import DoctorConfig
from muvo_doctor.finding import Finding
from muvo_doctor.history import History

CFG = DoctorConfig()
T = CFG.thresholds
N = 120


def run(mod, named: dict | None = None, **series) -> list[Finding]:
    h = History()
    series = {k.replace("__", "/"): v for k, v in series.items()} | (named or {})
    for name, values in series.items():
        for i, v in enumerate(np.broadcast_to(np.asarray(values, dtype=float), (N,))):
            h.add_point(name, i, float(v))
    return mod.check(h, CFG)


RNG = np.random.default_rng(0)
LEARNING = np.linspace(0.7, 0.2, N) + RNG.normal(0, 0.01, N)
STUCK = 0.6931 + RNG.normal(0, 0.01, N)


# ---------------------------------------------------------------- vanishing_gradients
@pytest.mark.parametrize(
    ("ratio", "found"),
    [(T.vg_ratio * 0.5, True), (T.vg_ratio * 2, False)],
)
def test_vanishing_ratio_threshold(ratio: float, found: bool) -> None:
    loud = 0.05  # quiet module: 0.05 * ratio, well under vg_abs
    out = run(
        vanishing_gradients,
        {"grad/norm/enc.0": loud * ratio, "grad/norm/enc.1": loud * ratio, "grad/norm/head.0": loud},
        train__loss=STUCK,
    )
    assert bool(out) is found
    if found:
        f = out[0]
        assert f.severity == "critical"  # the loss is stuck too
        assert f"{loud * ratio:.4g}" in f.message and "head.0" in f.message


def test_vanishing_absolute_floor_keeps_large_quiet_layers_quiet() -> None:
    # ratio 1e-4, but the quiet module's norm (1e-3) is above vg_abs: not vanishing.
    out = run(vanishing_gradients, train__loss=STUCK, grad__norm__a=1e-3, grad__norm__b=10.0)
    assert out == []


def test_one_quiet_layer_in_a_learning_run_is_info_not_dead() -> None:
    out = run(
        vanishing_gradients,
        {"grad/norm/enc.0": 1e-7, "grad/norm/enc.1": 0.1, "grad/norm/enc.2": 0.1, "grad/norm/head.0": 0.2},
        train__loss=LEARNING,
    )
    assert [f.severity for f in out] == ["info"]


def test_most_layers_quiet_in_a_learning_run_warns() -> None:
    out = run(
        vanishing_gradients, train__loss=LEARNING, grad__norm__a=1e-7, grad__norm__b=1e-7, grad__norm__c=0.2
    )
    assert [f.severity for f in out] == ["warning"]


def test_total_norm_vanished() -> None:
    out = run(vanishing_gradients, train__loss=STUCK, grad__norm__total=1e-9)
    assert out[0].severity == "critical" and "1e-09" in out[0].message


def test_update_ratio_fallback() -> None:
    out = run(vanishing_gradients, train__loss=STUCK, update__ratio__a=1e-9, update__ratio__b=1e-3)
    assert out and "update/ratio" in out[0].message


# ---------------------------------------------------------------- exploding_gradients
@pytest.mark.parametrize(("growth", "found"), [(T.eg_growth * 1.5, True), (T.eg_growth * 0.5, False)])
def test_exploding_growth_threshold(growth: float, found: bool) -> None:
    norm = np.r_[np.ones(60), np.full(60, growth)]
    out = run(exploding_gradients, train__loss=LEARNING, grad__norm__total=norm)
    assert bool(out) is found
    if found:
        assert out[0].severity == "warning" and out[0].step == 60 and f"{growth:.0f}x" in out[0].message


def test_exploding_absolute() -> None:
    out = run(exploding_gradients, train__loss=STUCK, grad__norm__total=T.eg_abs * 2)
    assert out[0].severity == "critical" and "20000" in out[0].message


# ---------------------------------------------------------------- frozen_parameters
@pytest.mark.parametrize(
    ("signal", "fraction", "loss", "severity"),
    [
        ("param__frozen", 1.0, STUCK, "critical"),
        ("param__frozen", 1.0, LEARNING, "warning"),
        ("param__no_grad", T.frozen_min_fraction * 1.2, LEARNING, "warning"),
        ("param__no_grad", T.frozen_min_fraction * 0.8, LEARNING, None),
        ("param__not_in_optimizer", 0.5, STUCK, "warning"),
        ("param__zero_lr", 1.0, STUCK, "critical"),
    ],
)
def test_frozen_fractions(signal: str, fraction: float, loss: np.ndarray, severity: str | None) -> None:
    out = run(frozen_parameters, train__loss=loss, **{signal: fraction})
    assert [f.severity for f in out] == ([severity] if severity else [])
    if severity:
        assert f"{fraction:.0%}" in out[0].message


def test_zero_learning_rate() -> None:
    assert run(frozen_parameters, train__loss=STUCK, optim__lr=0.0)[0].severity == "critical"
    # warm-up from 0 is normal
    assert run(frozen_parameters, train__loss=LEARNING, optim__lr=np.linspace(0, 1e-3, N)) == []


def test_losses_repeating_every_epoch_mean_frozen_weights() -> None:
    epoch = np.random.default_rng(1).uniform(0.3, 0.9, 12).round(6)
    loss = np.tile(epoch, 10)
    out = run(frozen_parameters, train__loss=loss)
    assert out and "every 12 points" in out[0].message
    # the same values shuffled every epoch do not repeat at a fixed lag
    rng = np.random.default_rng(2)
    shuffled = np.concatenate([rng.permutation(epoch) for _ in range(10)])
    assert run(frozen_parameters, train__loss=shuffled) == []


# ---------------------------------------------------------------- stale_gradients
@pytest.mark.parametrize(("stale", "found"), [(0.9, True), (0.1, False)])
def test_stale_flag(stale: float, found: bool) -> None:
    flags = (np.arange(N) % 10 < stale * 10).astype(float)
    out = run(stale_gradients, train__loss=LEARNING, grad__stale=flags)
    assert bool(out) is found
    if found:
        assert out[0].severity == "warning" and "90%" in out[0].message


def test_linear_gradient_growth_with_a_stuck_loss() -> None:
    out = run(stale_gradients, train__loss=STUCK, grad__norm__total=np.linspace(1, 20, N))
    assert out[0].severity == "critical" and "20" in out[0].message
    assert run(stale_gradients, train__loss=LEARNING, grad__norm__total=np.linspace(1, 20, N)) == []
    assert run(stale_gradients, train__loss=STUCK, grad__norm__total=np.linspace(1, 3, N)) == []


def test_one_quiet_layer_in_a_failing_run_is_only_a_warning() -> None:
    out = run(
        vanishing_gradients,
        {"grad/norm/enc.0": 0.0, "grad/norm/enc.1": 0.1, "grad/norm/enc.2": 0.1, "grad/norm/head.0": 0.2},
        train__loss=STUCK,
    )
    assert [f.severity for f in out] == ["warning"]


def test_auroc_at_chance_escalates_a_mechanism() -> None:
    h = History()
    for i in range(N):
        h.add_point("train/loss", i, float(LEARNING[i]))
        h.add_point("grad/norm/total", i, 1e-9)
        if i % 20 == 19:
            h.add_point("val/auroc", i, 0.52)
    out = vanishing_gradients.check(h, CFG)
    assert out[0].severity == "critical" and "AUROC is at chance (0.520)" in out[0].message

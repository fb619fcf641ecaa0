"""Mechanism checks (gradients, parameters): thresholds, and escalation only when the outcome fails."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import judge

from muvo_doctor.core.checks import (
    exploding_gradients,
    frozen_parameters,
    stale_gradients,
    vanishing_gradients,
)
from muvo_doctor.core.config import DoctorConfig
from muvo_doctor.core.finding import Finding
from muvo_doctor.core.history import History

CFG = DoctorConfig()
T = CFG.thresholds
N = 120


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
    out = judge(
        vanishing_gradients,
        {
            "train/loss": STUCK,
            "grad/norm/enc.0": loud * ratio,
            "grad/norm/enc.1": loud * ratio,
            "grad/norm/enc.2": loud,
        },
        n=N,
    )
    assert bool(out) is found
    if found:
        f = out[0]
        assert f.severity == "critical"  # the loss is stuck too
        assert f"{loud * ratio:.4g}" in f.message and "enc.2" in f.message and "kind enc.*" in f.message


def test_vanishing_absolute_floor_keeps_large_quiet_layers_quiet() -> None:
    # ratio 1e-4, but the quiet module's norm (1e-3) is above vg_abs: not vanishing.
    out = judge(vanishing_gradients, {"train/loss": STUCK, "grad/norm/a.0": 1e-3, "grad/norm/a.1": 10.0}, n=N)
    assert out == []


def test_one_quiet_layer_in_a_learning_run_is_info_not_dead() -> None:
    out = judge(
        vanishing_gradients,
        {
            "train/loss": LEARNING,
            "grad/norm/enc.0": 1e-7,
            "grad/norm/enc.1": 0.1,
            "grad/norm/enc.2": 0.1,
            "grad/norm/head.0": 0.2,
        },
        n=N,
    )
    assert [f.severity for f in out] == ["info"]


QUIET_STACK = {"grad/norm/fc1": 1e-7, "grad/norm/fc2": 1e-7, "grad/norm/fc3": 0.2}


def test_most_layers_quiet_in_a_learning_run_is_info() -> None:
    # Outcome before mechanism: quiet early layers of a run whose loss falls are not an alarm.
    out = judge(vanishing_gradients, {"train/loss": LEARNING, **QUIET_STACK}, n=N)
    assert [f.severity for f in out] == ["info"]
    assert "2 of 3 modules" in out[0].message and "while the loss falls" in out[0].message


def test_most_layers_quiet_warns_when_learning_stalls() -> None:
    # 60 loss points: progress() says it stalls; the long window (lnd_min_points) is not reached, so
    # the outcome has not failed yet: a warning, not critical.
    h = History()
    for i in range(60):
        h.add_point("train/loss", i, float(STUCK[i]))
        for name, v in QUIET_STACK.items():
            h.add_point(name, i, v)
    out = vanishing_gradients.check(h, CFG)
    assert [f.severity for f in out] == ["warning"]
    assert "the loss is not improving" in out[0].message


def test_most_layers_quiet_warns_when_the_output_ignores_the_input() -> None:
    # The loss falls (another head learns) but this output is the same for every input.
    out = judge(
        vanishing_gradients,
        {"train/loss": LEARNING, "output/std": 1e-8, "output/mean": 0.3, **QUIET_STACK},
        n=N,
    )
    assert [f.severity for f in out] == ["warning"]
    assert "output is the same for every input" in out[0].message


def test_modules_of_different_kinds_are_not_compared() -> None:
    # A healthy tiny BERT: attention query/key gradients ~1e-5 of the classifier's, alike in every
    # layer. Normal for their kind: nothing is quiet, even while the loss is flat.
    bert = {
        "grad/norm/bert.encoder.layer.0.attention.self.query": 8e-6,
        "grad/norm/bert.encoder.layer.1.attention.self.query": 5e-6,
        "grad/norm/bert.encoder.layer.0.attention.self.key": 7e-6,
        "grad/norm/bert.encoder.layer.1.attention.self.key": 6e-6,
        "grad/norm/bert.encoder.layer.0.output.dense": 0.05,
        "grad/norm/bert.encoder.layer.1.output.dense": 0.08,
        "grad/norm/classifier": 0.23,
    }
    assert judge(vanishing_gradients, {"train/loss": LEARNING, **bert}, n=N) == []
    assert judge(vanishing_gradients, {"train/loss": STUCK, **bert}, n=N) == []
    # The same query norm in one layer only (the other layer's is 1000x larger) is quiet for its kind.
    stack = bert | {"grad/norm/bert.encoder.layer.1.attention.self.query": 8e-6 / (T.vg_ratio * 0.9)}
    out = judge(vanishing_gradients, {"train/loss": STUCK, **stack}, n=N)
    assert out and "layer.0.attention.self.query" in out[0].message
    near = bert | {"grad/norm/bert.encoder.layer.1.attention.self.query": 8e-6 / (T.vg_ratio * 1.1)}
    assert judge(vanishing_gradients, {"train/loss": STUCK, **near}, n=N) == []


def test_total_norm_vanished() -> None:
    out = judge(vanishing_gradients, {"train/loss": STUCK, "grad/norm/total": 1e-9}, n=N)
    assert out[0].severity == "critical" and "1e-09" in out[0].message


def test_update_ratio_fallback() -> None:
    out = judge(
        vanishing_gradients, {"train/loss": STUCK, "update/ratio/a.0": 1e-9, "update/ratio/a.1": 1e-3}, n=N
    )
    assert out and "update/ratio" in out[0].message


# ---------------------------------------------------------------- exploding_gradients
@pytest.mark.parametrize(("growth", "found"), [(T.eg_growth * 1.5, True), (T.eg_growth * 0.5, False)])
def test_exploding_growth_threshold(growth: float, found: bool) -> None:
    norm = np.r_[np.ones(60), np.full(60, growth)]
    out = judge(exploding_gradients, {"train/loss": LEARNING, "grad/norm/total": norm}, n=N)
    assert bool(out) is found
    if found:
        assert out[0].severity == "warning" and out[0].step == 60 and f"{growth:.0f}x" in out[0].message


def test_exploding_absolute() -> None:
    out = judge(exploding_gradients, {"train/loss": STUCK, "grad/norm/total": T.eg_abs * 2}, n=N)
    assert out[0].severity == "critical" and "20000" in out[0].message


# ---------------------------------------------------------------- frozen_parameters
@pytest.mark.parametrize(
    ("signal", "fraction", "loss", "severity"),
    [
        ("param/frozen", 1.0, STUCK, "critical"),
        ("param/frozen", 1.0, LEARNING, "warning"),
        ("param/no_grad", T.frozen_min_fraction * 1.2, LEARNING, "warning"),
        ("param/no_grad", T.frozen_min_fraction * 0.8, LEARNING, None),
        ("param/not_in_optimizer", 0.5, STUCK, "warning"),
        ("param/zero_lr", 1.0, STUCK, "critical"),
    ],
)
def test_frozen_fractions(signal: str, fraction: float, loss: np.ndarray, severity: str | None) -> None:
    out = judge(frozen_parameters, {"train/loss": loss, signal: fraction}, n=N)
    assert [f.severity for f in out] == ([severity] if severity else [])
    if severity:
        assert f"{fraction:.0%}" in out[0].message


def test_zero_learning_rate() -> None:
    assert judge(frozen_parameters, {"train/loss": STUCK, "optim/lr": 0.0}, n=N)[0].severity == "critical"
    # warm-up from 0 is normal
    assert judge(frozen_parameters, {"train/loss": LEARNING, "optim/lr": np.linspace(0, 1e-3, N)}, n=N) == []


def sampled(loss: np.ndarray, every: int = 10, upto: int | None = None, **signals) -> list[Finding]:
    """A run whose loss is recorded every step and the parameter signals every ``every`` steps (as the
    recorder samples them); ``signals`` map a name to a function of the step. Judged up to ``upto``."""
    h = History()
    for i in range(len(loss) if upto is None else upto + 1):
        h.add_point("train/loss", i, float(loss[i]))
        if i % every == 0:
            for name, f in signals.items():
                h.add_point(name.replace("__", "/"), i, float(f(i)))
    return frozen_parameters.check(h, CFG)


# What the recorder measured at step 0 of healthy framework runs: Lightning computes the gradients
# inside optimizer.step(closure) (none exist before it); Hugging Face warms the learning rate up from 0.
LIGHTNING_START = {
    "param__no_grad": lambda i: 1.0 if i == 0 else 0.0,
    "param__frozen": lambda i: 0.0,
    "optim__lr": lambda i: 0.01,
}
HF_WARMUP = {
    "optim__lr": lambda i: 2e-3 * min(1.0, i / 10),
    "param__zero_lr": lambda i: 1.0 if i == 0 else 0.0,
    "param__frozen": lambda i: 1.0 if i == 0 else 0.0,
    "param__no_grad": lambda i: 0.0,
}


@pytest.mark.parametrize("start", [LIGHTNING_START, HF_WARMUP], ids=["lightning-closure", "hf-warmup"])
@pytest.mark.parametrize("upto", [10, 20, 50, 119])
def test_first_steps_without_gradients_or_lr_are_not_frozen_parameters(start: dict, upto: int) -> None:
    assert sampled(LEARNING, upto=upto, **start) == []
    assert sampled(STUCK, upto=upto, **start) == []


def test_lr_zero_for_the_whole_run_is_the_critical_cause() -> None:
    zero = {"optim__lr": lambda i: 0.0, "param__zero_lr": lambda i: 1.0, "param__frozen": lambda i: 1.0}
    zero |= {"param__no_grad": lambda i: 0.0}
    out = sampled(STUCK, **zero)
    assert [f.severity for f in out] == ["critical"]
    msg = out[0].message
    assert msg.startswith("The learning rate is 0 at all 12 recorded steps (steps 0-110, optim/lr)")
    assert "100% of trainable parameter elements did not change" in msg and "not improving" in msg
    assert "gradient" not in msg and "pos_weight" not in msg  # only what is true of this run
    assert out[0].evidence["lr"] == 0.0
    # A held-out AUROC of the untrained model (unchanged at 0.69) does not veto: nothing can move.
    h = History()
    for i in range(N):
        h.add_point("train/loss", i, float(STUCK[i]))
        if i % 10 == 0:
            for name, f in zero.items():
                h.add_point(name.replace("__", "/"), i, f(i))
        if i % 20 == 19:
            h.add_point("val/auroc", i, 0.69)
    assert [f.severity for f in frozen_parameters.check(h, CFG)] == ["critical"]
    # lr 0 with a loss that still falls (something else moves it): a warning, never dead.
    assert [f.severity for f in sampled(LEARNING, **zero)] == ["warning"]


@pytest.mark.parametrize(
    ("observed", "found"), [(T.frozen_min_observed, True), (T.frozen_min_observed - 1, False)]
)
def test_lr_zero_needs_frozen_min_observed_steps(observed: int, found: bool) -> None:
    out = sampled(STUCK, every=100 // observed + 1, upto=99, optim__lr=lambda i: 0.0)
    assert bool(out) is found


def test_lr_decaying_to_zero_at_the_end_is_not_frozen() -> None:
    assert (
        sampled(
            LEARNING,
            optim__lr=lambda i: 1e-3 * max(0, 100 - i) / 100,
            param__frozen=lambda i: float(i >= 100),
        )
        == []
    )


def test_no_gradient_at_any_step_is_a_detached_loss() -> None:
    out = sampled(STUCK, optim__lr=lambda i: 1e-3, param__no_grad=lambda i: 1.0, param__frozen=lambda i: 1.0)
    assert [f.severity for f in out] == ["critical"]
    msg = out[0].message
    assert "No trainable parameter received a gradient at any of the 12 recorded steps" in msg
    assert "the learning rate is 0.001" in msg and "detached" in msg
    assert "learning rate is 0 " not in msg


def test_parameters_never_changing_with_gradients_and_lr() -> None:
    out = sampled(STUCK, optim__lr=lambda i: 1e-3, param__no_grad=lambda i: 0.0, param__frozen=lambda i: 1.0)
    assert [f.severity for f in out] == ["critical"]
    assert out[0].message.startswith("100% of trainable parameter elements did not change (param/frozen)")
    assert "where gradients exist and the learning rate is above 0" in out[0].message


def test_part_of_the_model_not_in_the_optimizer_is_found_after_the_first_steps() -> None:
    out = sampled(
        LEARNING,
        upto=20,
        optim__lr=lambda i: 1e-3 * min(1.0, i / 10),
        param__zero_lr=lambda i: float(i == 0),
        param__not_in_optimizer=lambda i: 0.72,
    )
    assert [f.severity for f in out] == ["warning"]
    assert "72% of trainable parameter elements are in no optimizer parameter group" in out[0].message
    assert out[0].step == 10  # the first step where the learning rate was above 0


def test_losses_repeating_every_epoch_mean_frozen_weights() -> None:
    epoch = np.random.default_rng(1).uniform(0.3, 0.9, 12).round(6)
    loss = np.tile(epoch, 10)
    out = judge(frozen_parameters, {"train/loss": loss}, n=N)
    assert out and "every 12 points" in out[0].message
    # the same values shuffled every epoch do not repeat at a fixed lag
    rng = np.random.default_rng(2)
    shuffled = np.concatenate([rng.permutation(epoch) for _ in range(10)])
    assert judge(frozen_parameters, {"train/loss": shuffled}, n=N) == []


# ---------------------------------------------------------------- stale_gradients
@pytest.mark.parametrize(("stale", "found"), [(0.9, True), (0.1, False)])
def test_stale_flag(stale: float, found: bool) -> None:
    flags = (np.arange(N) % 10 < stale * 10).astype(float)
    out = judge(stale_gradients, {"train/loss": LEARNING, "grad/stale": flags}, n=N)
    assert bool(out) is found
    if found:
        assert out[0].severity == "warning" and "90%" in out[0].message


def test_linear_gradient_growth_with_a_stuck_loss() -> None:
    out = judge(stale_gradients, {"train/loss": STUCK, "grad/norm/total": np.linspace(1, 20, N)}, n=N)
    assert out[0].severity == "critical" and "20" in out[0].message
    assert (
        judge(stale_gradients, {"train/loss": LEARNING, "grad/norm/total": np.linspace(1, 20, N)}, n=N) == []
    )
    assert judge(stale_gradients, {"train/loss": STUCK, "grad/norm/total": np.linspace(1, 3, N)}, n=N) == []


def test_one_quiet_layer_in_a_failing_run_is_only_a_warning() -> None:
    out = judge(
        vanishing_gradients,
        {
            "train/loss": STUCK,
            "grad/norm/enc.0": 0.0,
            "grad/norm/enc.1": 0.1,
            "grad/norm/enc.2": 0.1,
            "grad/norm/head.0": 0.2,
        },
        n=N,
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

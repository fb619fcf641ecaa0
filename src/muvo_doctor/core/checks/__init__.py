"""The checks: one module per check id, each a pure function of the history.

A check module defines ``ID`` (a check id of docs/contract.md), a docstring in three parts
(What it does / Why it matters / What to do) that ``muvo-doctor explain`` prints, and
``check(history, config) -> list[Finding]``. A check never prints and never raises on bad
training; it returns ``[]`` when its signal is absent or too short, and returns a finding only
while its evidence holds: the Doctor keeps the finding's first step and marks it resolved when a
later evaluation no longer returns it. Rules made for whole logs with few points read
``history.complete`` (the final evaluation) and stay silent before it.
"""

from __future__ import annotations

from types import ModuleType

from muvo_doctor.core.checks import (
    constant_output,
    display_precision,
    divergence,
    exploding_gradients,
    flat_loss,
    frozen_parameters,
    label_imbalance,
    loss_not_decreasing,
    loss_spike,
    metric_stuck,
    nan_inf,
    overfitting,
    prior_baseline,
    stale_gradients,
    vanishing_gradients,
    wrong_loss_input,
)

# Order is the order findings are listed in: outcomes first, then mechanisms, then data and display.
ALL_CHECKS: tuple[ModuleType, ...] = (
    nan_inf,
    divergence,
    flat_loss,
    prior_baseline,
    loss_not_decreasing,
    metric_stuck,
    loss_spike,
    overfitting,
    vanishing_gradients,
    exploding_gradients,
    frozen_parameters,
    stale_gradients,
    constant_output,
    wrong_loss_input,
    label_imbalance,
    display_precision,
)


def by_id() -> dict[str, ModuleType]:
    return {m.ID: m for m in ALL_CHECKS}

"""The checks: one module per check id, each a pure function of the history.

A check module defines ``ID`` (a check id of CONTRACT.md), a docstring in three parts
(What it does / Why it matters / What to do) that ``muvo-doctor explain`` prints, and
``check(history, config) -> list[Finding]``. A check never prints and never raises on bad
training; it returns ``[]`` when its signal is absent or too short.
"""

from __future__ import annotations

from types import ModuleType

# Filled as checks are written; order is the order findings are listed in.
ALL_CHECKS: tuple[ModuleType, ...] = ()


def by_id() -> dict[str, ModuleType]:
    return {m.ID: m for m in ALL_CHECKS}

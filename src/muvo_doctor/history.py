"""A bounded store of observation series that checks read."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from muvo_doctor.observation import Observation


@dataclass(frozen=True)
class Series:
    """One signal's points in step order. ``digits`` is the fewest decimals it was ever shown with."""

    name: str
    steps: np.ndarray  # (n,) int64
    values: np.ndarray  # (n,) float64
    digits: int | None

    def __len__(self) -> int:
        return len(self.values)


class _Buffer:
    __slots__ = ("steps", "values", "digits", "stride", "pending")

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.values: list[float] = []
        self.digits: int | None = None
        self.stride = 1  # keep one point in `stride` after compaction
        self.pending = 0


class History:
    """Per-signal series, each at most ``max_points`` long.

    When a series fills up, every other point is dropped and later points are kept at the
    same coarser stride, so a long run keeps its whole shape in bounded memory.
    Observations from ranks other than 0 are stored under ``name@rank<r>``.
    """

    def __init__(self, max_points: int = 20_000) -> None:
        if max_points < 16:
            raise ValueError(f"max_points must be at least 16, got {max_points}")
        self.max_points = max_points
        self._buffers: dict[str, _Buffer] = {}
        self.last_step: int = -1
        self.count: int = 0

    def add(self, obs: Observation) -> None:
        name = obs.name if not obs.rank else f"{obs.name}@rank{obs.rank}"
        self.add_point(name, obs.step, obs.value, obs.digits)

    def add_point(self, name: str, step: int, value: float, digits: int | None = None) -> None:
        """Add one point without building an Observation (the fast path for log readers)."""
        buf = self._buffers.get(name)
        if buf is None:
            buf = self._buffers[name] = _Buffer()
        self.count += 1
        if step > self.last_step:
            self.last_step = step
        if digits is not None and (buf.digits is None or digits < buf.digits):
            buf.digits = digits
        buf.pending += 1
        if buf.pending < buf.stride:
            return
        buf.pending = 0
        buf.steps.append(step)
        buf.values.append(value)
        if len(buf.values) >= self.max_points:
            # Keep the first point and every other one after it.
            buf.steps = buf.steps[::2]
            buf.values = buf.values[::2]
            buf.stride *= 2

    def extend(self, observations: Iterable[Observation]) -> None:
        for obs in observations:
            self.add(obs)

    def names(self, prefix: str = "") -> list[str]:
        return sorted(n for n in self._buffers if n.startswith(prefix))

    def __contains__(self, name: str) -> bool:
        return name in self._buffers

    def series(self, name: str) -> Series | None:
        """The series called ``name``, or None when it was never observed."""
        buf = self._buffers.get(name)
        if buf is None or not buf.values:
            return None
        return Series(
            name=name,
            steps=np.asarray(buf.steps, dtype=np.int64),
            values=np.asarray(buf.values, dtype=np.float64),
            digits=buf.digits,
        )

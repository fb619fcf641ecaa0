"""A bounded store of observation series that checks read."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from muvo_doctor.core.observation import Observation


@dataclass(frozen=True)
class Series:
    """One signal's points in step order. ``digits`` is the fewest decimals it was ever shown with.

    ``steps`` and ``values`` are read-only views: later additions to the history never change them.
    """

    name: str
    steps: np.ndarray  # (n,) int64
    values: np.ndarray  # (n,) float64
    digits: int | None

    def __len__(self) -> int:
        return len(self.values)


class _Buffer:
    """One series: numpy arrays with spare capacity plus a short list tail of new points.

    Adding a point appends to Python lists (the log readers' hot path); reading moves the tail into
    the arrays once, so every point is converted to numpy exactly once. The arrays grow by doubling
    and are replaced, never written below ``n``, so a view handed out earlier stays valid.
    """

    __slots__ = ("steps", "values", "n", "room", "tail_steps", "tail_values", "digits", "stride", "pending")

    def __init__(self, max_points: int) -> None:
        self.steps = np.empty(0, dtype=np.int64)
        self.values = np.empty(0, dtype=np.float64)
        self.n = 0  # points in the arrays
        self.room = max_points  # tail length at which the series is full (max_points - n)
        self.tail_steps: list[int] = []
        self.tail_values: list[float] = []
        self.digits: int | None = None
        self.stride = 1  # keep one point in `stride` after compaction
        self.pending = 0

    def __len__(self) -> int:
        return self.n + len(self.tail_values)

    def _reserve(self, need: int, cap_limit: int) -> None:
        """Room for ``need`` points: capacity doubles (amortised O(1) per point), up to ``cap_limit``."""
        if need <= len(self.values):
            return
        cap = max(64, len(self.values))
        while cap < need:
            cap *= 2
        cap = max(min(cap, cap_limit), need)
        steps = np.empty(cap, dtype=np.int64)
        values = np.empty(cap, dtype=np.float64)
        steps[: self.n] = self.steps[: self.n]
        values[: self.n] = self.values[: self.n]
        self.steps, self.values = steps, values

    def flush(self, cap_limit: int) -> None:
        """Move the tail into the arrays (amortised O(1) per point)."""
        k = len(self.tail_values)
        if not k:
            return
        need = self.n + k
        self._reserve(need, cap_limit)
        self.steps[self.n : need] = self.tail_steps
        self.values[self.n : need] = self.tail_values
        self.n = need
        self.room = cap_limit - need
        self.tail_steps.clear()
        self.tail_values.clear()

    def extend(self, steps: np.ndarray, values: np.ndarray, cap_limit: int) -> None:
        """Append points straight into the arrays (after the tail): the bulk path's copy."""
        self.flush(cap_limit)
        m = len(values)
        need = self.n + m
        self._reserve(need, cap_limit)
        self.steps[self.n : need] = steps
        self.values[self.n : need] = values
        self.n = need
        self.room = cap_limit - need

    def halve(self, cap_limit: int) -> None:
        """Keep the first point and every other one after it, into fresh arrays (old views stay intact)."""
        self.flush(cap_limit)
        keep_s, keep_v = self.steps[: self.n : 2], self.values[: self.n : 2]
        m = len(keep_v)
        self.steps = np.empty(cap_limit, dtype=np.int64)
        self.values = np.empty(cap_limit, dtype=np.float64)
        self.steps[:m] = keep_s
        self.values[:m] = keep_v
        self.n = m
        self.room = cap_limit - m


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
        # True once no more observations will come (a finished log, the end of a run). Rules made for
        # short logs (a handful of epochs or an excerpt) judge a whole log; during a run a series is
        # short because the run is young, and those rules wait for the end.
        self.complete: bool = False

    def add(self, obs: Observation) -> None:
        """Add one observation (ranks other than 0 under ``name@rank<r>``)."""
        name = obs.name if not obs.rank else f"{obs.name}@rank{obs.rank}"
        self.add_point(name, obs.step, obs.value, obs.digits)

    def add_point(self, name: str, step: int, value: float, digits: int | None = None) -> None:
        """Add one point without building an Observation (the fast path for log readers)."""
        buf = self._buffers.get(name)
        if buf is None:
            buf = self._buffers[name] = _Buffer(self.max_points)
        self.count += 1
        if step > self.last_step:
            self.last_step = step
        if digits is not None and (buf.digits is None or digits < buf.digits):
            buf.digits = digits
        buf.pending += 1
        if buf.pending < buf.stride:
            return
        buf.pending = 0
        buf.tail_steps.append(step)
        buf.tail_values.append(value)
        if len(buf.tail_values) >= buf.room:
            buf.halve(self.max_points)
            buf.stride *= 2

    def add_points(self, name: str, steps: np.ndarray, values: np.ndarray, digits: int | None = None) -> None:
        """Add many points of one series, in order: the same history as ``add_point`` called for each
        (same stride, same compaction), at numpy speed. ``digits`` is the fewest any of them showed.

        Cost: one slice copy per compaction the points cause, instead of Python work per point.
        """
        n = len(values)
        if not n:
            return
        steps = np.asarray(steps, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        buf = self._buffers.get(name)
        if buf is None:
            buf = self._buffers[name] = _Buffer(self.max_points)
        self.count += n
        top = int(steps.max())
        if top > self.last_step:
            self.last_step = top
        if digits is not None and (buf.digits is None or digits < buf.digits):
            buf.digits = digits
        i = 0
        while i < n:
            stride = buf.stride
            first = i + stride - 1 - buf.pending  # the next point this stride keeps
            if first >= n:
                buf.pending += n - i
                return
            kept = (n - 1 - first) // stride + 1
            fits = buf.room - len(buf.tail_values)  # the fits-th point kept fills the series
            if kept < fits:
                last = first + (kept - 1) * stride
                buf.extend(
                    steps[first : last + 1 : stride], values[first : last + 1 : stride], self.max_points
                )
                buf.pending = n - 1 - last
                return
            last = first + (fits - 1) * stride
            buf.extend(steps[first : last + 1 : stride], values[first : last + 1 : stride], self.max_points)
            buf.halve(self.max_points)
            buf.stride *= 2
            buf.pending = 0
            i = last + 1

    def extend(self, observations: Iterable[Observation]) -> None:
        """Add many observations in order."""
        for obs in observations:
            self.add(obs)

    def names(self, prefix: str = "") -> list[str]:
        """Names of the series starting with ``prefix``, sorted."""
        return sorted(n for n in self._buffers if n.startswith(prefix))

    def __contains__(self, name: str) -> bool:
        return name in self._buffers

    def series(self, name: str) -> Series | None:
        """The series called ``name``, or None when it was never observed.

        Cost: the points added since the last call are converted once; the arrays themselves are
        read-only views, not copies.
        """
        buf = self._buffers.get(name)
        if buf is None or not len(buf):
            return None
        buf.flush(self.max_points)
        steps = buf.steps[: buf.n]
        values = buf.values[: buf.n]
        steps.flags.writeable = False
        values.flags.writeable = False
        return Series(name=name, steps=steps, values=values, digits=buf.digits)

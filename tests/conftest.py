"""Fixtures shared by the test folders."""

from __future__ import annotations

import subprocess
import sys

import pytest

# -- `muvo-doctor run` in a subprocess (the run tests) ---------------------------------------------


class DoctorRun:
    """Runs `muvo-doctor run ARGS` as a user or CI would: a subprocess with pipes (plain mode)."""

    argv = (sys.executable, "-m", "muvo_doctor", "run")  # for tests that need a Popen of their own

    def __call__(self, *args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess[bytes]:
        kw.setdefault("capture_output", True)
        return subprocess.run([*self.argv, *args], timeout=timeout, **kw)


@pytest.fixture
def doctor_run() -> DoctorRun:
    return DoctorRun()


# -- end of the run tests' block -------------------------------------------------------------------


# -- a History built from series, and a check judging it (the check tests) -------------------------
# Plain functions, not fixtures: the check tests call them from their own helpers and parametrized
# tables; they import them with `from conftest import history_of, judge` (tests/ has no __init__.py).

from collections.abc import Mapping  # noqa: E402
from types import ModuleType  # noqa: E402

import numpy as np  # noqa: E402

from muvo_doctor.core.config import DoctorConfig  # noqa: E402
from muvo_doctor.core.finding import Finding  # noqa: E402
from muvo_doctor.core.history import History  # noqa: E402


def history_of(
    series: Mapping[str, object],
    *,
    n: int | None = None,
    every: Mapping[str, int] | None = None,
    digits: Mapping[str, int] | None = None,
    complete: bool = False,
) -> History:
    """A History holding each series as one point per step from step 0, as a recorder would.

    Args:
        series: signal name -> its values (a scalar or an array; with ``n`` it is broadcast).
        n: the run's length in steps: each series is broadcast to ``n // every`` points.
        every: signal name -> k: that signal is recorded once every k steps, at the last step of each k.
        digits: signal name -> the decimals it was printed with (a printed log's precision).
        complete: a finished log (the log-only rules judge whole logs), not a run in progress.
    """
    h = History()
    h.complete = complete
    for name, values in series.items():
        k = (every or {}).get(name, 1)
        points = np.asarray(values, dtype=float)
        if n is not None:
            points = np.broadcast_to(points, (n // k,))
        for j, v in enumerate(points):
            h.add_point(name, (j + 1) * k - 1, float(v), (digits or {}).get(name))
    return h


def judge(
    check: ModuleType, series: Mapping[str, object], *, cfg: DoctorConfig | None = None, **history: object
) -> list[Finding]:
    """What one check finds in these series; ``history`` takes `history_of`'s options."""
    return check.check(history_of(series, **history), cfg or DoctorConfig())


# -- end of the check tests' block -----------------------------------------------------------------


def assert_same_series(a: History, b: History) -> None:
    """Two histories hold the same series: names, steps, values to the bit (the sign of zero too), digits."""
    assert a.names() == b.names() and a.names()
    for name in a.names():
        x, y = a.series(name), b.series(name)
        np.testing.assert_array_equal(x.steps, y.steps, err_msg=name)
        np.testing.assert_array_equal(x.values, y.values, err_msg=name)
        assert np.array_equal(np.signbit(x.values), np.signbit(y.values)), name
        assert x.digits == y.digits, name

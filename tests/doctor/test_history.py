"""History: bounded series with stride compaction, min digits, rank names, safe views, and reads that reuse them."""

from __future__ import annotations

import numpy as np
import pytest

from muvo_doctor.core.history import History
from muvo_doctor.core.observation import Observation


def _filled(n: int, max_points: int = 64, name: str = "train/loss") -> History:
    h = History(max_points)
    for s in range(n):
        h.add_point(name, s, float(s) * 0.5)
    return h


@pytest.mark.parametrize("n", [1, 63, 64, 65, 200, 1_000, 10_007])
def test_length_is_bounded_and_the_shape_is_kept(n: int) -> None:
    h = _filled(n)
    s = h.series("train/loss")
    assert s is not None and 1 <= len(s) < 64
    assert s.steps[0] == 0 and s.values[0] == 0.0  # the first point survives every compaction
    assert np.all(np.diff(s.steps) > 0)  # step order
    np.testing.assert_array_equal(s.values, s.steps * 0.5)  # each value stays with its step
    # Kept points are evenly strided over the whole run: the last one is near the end.
    assert s.steps[-1] >= n - 1 - 2 * np.diff(s.steps).max(initial=1)
    assert h.count == n and h.last_step == n - 1


def test_compaction_matches_keep_first_and_every_other() -> None:
    # max_points=16: at 16 points keep [0, 2, ..., 14] (8), then stride 2 keeps steps 17, 19, ... 31 and at 16 again every other
    h = _filled(16 + 16, max_points=16)
    s = h.series("train/loss")
    assert list(s.steps) == [0, 4, 8, 12, 17, 21, 25, 29]


def test_digits_is_the_fewest_ever_shown() -> None:
    h = History()
    for digits in (6, 4, None, 5):
        h.add_point("printed/loss", len(h.names()), 0.5, digits)
    assert h.series("printed/loss").digits == 4
    h.add_point("train/loss", 0, 0.5)
    assert h.series("train/loss").digits is None


def test_ranks_are_stored_apart() -> None:
    h = History()
    h.extend(
        [
            Observation(name="train/loss", step=0, value=1.0),
            Observation(name="train/loss", step=0, value=2.0, rank=1),
            Observation(name="train/loss", step=1, value=3.0, rank=0),
        ]
    )
    assert h.names() == ["train/loss", "train/loss@rank1"]
    assert list(h.series("train/loss").values) == [1.0, 3.0]
    assert list(h.series("train/loss@rank1").values) == [2.0]
    assert "train/loss@rank1" in h and "val/loss" not in h
    assert h.names("train/loss@") == ["train/loss@rank1"]


def test_absent_series_is_none() -> None:
    assert History().series("train/loss") is None
    with pytest.raises(ValueError, match="at least 16"):
        History(8)


@pytest.mark.parametrize("later", [5, 100, 5_000])  # appends in place, growth, compaction
def test_a_series_read_earlier_is_not_changed_by_later_points(later: int) -> None:
    h = _filled(40, max_points=64)
    before = h.series("train/loss")
    steps, values = before.steps.copy(), before.values.copy()
    for s in range(40, 40 + later):
        h.add_point("train/loss", s, -1.0)
    h.series("train/loss")  # moves the new points into the arrays
    np.testing.assert_array_equal(before.steps, steps)
    np.testing.assert_array_equal(before.values, values)
    with pytest.raises(ValueError):
        before.values[0] = 7.0  # read-only: a check cannot corrupt the history either


def test_reading_reuses_the_arrays_and_sees_every_new_point() -> None:
    # 70 series x 20,000 points: reading all of them must not rebuild arrays (that was ~100 ms a pass):
    # each read is a view of the same arrays, also after a new point (bench/history_reads.py times it).
    h = History()
    names = [f"grad/norm/m{i}" for i in range(70)]
    vals = np.random.default_rng(0).random(20_000)
    for n in names:
        for s in range(20_000):
            h.add_point(n, s, float(vals[s]))
    first = {n: h.series(n) for n in names}
    for r in range(10):
        h.add_point(names[0], 20_000 + r, 9.0)
        for n in names:
            again = h.series(n)
            assert np.shares_memory(again.values, first[n].values), (n, r)
            assert np.shares_memory(again.steps, first[n].steps), (n, r)
    s = h.series(names[0])
    assert s.values[-1] == 9.0 and len(s) < 20_000  # compacted once at 20,000, newest point present


def test_reading_in_between_changes_nothing() -> None:
    a, b = History(32), History(32)
    for s in range(500):
        a.add_point("x", s, s / 7, 3)
        b.add_point("x", s, s / 7, 3)
        if s % 7 == 0:
            b.series("x")
    sa, sb = a.series("x"), b.series("x")
    np.testing.assert_array_equal(sa.steps, sb.steps)
    np.testing.assert_array_equal(sa.values, sb.values)
    assert sa.digits == sb.digits == 3


def _same(a: History, b: History, name: str) -> None:
    sa, sb = a.series(name), b.series(name)
    np.testing.assert_array_equal(sa.steps, sb.steps)
    np.testing.assert_array_equal(sa.values, sb.values)
    assert sa.digits == sb.digits
    assert (a.count, a.last_step) == (b.count, b.last_step)


@pytest.mark.parametrize("seed", range(12))
def test_bulk_add_gives_the_history_of_one_add_per_point(seed: int) -> None:
    # Slices of every size (1 point .. several compactions at once), mixed with single points and
    # reads, over series short enough to compact many times: the same points at the same strides.
    rng = np.random.default_rng(seed)
    one, bulk = History(16 + seed), History(16 + seed)
    step = 0
    for _ in range(60):
        n = int(rng.choice([1, 2, 7, 15, 16, 17, 40, 300]))
        steps = np.arange(step, step + n)
        values = rng.standard_normal(n)
        digits = int(rng.integers(0, 6)) if rng.random() < 0.5 else None
        for s, v in zip(steps.tolist(), values.tolist(), strict=True):
            one.add_point("x", s, v, digits)
        if rng.random() < 0.3:
            for s, v in zip(steps.tolist(), values.tolist(), strict=True):
                bulk.add_point("x", s, v, digits)
        else:
            bulk.add_points("x", steps, values, digits)
        if rng.random() < 0.2:
            bulk.series("x")
        step += n
    _same(one, bulk, "x")

"""CSV metric files: Lightning ``metrics.csv`` (sparse columns), Ultralytics ``results.csv`` (padded
headers, per-part losses), and any CSV whose header names metrics (loss, acc, ...)."""

from __future__ import annotations

import csv
import itertools
import math
import re
from collections.abc import Iterator

from muvo_doctor.logs.base import AddPoint, ReadStats, as_fraction, classify, digits_of, sane_step

_STEP_COLUMNS = ("step", "global_step", "iteration", "iter", "trainer/global_step", "_step")
_FIXED_PROBE = 20  # rows read to decide whether a column has a fixed number of decimals
_PART_LOSS = re.compile(r"^(train|val)/\w+_loss$")


def read_csv(path: str, add: AddPoint) -> ReadStats:
    """Each row is a record; its step is the ``step``-like column, else ``epoch``, else the row index.

    Empty cells are skipped (Lightning writes train and validation metrics on separate rows).
    ``X_epoch`` columns stand for ``X`` when no ``X``/``X_step`` column exists. When a file has
    per-part losses (Ultralytics ``train/box_loss``, ``train/cls_loss`` ...) but no total, their
    sum is added as ``train/loss`` / ``val/loss``.
    """
    st = ReadStats()
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        reader = _rows(csv.reader(f), st)
        header = next(reader, None)
        if not header:
            st.note = "empty CSV"
            return st
        cols = [h.strip().lstrip("\ufeff") for h in header]
        lower = [c.lower() for c in cols]
        step_col = next((lower.index(c) for c in _STEP_COLUMNS if c in lower), None)
        epoch_col = lower.index("epoch") if "epoch" in lower else None
        present = set(lower)
        plan: list[tuple[int, str, bool]] = []  # (column, signal name, is a fraction)
        for i, c in enumerate(lower):
            key = c
            if c.endswith("_epoch") and c[:-6] not in present and c[:-6] + "_step" not in present:
                key = c[:-6]
            name, frac, is_step = classify(key)
            if name is not None and not is_step:
                plan.append((i, name, frac))
        names = {n for _, n, _ in plan}
        parts: dict[str, list[int]] = {}
        for i, name, _ in plan:
            m = _PART_LOSS.match(name)
            if m and f"{m.group(1)}/loss" not in names:
                parts.setdefault(f"{m.group(1)}/loss", []).append(i)
        if not plan:
            st.note = f"no metric columns in the header ({', '.join(cols[:8])})"
            st.unparsed = True  # a log line with commas, not a CSV header
            return st
        # A column written with a fixed number of decimals (Ultralytics "%.5f", a "{:.4f}" logger) has
        # a display precision; one written as shortest reprs (Lightning, pandas) has not.
        head_rows = [row for _, row in zip(range(_FIXED_PROBE), reader, strict=False)]
        fixed = {i: _fixed_decimals(head_rows, i) for i, _, _ in plan}
        for index, row in enumerate(itertools.chain(head_rows, reader)):
            step: int | None = index
            axis = (
                step_col if step_col is not None and step_col < len(row) and row[step_col].strip() else None
            )
            if axis is None and epoch_col is not None and epoch_col < len(row) and row[epoch_col].strip():
                axis = epoch_col
            if axis is not None:
                step = sane_step(row[axis].strip())
                if step is None:
                    st.skip(f"row {index + 2}: a step that cannot be a step ({row[axis].strip()[:20]})")
                    continue
            n = 0
            for i, name, frac in plan:
                if i >= len(row):
                    continue
                cell = row[i].strip()
                if not cell:
                    continue
                try:
                    val = _cell_value(cell)
                except OverflowError:
                    st.skip(f"row {index + 2}: a number too large to be a training value")
                    continue
                if val is None:
                    continue
                d = digits_of(cell) if fixed[i] else None
                if frac:
                    val, d = as_fraction(val, d)
                add(name, step, val, d)
                n += 1
            for name, idx in parts.items():
                cells = [row[i].strip() for i in idx if i < len(row) and row[i].strip()]
                if len(cells) == len(idx):
                    try:
                        total = sum(float(c) for c in cells)
                    except ValueError:
                        continue
                    ds = [digits_of(c) if fixed[i] else None for c, i in zip(cells, idx, strict=False)]
                    add(name, step, total, None if None in ds else min(d for d in ds if d is not None))
                    n += 1
            if n:
                st.records += 1
                st.points += n
                if step > st.last_step:
                    st.last_step = step
    if not st.records:
        st.note = f"no numeric rows under the header ({', '.join(cols[:8])})"
    return st


def _fixed_decimals(rows: list[list[str]], i: int) -> bool:
    ds = {digits_of(r[i]) for r in rows if i < len(r) and r[i].strip() and _is_number(r[i])}
    return len(ds) == 1 and None not in ds


def _rows(reader: Iterator[list[str]], st: ReadStats) -> Iterator[list[str]]:
    """The rows of a CSV reader; a row the csv module rejects (a field over its 128 KB limit) is
    skipped and counted, and reading goes on with the next line."""
    errors = 0
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            errors += 1
            st.skip(f"a row the CSV parser rejects ({exc})")
            if errors > 10_000:
                return


def _cell_value(cell: str) -> float | None:
    """A cell as a number; None for text. Raises OverflowError for a number too large for a float."""
    try:
        val = float(cell)
    except ValueError:
        return None
    if math.isinf(val) and cell.lstrip("+-")[:1].isdigit():
        raise OverflowError(cell[:20])
    return val


def looks_like_csv(first: str, second: str | None) -> bool:
    """A header of several non-numeric names, and (if present) a row with the same number of cells."""
    if "," not in first or "=" in first:
        return False
    head = [c.strip() for c in first.split(",")]
    if len(head) < 2 or any(not c for c in head[:1]):
        return False
    if any(c[:1].isdigit() or "\t" in c or ": " in c or len(c) > 80 for c in head):
        return False  # "2023-01-01 00:00:00,000 - mmdet - INFO ...": a log line with commas
    named = sum(1 for c in head if c and not _is_number(c))
    if named < max(2, len(head) - 1):
        return False
    if second is None:
        return True
    return len(second.split(",")) == len(head)


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True

"""CSV metric files: Lightning ``metrics.csv`` (sparse columns), Ultralytics ``results.csv`` (padded
headers, per-part losses), and any CSV whose header names metrics (loss, acc, ...)."""

from __future__ import annotations

import csv
import io
import itertools
import math
import re
from collections.abc import Callable, Iterator
from operator import itemgetter
from typing import BinaryIO, NamedTuple

import numpy as np

from muvo_doctor.logs.base import (
    MAX_STEP,
    AddPoint,
    ReadStats,
    Sink,
    as_fraction,
    as_sink,
    classify,
    digits_of,
    sane_step,
)
from muvo_doctor.logs.numbers import Fields, decimals

_STEP_COLUMNS = ("step", "global_step", "iteration", "iter", "trainer/global_step", "_step")
_FIXED_PROBE = 20  # rows read to decide whether a column has a fixed number of decimals
_BATCH = 4096  # rows read column by column at once
_SMALL = 8  # rows read one by one rather than column by column
_CHUNK = 2 << 20  # bytes per read
_MAX_LINE = 8 << 20  # bytes of one line held before it is checked for a field the csv module rejects
_LINE_END_RE = re.compile(rb"\r\n?|\n")
_FIELD_LIMIT = 128 << 10  # the csv module's field limit: a longer line goes through it (it rejects the row)
_PART_LOSS = re.compile(r"^(train|val)/\w+_loss$")


def read_csv(path: str, add: AddPoint | Sink) -> ReadStats:
    """Each row is a record; its step is the ``step``-like column, else ``epoch``, else the row index.

    Empty cells are skipped (Lightning writes train and validation metrics on separate rows).
    ``X_epoch`` columns stand for ``X`` when no ``X``/``X_step`` column exists. When a file has
    per-part losses (Ultralytics ``train/box_loss``, ``train/cls_loss`` ...) but no total, their
    sum is added as ``train/loss`` / ``val/loss``. Rows are read in batches, column by column
    (``_Columns``); a batch holding a row or cell that is skipped is read row by row, so the
    skipped count and its first reason are those of the rows in order.
    """
    st = ReadStats()
    sink = as_sink(add)
    with open(path, "rb") as f:
        rows = _Rows(iter(()), st)
        src = _Source(f, rows.rejected)
        rows.reader = csv.reader(src.lines())
        header = rows.next()
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
        head_rows = rows.batch(_FIXED_PROBE, whole=True)
        fixed = {i: _fixed_decimals(head_rows, i) for i, _, _ in plan}
        reader = _Columns(st, sink, plan, parts, fixed, step_col, epoch_col)
        reader.rows(head_rows)
        while (chunk := src.take()) is not None:
            if '"' in chunk:  # a quoted field may hold newlines: the csv module reads the rest
                src.put_back(chunk)
                src.bounded = False
                rows.reader = csv.reader(src.lines())
                while batch := rows.batch(_BATCH):
                    reader.rows(batch)
                break
            if not reader.text(chunk, len(header)):  # rows of another width, blank lines ...
                rows.reader = csv.reader(io.StringIO(chunk, newline=""))
                while batch := rows.batch(_BATCH):
                    reader.rows(batch)
    if not st.records:
        st.note = f"no numeric rows under the header ({', '.join(cols[:8])})"
    return st


class _Source:
    """A CSV file's text: in chunks of whole lines (the bulk path), or line by line for the csv
    module, split where a file opened with ``newline=""`` splits (``\\n``, ``\\r\\n``, ``\\r``).

    Memory stays bounded: a line that grows past ``_MAX_LINE`` bytes with a field the csv module
    would reject (over its limit, unquoted) is skipped as it streams past and counted as the csv
    module counts it (``rejected``); only once the csv module reads the rest (a quoted field may
    hold newlines) is every line held whole again.
    """

    def __init__(self, f: BinaryIO, rejected: Callable[[str], None]) -> None:
        self.f = f
        self.carry = b""
        self.sio = io.StringIO("", newline="")
        self.rejected = rejected
        self.bounded = True

    def _chunk(self) -> str | None:
        while True:
            raw = self.f.read(_CHUNK)
            if not raw:
                rest, self.carry = self.carry, b""
                return rest.decode("utf-8", errors="replace") if rest else None
            buf = self.carry + raw if self.carry else raw
            cut = buf.rfind(b"\n")
            if cut >= 0:
                self.carry = buf[cut + 1 :]
                return buf[: cut + 1].decode("utf-8", errors="replace")
            self.carry = buf
            if self.bounded and len(buf) > _MAX_LINE and b"\r" not in buf and b'"' not in buf:
                commas = np.flatnonzero(np.frombuffer(buf, np.uint8) == 44)
                if np.diff(commas, prepend=-1, append=len(buf)).max() > 4 * csv.field_size_limit():
                    self._skip_line()  # (4 bytes a character at most: the field is over the limit)

    def _skip_line(self) -> None:
        """Read past the rest of the line in ``carry`` (to a newline, or a lone "\\r": the csv module's
        next row), keeping only what follows; the line counts as one rejected row."""
        self.carry = b""
        while raw := self.f.read(_CHUNK):
            m = _LINE_END_RE.search(raw)
            if m is not None:
                self.carry = raw[m.end() :]
                if m.group() == b"\r" and not self.carry and self.f.read(1) not in (b"\n", b""):
                    self.f.seek(-1, io.SEEK_CUR)  # a "\r\n" cut by the read is one line end
                break
        self.rejected(
            f"a row the CSV parser rejects (field larger than field limit ({csv.field_size_limit()}))"
        )

    def lines(self) -> Iterator[str]:
        while True:
            line = self.sio.readline()
            if line:
                yield line
                continue
            chunk = self._chunk()
            if chunk is None:
                return
            self.sio = io.StringIO(chunk, newline="")

    def take(self) -> str | None:
        """The rest of the text as the next chunk of whole lines; None at the end."""
        rest = self.sio.read()
        return rest if rest else self._chunk()

    def put_back(self, chunk: str) -> None:
        self.sio = io.StringIO(chunk, newline="")


class _Rows:
    """The rows of a CSV reader, one or a batch at a time; a row the csv module rejects (a field
    over its 128 KB limit) is skipped and counted, and reading goes on with the next line."""

    def __init__(self, reader: Iterator[list[str]], st: ReadStats) -> None:
        self.reader = reader
        self.st = st
        self.errors = 0
        self.pending: list[list[str]] = []
        self.reason = ""  # a rejected row, counted once the rows before it are read

    def rejected(self, reason: str) -> None:
        """A row rejected before the csv module saw it (a line too long to hold)."""
        self.errors += 1
        self.st.skip(reason)

    def next(self) -> list[str] | None:
        got = self.batch(1, whole=True)
        return got[0] if got else None

    def batch(self, size: int, *, whole: bool = False) -> list[list[str]]:
        """Up to ``size`` rows, none at the end. A rejected row ends the batch early and is counted
        when the next batch is asked for, after the rows before it were read; with ``whole``, it is
        counted at once and the batch goes on to ``size`` rows."""
        if self.reason:
            self.st.skip(self.reason)
            self.reason = ""
        out: list[list[str]] = []
        while len(out) < size and self.errors <= 10_000:
            try:
                out.extend(itertools.islice(self.reader, size - len(out)))
            except csv.Error as exc:
                self.errors += 1
                if out and not whole:
                    self.reason = f"a row the CSV parser rejects ({exc})"
                    return out
                self.st.skip(f"a row the CSV parser rejects ({exc})")
                continue
            return out
        return out


class _Columns:
    """Rows to points, a batch at a time: per column, the cells of every row at once (numpy), with
    what the per-row rules (``_row``) give: the same steps, values, digits and counts."""

    def __init__(
        self,
        st: ReadStats,
        sink: Sink,
        plan: list[tuple[int, str, bool]],
        parts: dict[str, list[int]],
        fixed: dict[int, bool],
        step_col: int | None,
        epoch_col: int | None,
    ) -> None:
        self.st, self.sink, self.plan, self.parts, self.fixed = st, sink, plan, parts, fixed
        self.step_col, self.epoch_col = step_col, epoch_col
        self.index = 0  # rows so far
        self.need = max([i for i, _, _ in plan] + [c for c in (step_col, epoch_col) if c is not None]) + 1

    def rows(self, batch: list[list[str]]) -> None:
        """The next rows of the file, in order."""
        start = self.index
        self.index += len(batch)
        self._rows_at(batch, start)

    def _rows_at(self, batch: list[list[str]], start: int) -> None:
        # A batch where something is skipped is halved until the rows around the skipped one are
        # read in bulk again and it is read by the per-row rules (a few rows).
        if len(batch) <= _SMALL:
            for k, row in enumerate(batch):
                self._row(row, start + k)
        elif not self._bulk(
            lambda i: _parse(
                self._cells(batch, i, min(map(len, batch)) >= self.need), self.fixed.get(i, False)
            ),
            len(batch),
            start,
        ):
            half = len(batch) // 2
            self._rows_at(batch[:half], start)
            self._rows_at(batch[half:], start + half)

    def text(self, chunk: str, width: int) -> bool:
        """Whole lines of a chunk without quotes, when every line has ``width`` cells: what the csv
        module gives for such lines is str.split's cells, read column by column. False when the
        chunk needs the csv module (nothing is read then)."""
        if "\x00" in chunk or width < 2:
            return False
        if "\r" in chunk:
            if chunk.count("\r") != chunk.count("\r\n"):
                return False  # a lone "\r" ends a row
            chunk = chunk.replace("\r\n", "\n")
        body = chunk[:-1] if chunk.endswith("\n") else chunk
        n = body.count("\n") + 1
        data = body.encode("utf-8")
        got = decimals(data, b",\n")
        if len(got.values) != n * width:
            return False
        # every line has ``width`` cells: the line ends are the ends of every width-th cell
        ends = got.ends[width - 1 :: width]
        b = np.frombuffer(data, np.uint8)
        if (b[ends[:-1]] != 10).any() or np.diff(ends, prepend=-1).max() > _FIELD_LIMIT:
            return False

        def get(i: int) -> _Col | None:
            return _text_column(data, got, slice(i, None, width), self.fixed.get(i, False))

        if not self._bulk(get, n, self.index):
            return False
        self.index += n
        return True

    def _cells(self, batch: list[list[str]], i: int, full: bool) -> list[str]:
        if full:
            return list(map(str.strip, map(itemgetter(i), batch)))
        return [row[i].strip() if i < len(row) else "" for row in batch]

    def _bulk(self, get: Callable[[int], _Col | None], n: int, start: int) -> bool:
        """``n`` rows from row ``start``, column by column (``get(i)``: column i read); False
        (nothing added) when a row or cell of them is skipped."""
        steps = np.arange(start, start + n, dtype=np.int64)
        axes = [c for c in (self.step_col, self.epoch_col) if c is not None]
        if axes:  # the step column where a row has one, else the epoch
            has = np.zeros(n, bool)
            v = np.zeros(n)
            for c in axes:
                if has.all():
                    break  # every row has a step: the epoch column is not read
                col = get(c)
                if col is None:
                    return False
                use = col.filled & ~has
                if (use & ~col.ok).any():
                    return False  # a step that is not a number: its row is skipped
                v[use] = col.vals[use]
                has |= use
            v = v[has]
            if not ((v >= 0) & (v < MAX_STEP)).all():
                return False  # a step that cannot be a step (NaN too): its row is skipped
            steps[has] = v.astype(np.int64)
        count = np.zeros(n, np.int64)  # points per row (a row with none is no record)
        out: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}  # name -> (rows with a value, values)
        digits: dict[str, int | None] = {}
        seen: dict[int, _Col] = {}
        for i, name, frac in self.plan:
            col = get(i)
            if col is None:
                return False
            seen[i] = col
            vals, d = _finish(col, frac)
            out.setdefault(name, []).append((col.ok, vals))
            digits[name] = _fewest(digits.get(name), d)
            count += col.ok
        for name, idx in self.parts.items():
            every = np.ones(n, bool)
            total = np.zeros(n)
            for i in idx:
                every &= seen[i].ok
                total = total + seen[i].vals  # in column order, as sum() adds them
            d = None
            if all(self.fixed[i] for i in idx):
                per = np.stack([seen[i].dig for i in idx])  # type: ignore[misc]
                shown = every & (per >= 0).all(axis=0)  # a row with a nan part shows no digits
                if shown.any():
                    d = int(per[:, shown].min())
            out.setdefault(name, []).append((every, total))
            digits[name] = _fewest(digits.get(name), d)
            count += every
        for name, got in out.items():
            if len(got) == 1:
                ok, vals = got[0]
                self.sink.extend(name, steps[ok], vals[ok], digits[name])
            else:  # columns of one signal ("loss", "total_loss"): row by row, as the per-row rules add them
                oks = np.stack([o for o, _ in got], 1).ravel()
                vals = np.stack([v for _, v in got], 1).ravel()
                self.sink.extend(name, np.repeat(steps, len(got))[oks], vals[oks], digits[name])
        rec = count > 0
        st = self.st
        st.records += int(rec.sum())
        st.points += int(count.sum())
        if rec.any():
            st.last_step = max(st.last_step, int(steps[rec].max()))
        return True

    def _row(self, row: list[str], index: int) -> None:
        """One row by the per-row rules (a batch where something is skipped)."""
        st, step_col, epoch_col = self.st, self.step_col, self.epoch_col
        step: int | None = index
        axis = step_col if step_col is not None and step_col < len(row) and row[step_col].strip() else None
        if axis is None and epoch_col is not None and epoch_col < len(row) and row[epoch_col].strip():
            axis = epoch_col
        if axis is not None:
            step = sane_step(row[axis].strip())
            if step is None:
                st.skip(f"row {index + 2}: a step that cannot be a step ({row[axis].strip()[:20]})")
                return
        n = 0
        for i, name, frac in self.plan:
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
            d = digits_of(cell) if self.fixed[i] else None
            if frac:
                val, d = as_fraction(val, d)
            self.sink.add(name, step, val, d)
            n += 1
        for name, idx in self.parts.items():
            cells = [row[i].strip() for i in idx if i < len(row) and row[i].strip()]
            if len(cells) == len(idx):
                try:
                    total = sum(float(c) for c in cells)
                except ValueError:
                    continue
                ds = [digits_of(c) if self.fixed[i] else None for c, i in zip(cells, idx, strict=False)]
                self.sink.add(name, step, total, None if None in ds else min(d for d in ds if d is not None))
                n += 1
        if n:
            st.records += 1
            st.points += n
            if step > st.last_step:
                st.last_step = step


class _Col(NamedTuple):
    """One column of a batch, read: cells holding a number, their values, non-empty cells, and for a
    fixed-decimals column the digits each shows (-1: none)."""

    ok: np.ndarray
    vals: np.ndarray
    filled: np.ndarray
    dig: np.ndarray | None


def _parse(cells: list[str], fixed: bool) -> _Col | None:
    """A column's stripped cells as the per-row rules read them; None when a cell overflows (the
    per-row rules count it)."""
    n = len(cells)
    filled = np.fromiter(map(bool, cells), bool, n) if "" in cells else np.ones(n, bool)
    try:
        if filled.all():
            ok = filled
            vals = np.fromiter(map(float, cells), np.float64, n)
        else:  # empty cells are skipped (sparse Lightning columns)
            ok = filled
            vals = np.zeros(n)
            vals[ok] = np.fromiter(map(float, itertools.compress(cells, ok.tolist())), np.float64)
    except ValueError:  # text cells: skipped
        got = list(map(_number_or_none, cells))
        ok = np.fromiter((g is not None for g in got), bool, n)
        vals = np.fromiter((0.0 if g is None else g for g in got), np.float64, n)
    inf = np.isinf(vals)
    if inf.any() and any(cells[k].lstrip("+-")[:1].isdigit() for k in np.flatnonzero(inf).tolist()):
        return None  # "1e999", 400 digits: a number too large to be a training value
    return _Col(ok, vals, filled, _digits(cells, ok) if fixed else None)


def _text_column(data: bytes, got: Fields, cells: slice, fixed: bool) -> _Col | None:
    """The column ``cells`` of a chunk's parsed cells (``numbers.decimals``) as ``_parse`` reads it:
    the cells the bulk parse left (spaces, an exponent, nan, text) are read here one by one."""
    ok, vals = got.ok[cells].copy(), got.values[cells].copy()
    starts, ends = got.starts[cells], got.ends[cells]
    filled = ends > starts
    dig = np.where(ok, np.maximum(got.places[cells], 0), -1) if fixed else None
    rest = np.flatnonzero(filled & ~ok)
    if rest.size and dig is None:  # (an exponent column, "1e-05"): float() over them at once
        cells = [data[s:e] for s, e in zip(starts[rest].tolist(), ends[rest].tolist(), strict=True)]
        try:
            got_vals = np.fromiter(map(float, cells), np.float64, len(cells))  # (float strips blanks)
        except ValueError:  # text, a blank cell: one by one below
            got_vals = None
        if got_vals is not None and np.isfinite(got_vals).all():
            ok[rest], vals[rest] = True, got_vals
            return _Col(ok, vals, filled, dig)
    if rest.size and dig is not None and _exponents(data, starts[rest], ends[rest], ok, vals, dig, rest):
        return _Col(ok, vals, filled, dig)
    for k in rest.tolist():
        cell = data[starts[k] : ends[k]].decode("utf-8").strip()
        if not cell:
            filled[k] = False
            continue
        val = _number_or_none(cell)
        if val is None:
            continue
        if math.isinf(val) and cell.lstrip("+-")[:1].isdigit():
            return None  # "1e999", 400 digits: a number too large to be a training value
        ok[k], vals[k] = True, val
        if dig is not None:
            d = digits_of(cell)
            dig[k] = -1 if d is None else d
    return _Col(ok, vals, filled, dig)


# Cells in e-notation ("9.98e-05", " 1E+03"), one per line: an lr column that showed fixed decimals at first
_EXPONENTS_RE = re.compile(rb"^[ \t]*[-+]?\d+(?:\.(\d*))?[eE]([-+]?\d{1,3})[ \t]*$", re.MULTILINE)


def _exponents(
    data: bytes,
    starts: np.ndarray,
    ends: np.ndarray,
    ok: np.ndarray,
    vals: np.ndarray,
    dig: np.ndarray,
    rest: np.ndarray,
) -> bool:
    """The cells ``rest`` of a fixed-decimals column when all are finite numbers in e-notation: their
    values and the digits each shows (``digits_of``: decimals minus the exponent) set in place, in one
    pass instead of a loop of decode/strip/float/digits_of per cell. False (nothing set) otherwise."""
    cells = [data[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]
    found = _EXPONENTS_RE.findall(b"\n".join(cells))
    if len(found) != len(cells):  # (a cell holding a newline or a carriage return is not matched)
        return False
    got = np.fromiter(map(float, cells), np.float64, len(cells))
    if not np.isfinite(got).all():
        return False
    decimals, exps = zip(*found, strict=True)
    exp_of = {x: int(x) for x in set(exps)}  # few distinct exponents
    d = np.fromiter(map(len, decimals), np.int64, len(cells)) - np.fromiter(
        map(exp_of.__getitem__, exps), np.int64, len(cells)
    )
    ok[rest], vals[rest] = True, got
    dig[rest] = np.where(np.abs(d) > 400, -1, np.maximum(d, 0))
    return True


def _finish(col: _Col, frac: bool) -> tuple[np.ndarray, int | None]:
    """A column's values as the per-row rules add them (a percentage of a fraction column becomes a
    fraction, ``as_fraction``) and the fewest digits they show."""
    vals, dig = col.vals, col.dig
    if frac:
        pct = col.ok & (vals > 1.0) & (vals <= 100.0)
        if pct.any():
            vals = vals.copy()
            for k in np.flatnonzero(pct).tolist():
                vals[k] = as_fraction(float(vals[k]), None if dig is None or dig[k] < 0 else int(dig[k]))[0]
            if dig is not None:
                dig = np.where(pct & (dig >= 0), dig + 2, dig)
    if dig is None:
        return vals, None
    shown = col.ok & (dig >= 0)
    return vals, (int(dig[shown].min()) if shown.any() else None)


def _number_or_none(cell: str) -> float | None:
    if not cell:
        return None
    try:
        return float(cell)
    except ValueError:
        return None


def _digits(cells: list[str], rows: np.ndarray) -> np.ndarray:
    """``digits_of`` of the cells of ``rows`` (numbers; -1 for None and for other rows): a plain
    decimal shows the characters after its ".", counted by C-level maps; a cell with an exponent,
    nan or inf is counted by ``digits_of`` itself."""
    n = len(cells)
    lens = np.fromiter(map(len, cells), np.int64, n)
    dots = np.fromiter(map(str.find, cells, itertools.repeat(".", n)), np.int64, n)
    out = np.where(dots >= 0, lens - dots - 1, 0)
    joined = "".join(cells)
    if not joined.isascii() or any(c in joined for c in "eEnNiI"):
        for k in np.flatnonzero(rows).tolist():
            c = cells[k]
            if not c.isascii() or any(x in c for x in "eEnNiI"):
                d = digits_of(c)
                out[k] = -1 if d is None else d
    out[~rows] = -1
    return out


def _fewest(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _fixed_decimals(rows: list[list[str]], i: int) -> bool:
    ds = {digits_of(r[i]) for r in rows if i < len(r) and r[i].strip() and _is_number(r[i])}
    return len(ds) == 1 and None not in ds


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

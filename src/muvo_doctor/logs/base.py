"""What every log reader shares: the point sink, the "no records" error, key filtering."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np

from muvo_doctor.core.history import History
from muvo_doctor.core.names import STEP_KEYS, classify, kind_of

__all__ = [
    "STEP_KEYS",
    "AddPoint",
    "Break",
    "NoRecords",
    "Sink",
    "as_sink",
    "ReadStats",
    "add_record",
    "as_fraction",
    "classify",
    "digits_of",
    "kind_of",
    "MAX_STEP",
    "json_elements",
    "load_json",
    "sane_step",
]

# history.add_point(name, step, value, digits): the readers' only output.
AddPoint = Callable[[str, int, float, "int | None"], None]


class Sink:
    """Where a reader puts its points: one at a time (``add``) or a slice of one series at once
    (``extend``). A History's ``add_point`` gets the History's bulk path (``History.add_points``),
    any other callable one call per point. ``count`` is the points put so far.
    """

    __slots__ = ("_add", "_bulk", "count")

    def __init__(self, add: AddPoint) -> None:
        self._add = add
        self.count = 0
        owner = getattr(add, "__self__", None)
        is_history = isinstance(owner, History) and getattr(add, "__func__", None) is History.add_point
        self._bulk = owner.add_points if is_history else None

    def add(self, name: str, step: int, value: float, digits: int | None) -> None:
        """One point."""
        self.count += 1
        self._add(name, step, value, digits)

    __call__ = add  # a Sink is an AddPoint too: readers that add one point at a time take either

    def extend(self, name: str, steps: np.ndarray, values: np.ndarray, digits: int | None) -> None:
        """Points of one series in order; ``digits`` the fewest any of them showed."""
        n = len(values)
        if not n:
            return
        self.count += n
        if self._bulk is not None:
            self._bulk(name, steps, values, digits)
            return
        add = self._add
        st, vs = np.asarray(steps).tolist(), np.asarray(values).tolist()
        add(name, st[0], vs[0], digits)
        for a, b in zip(st[1:], vs[1:], strict=True):
            add(name, a, b, None)


def as_sink(add: AddPoint | Sink) -> Sink:
    """The sink of a reader's ``add`` argument (a Sink is used as it is)."""
    return add if isinstance(add, Sink) else Sink(add)


class NoRecords(Exception):
    """A log that cannot be audited; the message is one line: what is wrong and what to do."""


def as_fraction(value: float, digits: int | None) -> tuple[float, int | None]:
    """A percentage printed without ``%`` (``acc: 90.0``) as a fraction with two more digits."""
    if 1.0 < value <= 100.0:
        d = None if digits is None else digits + 2
        return (round(value / 100.0, d) if d is not None else value / 100.0), d
    return value, digits


def digits_of(num: str) -> int | None:
    """Decimal places a printed number shows: ``0.3331`` -> 4, ``5e-05`` -> 5, ``3`` -> 0, nan -> None."""
    s = num.strip().lstrip("+-").lower()
    if not s or s[0] in "ni":
        return None
    mant, _, exp = s.partition("e")
    dot = mant.find(".")
    d = len(mant) - dot - 1 if dot >= 0 else 0
    if exp:
        try:
            d -= int(exp)
        except ValueError:
            return None
        if d > 400 or d < -400:
            return None
    return max(d, 0)


MAX_STEP = 1 << 53  # a step at or above this is not a step (1e30, 2**63): its record is skipped
_MAX_DEPTH = 8  # nesting kept when flattening a record (deeper parts are skipped)


class Break(NamedTuple):
    """A file read only up to a break (a truncated record, or one that fails its checksum): what
    follows it cannot be framed, so it is not read."""

    path: str
    offset: int  # byte where the first unreadable record starts
    records: int  # records read before it
    bytes_skipped: int  # from the break to the end of the file
    reason: str  # e.g. "the last record is cut off (truncated)"


class ReadStats:
    """What a reader saw: records that carried numbers, points added, the largest step, and the
    records skipped as impossible (a step of 1e30, a 400-digit number, a 128 KB field) with the
    first reason: one bad record is counted, never fatal. ``breaks``: files read only up to a break."""

    __slots__ = (
        "records", "points", "last_step", "note", "rewrites", "skipped", "first_reason", "unparsed", "breaks",
    )  # fmt: skip

    def __init__(self) -> None:
        self.rewrites = 0  # carriage-return rewrites dropped (text logs)
        self.records = 0
        self.points = 0
        self.last_step = -1
        self.note = ""  # why nothing was found, when nothing was
        self.skipped = 0
        self.first_reason = ""
        # the content is not this format (JSON that does not parse, a "CSV" without a metric
        # header): the text reader should try it. A well-formed file that holds no numbers is not.
        self.unparsed = False
        self.breaks: list[Break] = []

    def skip(self, reason: str, n: int = 1) -> None:
        """Count ``n`` skipped records; the first reason is kept for the report."""
        if n > 0:
            self.skipped += n
            if not self.first_reason:
                self.first_reason = reason


def sane_step(value: object) -> int | None:
    """A step from a logged value, or None when it cannot be one (NaN, negative, >= 2**53, a bool)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, int):
        return value if 0 <= value < MAX_STEP else None
    if isinstance(value, float) and math.isfinite(value) and 0 <= value < MAX_STEP:
        return int(value)
    return None


def _number(raw: object) -> float | None:
    """A logged value as a float; None for what is not a number. Raises OverflowError for an
    integer too large for a float (a 400-digit number is a bad record, not an infinite loss)."""
    if isinstance(raw, bool) or raw is None:
        return None
    if isinstance(raw, int):
        return float(raw)
    if isinstance(raw, float):
        return raw
    if isinstance(raw, str) and len(raw) < 64:
        try:
            val = float(raw)
        except ValueError:
            return None
        if math.isinf(val) and raw.strip().lstrip("+-")[:1].isdigit():
            raise OverflowError("a number too large to be a training value")
        return val
    return None


def add_record(record: dict[str, object], index: int, add: AddPoint, st: ReadStats, prefix: str = "") -> None:
    """Add one dict record (a JSON line, a log_history entry): numbers become points at its step.

    The step is the record's ``step``/``global_step``/``iteration`` field, else ``index``. Nested
    dicts are flattened with ``/``. String values that parse as numbers count (``"nan"``, ``"0.5"``,
    transformers 5's ``{'loss': '0.3208'}``). Digits are None: a JSON number's decimals are its
    shortest repr, not a display precision. A record whose step cannot be a step, or that holds a
    number too large for a float, is skipped and counted in ``st``.
    """
    flat: list[tuple[str, object]] = []
    _flatten(record, prefix, flat, 0)
    step = index
    items: list[tuple[str, float, int | None, bool]] = []
    for key, raw in flat:
        name, frac, is_step = classify(key)
        if is_step:
            got = sane_step(raw)
            if got is None:
                if raw is not None:
                    st.skip(f"a step that cannot be a step ({str(raw)[:20]}) in record {index}")
                    return
                continue
            step = got
            continue
        if name is None:
            continue
        try:
            val = _number(raw)
        except OverflowError:
            st.skip(f"a number too large to be a training value in record {index}")
            return
        if val is not None:
            items.append((name, val, 0 if isinstance(raw, int) else None, frac))
    if not items:
        return
    for name, val, d, frac in items:
        if frac:
            val, d = as_fraction(val, d)
        add(name, step, val, d)
    st.records += 1
    st.points += len(items)
    if step > st.last_step:
        st.last_step = step


def _flatten(obj: dict[str, object], prefix: str, out: list[tuple[str, object]], depth: int) -> None:
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            if depth < _MAX_DEPTH:
                _flatten(v, key + "/", out, depth + 1)
        else:
            out.append((key, v))


def load_json(path: str, st: ReadStats, what: str) -> object | None:
    """A whole JSON document, floats kept as strings; None (with ``st.note`` set) when it does not parse."""
    with open(path, encoding="utf-8", errors="replace") as f:
        try:
            return json.load(f, parse_float=str)
        except ValueError as exc:
            st.note = f"not valid JSON ({exc.args[0].split(':')[0]}); a truncated {what}?"
            st.unparsed = True
            return None
        except RecursionError:
            st.note = f"JSON nested too deeply to be a {what}"
            return None


# JSON tokens that matter for finding element boundaries: strings (skipped whole) and brackets.
_JSON_TOKEN_RE = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def json_elements(text: str, start: int, st: ReadStats) -> Iterator[object]:
    """The elements of the JSON array that opens just before ``start``, each parsed on its own: an
    element that does not parse (nested too deep, or cut off at the end of a truncated file) is
    skipped and counted in ``st``, and the elements after it are still read. Brackets are matched
    with a loop, not recursion, so depth costs nothing.
    """
    depth = 0
    begin = -1
    dec = json.JSONDecoder(parse_float=str)
    for m in _JSON_TOKEN_RE.finditer(text, start):
        tok = m.group(0)
        if tok[0] == '"':
            continue
        if tok in "[{":
            if depth == 0:
                begin = m.start()
            depth += 1
            continue
        if depth == 0:  # the array's own "]"
            return
        depth -= 1
        if depth == 0:
            try:
                yield dec.decode(text[begin : m.end()])
            except (ValueError, RecursionError) as exc:
                why = "nested too deeply" if isinstance(exc, RecursionError) else "not valid JSON"
                st.skip(f"an entry {why} (at character {begin})")
    if depth:
        st.skip("the file ends inside an entry (truncated): the entries before it are read")

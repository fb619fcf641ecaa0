"""JSON lines (one dict per line: W&B/MLflow exports, custom loggers) and JSON arrays of dicts."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import numpy as np

from muvo_doctor.core.names import key_of, split_of
from muvo_doctor.logs.base import (
    MAX_STEP,
    AddPoint,
    ReadStats,
    Sink,
    add_record,
    as_fraction,
    as_sink,
    classify,
    json_elements,
    load_json,
    sane_step,
)
from muvo_doctor.logs.numbers import Fields, decimals

_MAX_RECORD = 1 << 20  # a JSON line longer than this is not a metrics record: skipped, counted
_CHUNK = 2 << 20  # bytes per read
_MAX_LINE = 8 << 20  # bytes without a newline after which a line is skipped unread (> _MAX_RECORD chars)

# The fast path: runs of lines that are flat objects of plain numbers with the same keys
# ({"step": 3, "loss": 0.25}, the records of a dense log) are read a run at a time: one regex match
# per run checks every line's shape, the keys are cut out with str.replace and what is left is
# parsed all at once (numbers.decimals; float() for the few it leaves), instead of json.loads and
# Python work per line. What json.loads gives for such a line is
# known exactly: keys without escapes or JSON punctuation, each once; numbers in JSON's grammar,
# short enough that an integer fits an int64 and no float overflows. Every other line (NaN, strings,
# nesting, a bad record) goes through json.loads, so what is read is the same either way.
# (possessive: a number is followed by "," or "}", never by a digit it could give back)
_NUM = r"-?+(?:0|[1-9]\d{0,17}+)(?:\.\d{1,30}+)?+(?:[eE][-+]?+\d{1,2}+)?+"
# A value in a line's skeleton: a number after ":" and blanks, which stay (a run's pattern spells its
# blanks exactly). ASCII: a JSON number's digits are 0-9 (str \d also takes other scripts', "1\u0663").
_VALUE_RE = re.compile(rf"(?<=[: \t]){_NUM}(?=[ \t]*[,}}])", re.ASCII)
# A run's values, checked against _NUM after the bulk parse (``_json_numbers``): a pattern that only
# takes a number's bytes, between pieces spelled exactly, reads a run ~1.6x faster.
_LOOSE_NUM = r"[-+.0-9eE]++"
_NUM_B = re.compile(_NUM.encode())
_MARK = "\x00"  # where a value was, in a line's skeleton (a raw NUL makes the chunk take the per-line path)
_KEY = r'"[^"\\\x00-\x1f{},:]*"'
_PLAIN_RE = re.compile(
    rf"[ \t]*\{{[ \t]*{_KEY}[ \t]*:[ \t]*{_MARK}[ \t]*(?:,[ \t]*{_KEY}[ \t]*:[ \t]*{_MARK}[ \t]*)*\}}[ \t]*\r?"
)
_KEYS_RE = re.compile(_KEY)
# A run's lines without their keys: "v,v,...,v," per line. A piece between values holds one "," (a
# key holds none) and the last piece the line's "}": deleting every other byte of the pieces leaves
# that, in one bytes.translate, where no such byte can be part of a number; a piece holding one
# ("step", "epoch": an "e", a digit) is cut out with bytes.replace first.
_CLOSE_AS_SEP = bytes.maketrans(b"}", b",")
_NUMBER_BYTES = frozenset(b"0123456789.eE+-")
_NEG_ZERO_RE = re.compile(rb"-0(?=,)")  # the integer -0: json.loads gives 0, numpy -0.0
_MAX_SKELETON = 10_000  # a skeleton this short cannot be a line over _MAX_RECORD characters
_MIN_RUN = 4  # shorter runs are cheaper line by line
_MAX_PLANS = 1000  # line shapes remembered (a log with a new key on every line reads line by line)


def read_jsonl(path: str, add: AddPoint | Sink) -> ReadStats:
    """Stream a JSON-lines file; each dict line is a record. Lines that are not JSON are counted;
    a line that is JSON but cannot be a record (too long, too deep) is skipped and counted.

    Floats are parsed as strings first so the digits they were written with are kept. Read in
    chunks of whole lines (memory bounded for any file size); runs of flat numeric lines with the
    same keys are read in bulk (``numbers.decimals``), every other line with json.loads.
    """
    reader = _JsonLines(as_sink(add))
    for raw in _chunks(path, reader):
        reader.feed(raw)
    st = reader.st
    if not st.records:
        st.unparsed = reader.bad > reader.index  # mostly not JSON: Python dicts, or text that starts with "{"
        st.note = (
            f"no JSON line held a number ({reader.bad} lines were not JSON)"
            if reader.bad
            else "no JSON line held a number"
        )
    return st


def _chunks(path: str, reader: _JsonLines) -> Iterator[bytes]:
    """The file in chunks of whole lines. A line of more than ``_MAX_LINE`` bytes is skipped
    as it streams past (never held whole) and counted as too long."""
    with open(path, "rb") as f:
        carry = b""
        skipping = 0  # bytes of an over-long line skipped so far
        while True:
            raw = f.read(_CHUNK)
            if not raw:
                if skipping:
                    reader.too_long(skipping + len(carry))
                elif carry:
                    yield carry
                return
            buf = carry + raw if carry else raw
            cut = buf.rfind(b"\n")
            if skipping:
                end = buf.find(b"\n")
                if end < 0:
                    skipping += len(buf)
                    carry = b""
                    continue
                reader.too_long(skipping + end)
                skipping = 0
                buf = buf[end + 1 :]
                cut = buf.rfind(b"\n")
            if cut < 0:
                if len(buf) > _MAX_LINE:
                    skipping, carry = len(buf), b""
                else:
                    carry = buf
                continue
            carry = buf[cut + 1 :]
            yield buf[: cut + 1]
            if len(carry) > _MAX_LINE:
                skipping, carry = len(carry), b""


class _JsonLines:
    """The state of one JSON-lines read: counters, the split context, and the plans of the line
    shapes seen (skeleton -> keys and what each key is)."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.st = ReadStats()
        self.ctx = _Splits()
        self.index = 0  # dict lines so far (a record's step when it prints none)
        self.bad = 0  # lines that are not JSON
        self.plans: dict[str, _Plan | None] = {}

    def too_long(self, nbytes: int) -> None:
        self.st.skip(f"a {nbytes >> 10} KB line (line {self.index + self.bad + 1})")

    def feed(self, raw: bytes) -> None:
        """Whole lines of a chunk, in order."""
        text = raw.decode("utf-8", errors="replace")
        if _MARK in text:
            for line in text.split("\n"):
                self.line(line)
            return
        # runs are found in the bytes where they are the text's (ASCII): a bytes pattern is ~25% faster
        ascii = raw.isascii()
        pos, size = 0, len(text)
        while pos < size:
            eol = text.find("\n", pos)
            if eol < 0:
                eol = size
            plan = self._plan(text[pos:eol])
            # _Splits.place changes only evaluation records after a training step: those go line by line
            m = None
            if plan is not None and (plan.training or self.ctx.train_step < 0 or not plan.signals):
                m = plan.run_b.match(raw, pos) if ascii else plan.run_re.match(text, pos)
            if m is None:
                self.line(text[pos:eol])
                pos = eol + 1
                continue
            run = raw[pos : m.end()] if ascii else text[pos : m.end()].encode()
            n = run.count(b"\n") + (not run.endswith(b"\n"))
            if n < _MIN_RUN or not self._run(plan, run, n):
                for line in text[pos : m.end()].split("\n")[:n]:
                    self.line(line)
            pos = m.end()

    def _plan(self, line: str) -> _Plan | None:
        skel = _VALUE_RE.sub(_MARK, line)
        plan = self.plans.get(skel, False)
        if plan is False:
            plan = _Plan.of(skel) if len(self.plans) < _MAX_PLANS else None
            self.plans[skel] = plan
        return plan

    def _run(self, plan: _Plan, run: bytes, n: int) -> bool:
        """``n`` lines of one plain shape (UTF-8), read in bulk; a line whose step cannot be a step
        goes through ``line`` (which skips and counts it). False when the run needs the per-line path."""
        c = len(plan.keys)
        data = run
        for piece, sep in plan.replaced:
            data = data.replace(piece, sep)
        data = data.translate(_CLOSE_AS_SEP, plan.dropped)  # "v,v,v,v,...,v,"
        if _NEG_ZERO_RE.search(data):
            return False
        got = decimals(data)
        if len(got.values) != n * c + 1 or not _plain_numbers(data, got):  # (the last field is empty: "v,")
            return False
        vals = got.values[:-1]
        places = got.places[:-1]
        rest = np.flatnonzero(~got.ok[:-1])  # an exponent ("1e-05"), many digits: float() each
        if rest.size:
            cells = [
                data[s:e] for s, e in zip(got.starts[rest].tolist(), got.ends[rest].tolist(), strict=True)
            ]
            if not all(map(_NUM_B.fullmatch, cells)):
                return False
            vals[rest] = np.fromiter(map(float, cells), np.float64, len(cells))
            places[rest] = [0 if b"." in x or b"e" in x or b"E" in x else -1 for x in cells]
        vals = vals.reshape(n, c)
        is_int = (places < 0).reshape(n, c) if plan.signals else None
        bad = np.zeros(n, bool)
        for j in plan.step_cols:
            s = vals[:, j]
            bad |= ~((s >= 0) & (s < MAX_STEP))
        done = 0
        lines = run.decode().split("\n") if bad.any() else []
        for b in np.flatnonzero(bad).tolist():
            self._bulk(plan, vals[done:b], None if is_int is None else is_int[done:b])
            self.line(lines[b])
            done = b + 1
        self._bulk(plan, vals[done:], None if is_int is None else is_int[done:])
        return True

    def _bulk(self, plan: _Plan, vals: np.ndarray, is_int: np.ndarray | None) -> None:
        """Lines of one plain shape whose steps are all sane: what add_record would add, per series."""
        n = len(vals)
        if not n:
            return
        if plan.step_cols:
            steps = vals[:, plan.step_cols[-1]].astype(np.int64)  # every step sane: the last one wins
        else:
            steps = np.arange(self.index, self.index + n, dtype=np.int64)
        self.index += n
        if plan.training:  # _Splits.place: the last training step and epoch
            if plan.ctx_step is not None:
                self.ctx.train_step = int(vals[-1, plan.ctx_step])
            if plan.epoch_col is not None:
                e = vals[:, plan.epoch_col]
                ok = np.flatnonzero((e >= 0) & (e < MAX_STEP))
                if ok.size:
                    self.ctx.epoch = int(e[ok[-1]])
        if not plan.signals:
            return
        for name, cols in plan.signals.items():
            parts = []
            digits: int | None = None
            for j, frac in cols:
                v, d = _column(vals[:, j], None if is_int is None else is_int[:, j], frac)
                parts.append(v)
                if d is not None and (digits is None or d < digits):
                    digits = d
            if len(parts) == 1:
                self.sink.extend(name, steps, parts[0], digits)
            else:  # two keys of one signal ("loss", "total_loss"): in line order, as add_record adds them
                self.sink.extend(name, np.repeat(steps, len(parts)), np.stack(parts, 1).ravel(), digits)
        st = self.st
        st.records += n
        st.points += n * plan.npoints
        top = int(steps.max())
        if top > st.last_step:
            st.last_step = top

    def line(self, line: str) -> None:
        """One line (the ``\\n``-split text; universal newlines also end a line at a lone ``\\r``)."""
        for piece in line.split("\r") if "\r" in line else (line,):
            self._one(piece)

    def _one(self, line: str) -> None:
        st = self.st
        line = line.strip()
        if not line:
            return
        if len(line) > _MAX_RECORD:
            st.skip(f"a {len(line) >> 10} KB line (line {self.index + self.bad + 1})")
            return
        try:
            obj = json.loads(line, parse_float=str)
        except ValueError:
            self.bad += 1
            return
        except RecursionError:
            st.skip(f"JSON nested too deeply (line {self.index + self.bad + 1})")
            return
        if isinstance(obj, dict):
            add_record(self.ctx.place(obj), self.index, self.sink, st)
            self.index += 1


class _Splits:
    """Evaluation records among training records (MMEngine's ``vis_data/scalars.json``: training
    records hold ``loss``/``lr`` and ``step`` = the iteration; evaluation records hold only metrics
    and ``step`` = the epoch). An evaluation record's metrics without a split of their own are
    ``val``; a step that is the current epoch, below the last training step, is placed at that step."""

    def __init__(self) -> None:
        self.train_step = -1
        self.epoch: int | None = None

    def place(self, obj: dict[str, object]) -> dict[str, object]:
        names = [classify(k)[0] for k in obj]
        # a loss or a learning rate makes a training record (an accuracy alone does not)
        if any(n is not None and (n.startswith("train/loss") or n == "optim/lr") for n in names):
            step = sane_step(obj.get("step", obj.get("iter")))
            if step is not None:
                self.train_step = step
            epoch = sane_step(obj.get("epoch"))
            self.epoch = epoch if epoch is not None else self.epoch
            return obj
        if self.train_step < 0 or not any(n is not None for n in names):
            return obj
        out: dict[str, object] = {}
        for k, v in obj.items():
            kind = classify(k)
            if kind[0] is not None and split_of(key_of(k))[0] is None:
                k = f"val_{k}"
            elif kind[2] and sane_step(v) is not None:
                step = sane_step(v)
                if step is not None and step < self.train_step and step == self.epoch:
                    v = self.train_step  # "step": 3 in an evaluation after epoch 3 means that epoch's end
            out[k] = v
        return out


def read_json_array(path: str, add: AddPoint) -> ReadStats:
    """A JSON document that is a list of dicts (or ``{"log_history": [...]}``-like: any list of dicts)."""
    st = ReadStats()
    doc = load_json(path, st, "file")
    if doc is None:
        doc = _salvage(path, st)
        if doc is None:
            return st
    rows = doc if isinstance(doc, list) else _first_list_of_dicts(doc)
    for i, obj in enumerate(rows or []):
        if isinstance(obj, dict):
            add_record(obj, i, add, st)
    if not st.records:
        st.note = "no list of records with numbers in this JSON document"
    return st


def _salvage(path: str, st: ReadStats) -> list[object] | None:
    """The elements that parse of a top-level JSON array that does not parse whole (truncated, or
    one element nested too deeply)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    start = text.find("[")
    if start < 0 or text[:start].strip():
        return None
    rows = [r for r in json_elements(text, start + 1, st) if isinstance(r, dict)]
    if not rows:
        return None
    st.unparsed, st.note = False, ""
    return rows


def _first_list_of_dicts(doc: object) -> list[object] | None:
    if isinstance(doc, dict):
        for v in doc.values():
            if isinstance(v, list) and v and isinstance(v[0], dict):
                return v
    return None


class _Plan:
    """What the keys of one line shape are: signals (name -> columns, each with its fraction flag),
    step columns, and what the split context reads of it."""

    __slots__ = (
        "keys",
        "replaced",
        "dropped",
        "run_re",
        "run_b",
        "signals",
        "step_cols",
        "npoints",
        "training",
        "ctx_step",
        "epoch_col",
    )

    @staticmethod
    def of(skel: str) -> _Plan | None:
        if len(skel) >= _MAX_SKELETON or not _PLAIN_RE.fullmatch(skel):
            return None
        keys = [k[1:-1] for k in _KEYS_RE.findall(skel)]
        if len(set(keys)) != len(keys):
            return None  # a repeated key: json keeps the last value at the first place
        plan = _Plan()
        plan.keys = keys
        # The text between values ('{"step":', ', "loss":', ... '}'), and the run of lines that have it.
        between = skel.split(_MARK)
        pieces = [p.encode() for p in between]
        plan.replaced = [
            (p, b"" if j == 0 else b",") for j, p in enumerate(pieces[:-1]) if _NUMBER_BYTES.intersection(p)
        ]
        kept = [p for j, p in enumerate(pieces) if j == len(pieces) - 1 or not _NUMBER_BYTES.intersection(p)]
        plan.dropped = bytes(set(b"".join(kept)) - set(b",}") | set(b" \t\r\n"))
        line = re.escape(between[0]) + "".join(rf"{_LOOSE_NUM}{re.escape(p)}" for p in between[1:])
        plan.run_re = re.compile(rf"(?:{line}(?:\n|\Z))+", re.ASCII)
        plan.run_b = re.compile(rf"(?:{line}(?:\n|\Z))+".encode())
        plan.signals = {}
        plan.step_cols = []
        names = []
        for j, k in enumerate(keys):
            name, frac, is_step = classify(k)
            names.append(name)
            if is_step:
                plan.step_cols.append(j)
            elif name is not None:
                plan.signals.setdefault(name, []).append((j, frac))
        plan.npoints = sum(len(c) for c in plan.signals.values())
        plan.training = any(n is not None and (n.startswith("train/loss") or n == "optim/lr") for n in names)
        plan.ctx_step = (
            keys.index("step") if "step" in keys else keys.index("iter") if "iter" in keys else None
        )
        plan.epoch_col = keys.index("epoch") if "epoch" in keys else None
        return plan


def _plain_numbers(data: bytes, got: Fields) -> bool:
    """Whether the fields ``decimals`` parsed (all but the last, empty one) are numbers as _NUM spells
    them: no "." first or last, no leading zero, at most 18 digits before the "."."""
    ok = np.flatnonzero(got.ok[:-1])
    if not ok.size:
        return True
    b = np.frombuffer(data, np.uint8)
    start, end, places = got.starts[ok], got.ends[ok], got.places[ok]
    first = start + (b[start] == ord("-"))  # its first digit or "." (a parsed field holds a digit)
    lead = b[first]
    after = b[np.minimum(first + 1, len(b) - 1)]
    whole = np.where(places >= 0, end - places - 1, end) - first  # digits before the "."
    bad = (lead == ord(".")) | (b[end - 1] == ord(".")) | (whole > 18)
    bad |= (lead == ord("0")) & (first + 1 < end) & (after != ord("."))
    return not bad.any()


def _column(v: np.ndarray, is_int: np.ndarray | None, frac: bool) -> tuple[np.ndarray, int | None]:
    """One key's values as add_record adds them, and the fewest digits they show: a JSON integer
    shows 0 (2 once a percentage 0..100 becomes a fraction, ``as_fraction``), a float none."""
    if is_int is not None and not is_int.any():
        is_int = None
    if not frac:
        return v, None if is_int is None else 0
    v = v.copy()
    pct = (v > 1.0) & (v <= 100.0)
    if is_int is None:
        v[pct] /= 100.0
        return v, None
    v[pct & ~is_int] /= 100.0
    for i in np.flatnonzero(pct & is_int).tolist():
        v[i] = as_fraction(float(v[i]), 0)[0]  # Python's round, as add_record does
    return v, 0 if (is_int & ~pct).any() else 2

"""The key/value scan of a batch of prepared text, read line shape by line shape.

``KV_RE`` is tried at every letter of a log and costs ~1 us per pair it finds: most of what reading
a console log costs. A log prints a few line shapes over and over (a progress bar, a logging line,
an epoch summary) that differ only in their digits, and the pattern treats every run of digits
alike (it tests for "a digit", never for how many), so it finds the same pairs, at the same places,
in any two lines that are equal once each run of digits is one digit. ``PairScanner`` runs it once
per shape (a line with its digit runs collapsed), turns the pairs it finds into a pattern for that
shape, the shape's own text with the digit runs and the pairs' groups as captures, and reads all
the lines of a shape in one ``findall``: a literal pattern, several times cheaper. What comes out
(``Scan``) is what ``KV_RE.findall(text.replace("\\n", NL_MARK))`` gives, converted column by column
(``Scan.of_pairs``); a batch with too many new shapes (every line different) or a long line is
scanned that way. A shape also knows which of its groups are the same on every line (no digit in
them, or inside the newline mark): those are converted once per shape, not once per pair.
"""

from __future__ import annotations

import re
from itertools import chain
from typing import NamedTuple

import numpy as np

from muvo_doctor.logs.text_pairs import KV_RE, NL_MARK, to_float, to_int

_DIGIT_RUN_RE = re.compile(r"\d+")  # str \d, as in KV_RE: other scripts' digits too
_RUNS_RE = re.compile(rb"0+")  # the digit runs of a shape key
# A line's shape key: its bytes with every ASCII digit a "0" (one translate, no regex). Lines
# whose runs differ only in length get different keys but the same pattern; another script's digit
# stays itself, a literal in its shape's pattern.
_ZEROS = bytes.maketrans(b"0123456789", b"0" * 10)
_GROUPS = 6  # KV_RE's groups: key, value, decimals, exponent, percent, denominator
_K, _V, _F, _X, _P, _D = range(_GROUPS)
_MAX_SHAPES = 500  # line shapes remembered per read (their patterns are compiled)
_MAX_SHAPE_BYTES = 1000  # a longer line is scanned whole: the shapes' memory stays bounded (~1 MB)

Pairs = list[tuple[str, ...]]  # KV_RE.findall's: the six groups of each pair


def _floats(vs: tuple[str, ...] | list[str]) -> np.ndarray:
    if len(vs) > 64:
        distinct = set(vs)
        if 2 * len(distinct) < len(vs):  # a log prints values with few digits: each parsed once
            of = {v: to_float(v) for v in distinct}
            return np.fromiter(map(of.__getitem__, vs), np.float64, len(vs))
    try:
        return np.fromiter(map(float, vs), np.float64, len(vs))
    except ValueError:  # "nanxxx" (a format's fill character): the slow path
        return np.fromiter(map(to_float, vs), np.float64, len(vs))


def _ints(xs: tuple[str, ...] | list[str]) -> np.ndarray:
    of = {x: to_int(x) for x in set(xs)}  # few distinct exponents or totals: a map, not a loop
    return np.fromiter(map(of.__getitem__, xs), np.int64, len(xs))


def _lens(xs: tuple[str, ...] | list[str]) -> np.ndarray:
    return np.fromiter(map(len, xs), np.int64, len(xs))


class Scan(NamedTuple):
    """The pairs of a batch (newline marks included), in order, as arrays: each pair's key (an index
    into ``keys``, the batch's distinct keys), its value (``to_float`` of the printed number), the
    digits printed after its point, its exponent and ratio denominator (``to_int``), the length of
    the denominator, and whether it was a percentage. ``exps``, ``dens``/``den_len`` and ``pct`` are
    None when no pair of the batch printed one."""

    keys: list[str]
    key: np.ndarray
    vals: np.ndarray
    decimals: np.ndarray
    exps: np.ndarray | None
    pct: np.ndarray | None
    dens: np.ndarray | None
    den_len: np.ndarray | None
    text: str  # what was scanned (see ``printed``)

    @classmethod
    def of_pairs(cls, pairs: Pairs, text: str) -> Scan:
        """The columns of ``KV_RE.findall``'s pairs (the reference every scan equals)."""
        ks, vs, fs, xs, ps, ds = zip(*pairs, strict=True)
        n = len(ks)
        keys = list(dict.fromkeys(ks))
        kid = {k: i for i, k in enumerate(keys)}
        dens = _ints(ds) if ds.count("") != n else None
        return cls(
            keys=keys,
            key=np.fromiter(map(kid.__getitem__, ks), np.int64, n),
            vals=_floats(vs),
            decimals=_lens(fs),
            exps=_ints(xs) if xs.count("") != n else None,
            pct=np.fromiter(map("%".__eq__, ps), bool, n) if "%" in ps else None,
            dens=dens,
            den_len=None if dens is None else _lens(ds),
            text=text,
        )

    def printed(self) -> tuple[str, ...]:
        """The values as printed, in order: the batch scanned again whole (for rare checks only)."""
        return tuple(p[_V] for p in KV_RE.findall(self.text.replace("\n", NL_MARK)))


class _Shape:
    """One line shape: its pattern (over NL_MARK + line), the pairs per line, and per group of each
    pair either its text (no digit in it: the same on every line) or the index of its capture."""

    __slots__ = ("rx", "pairs", "groups", "captures", "rows", "keys", "captured", "printed")

    def __init__(self, unit: str) -> None:
        matches = list(KV_RE.finditer(unit))
        self.pairs = len(matches)
        self.groups: list[list[str | int]] = [[] for _ in range(_GROUPS)]
        # (position, 0 = close / 1 = open, tie order, group slot): closes before opens at a position,
        # inner groups (decimals, exponent, inside the value) closed first and opened last
        events: list[tuple[int, int, int, int]] = []
        slots: list[tuple[int, int]] = []  # (pair, group) of each captured group
        for j, m in enumerate(matches):
            for g in range(_GROUPS):
                s, e = m.span(g + 1)
                text = m.group(g + 1) or ""
                # the same on every line: no digit in it (a digit run is the only difference between
                # the lines of a shape), or inside the newline mark that starts each line
                if s < 0 or not _DIGIT_RUN_RE.search(text) or e <= len(NL_MARK):
                    self.groups[g].append(text)
                    continue
                slot = len(slots)
                slots.append((j, g))
                self.groups[g].append(-1)  # its capture index, once the pattern is written
                events.append((s, 1, -e, slot))
                events.append((e, 0, -s, slot))
        events.sort()
        out: list[str] = []
        pos = 0
        n_open = 0
        for at, kind, _tie, slot in events:
            out.append(_literal(unit[pos:at]))
            pos = at
            if kind:
                j, g = slots[slot]
                self.groups[g][j] = n_open
                n_open += 1
                out.append("(")
            else:
                out.append(")")
        out.append(_literal(unit[pos:]))
        self.captures = n_open
        self.rx = re.compile("".join(out))
        # the constant groups converted once: per pair its value, decimals, exponent, denominator
        # and the denominator's length, and whether it is a percentage (0 where a group is captured)
        const = [[x if isinstance(x, str) else "0" for x in self.groups[g]] for g in range(_GROUPS)]
        self.rows = (
            _floats(const[_V]),
            _lens(const[_F]),
            _ints(const[_X]),
            _ints(const[_D]),
            _lens(const[_D]),
            np.asarray([x == "%" for x in const[_P]], bool),
        )
        self.keys = [k if isinstance(k, str) else None for k in self.groups[_K]]  # None: captured
        # (group, pair, capture index) of each captured group; per group, whether it printed anything
        self.captured = [
            (g, j, spec)
            for g in range(_GROUPS)
            for j, spec in enumerate(self.groups[g])
            if isinstance(spec, int)
        ]
        self.printed = [any(x != "" for x in self.groups[g]) for g in range(_GROUPS)]


def _literal(text: str) -> str:
    """A piece of a shape as a pattern: its digits (each one a collapsed run) match a run of digits."""
    return r"\d++".join(re.escape(t) for t in re.split("0+", text))


class PairScanner:
    """``Scan.of_pairs(KV_RE.findall(text.replace("\\n", NL_MARK)))``, read by line shape, with the
    shapes seen kept across batches."""

    def __init__(self) -> None:
        self.shapes: dict[bytes, _Shape] = {}
        # shapes by their digit runs collapsed: lines whose runs differ only in length ("5/525",
        # "100/525") share a pattern, so they are read in one findall
        self.patterns: dict[bytes, _Shape] = {}

    def scan(self, text: str) -> Scan | None:
        """The pairs of prepared text (lines after a newline) as ``Scan``; None when there is none."""
        parts = text.split("\n")
        lines = parts[1:]
        skels = text.encode("utf-8", "surrogatepass").translate(_ZEROS).split(b"\n")[1:]
        shapes = self.shapes
        uniq = dict.fromkeys(skels)  # the batch's shapes, in order of first line
        new = [s for s in uniq if s not in shapes]
        if (
            len(new) > len(lines) // 8 + 16
            or len(shapes) + len(new) > _MAX_SHAPES
            or any(len(s) > _MAX_SHAPE_BYTES for s in new)
        ):
            return _whole(text)  # a pattern per line would cost more than it saves, or hold too much
        for s in new:
            runs = _RUNS_RE.sub(b"0", s)
            if runs not in self.patterns:
                self.patterns[runs] = _Shape(NL_MARK + s.decode("utf-8", "surrogatepass"))
            shapes[s] = self.patterns[runs]
        ids: dict[int, int] = {}  # shape (by identity) -> its place in order
        order: list[_Shape] = []
        index: dict[bytes, int] = {}
        for s in uniq:
            sh = shapes[s]
            if id(sh) not in ids:
                ids[id(sh)] = len(order)
                order.append(sh)
            index[s] = ids[id(sh)]
        sid = np.fromiter(map(index.__getitem__, skels), np.int64, len(skels))
        per_line = np.asarray([sh.pairs for sh in order], np.int64)[sid]
        head = KV_RE.findall(parts[0]) if parts[0] else []
        starts = np.cumsum(per_line) - per_line + len(head)
        n = len(head) + int(per_line.sum())
        if not n:
            return None
        got = _Columns(n)
        if head:
            got.head(Scan.of_pairs(head, parts[0]))
        by_shape = np.argsort(sid, kind="stable")
        bounds = np.searchsorted(sid[by_shape], np.arange(len(order) + 1))
        for i, sh in enumerate(order):
            if not sh.pairs:
                continue
            rows = by_shape[bounds[i] : bounds[i + 1]]
            found = sh.rx.findall(NL_MARK + NL_MARK.join([lines[r] for r in rows.tolist()]))
            if len(found) != len(rows):  # (cannot happen: every line of the shape matches once)
                return _whole(text)
            got.shape(sh, starts[rows], list(chain.from_iterable(found)) if sh.captures > 1 else found)
        return got.scan(text)


class _Columns:
    """A Scan put together shape by shape: the groups that are the same on every line of a shape
    are written per shape (one broadcast each); the captured ones are gathered per group as
    (positions, strings) and converted all at once at the end."""

    def __init__(self, n: int) -> None:
        self.keys: dict[str, int] = {}
        self.key = np.empty(n, np.int64)
        # value, decimals, exponent, denominator, its length, percentage
        self.cols = [np.empty(n, np.float64), *(np.empty(n, np.int64) for _ in range(4)), np.empty(n, bool)]
        self.at: list[list[np.ndarray]] = [[] for _ in range(_GROUPS)]  # captured: positions per group
        self.strs: list[list[list[str]]] = [[] for _ in range(_GROUPS)]  # and their strings
        self.seen = [False] * _GROUPS  # a group printed somewhere (an exponent, "%", a ratio)

    def head(self, h: Scan) -> None:
        """The pairs before the first newline, converted by ``Scan.of_pairs``."""
        m = len(h.key)
        ids = np.asarray([self.keys.setdefault(k, len(self.keys)) for k in h.keys], np.int64)
        self.key[:m] = ids[h.key]
        zeros = np.zeros(m, np.int64)
        for col, x in zip(self.cols, (h.vals, h.decimals, h.exps, h.dens, h.den_len, h.pct), strict=True):
            col[:m] = zeros if x is None else x
        self.seen[_X] |= h.exps is not None
        self.seen[_D] |= h.dens is not None
        self.seen[_P] |= h.pct is not None

    def shape(self, sh: _Shape, starts: np.ndarray, caps: list[str]) -> None:
        """The lines of one shape, whose first pairs are at ``starts``; ``caps``: their captures, line
        by line."""
        at = starts[:, None] + np.arange(sh.pairs)  # (lines, pairs): each pair's position
        keys = self.keys
        self.key[at] = [0 if k is None else keys.setdefault(k, len(keys)) for k in sh.keys]  # (None: later)
        for col, row in zip(self.cols, sh.rows, strict=True):
            col[at] = row
        for g, j, spec in sh.captured:
            self.at[g].append(at[:, j])
            self.strs[g].append(caps[spec :: sh.captures])
        self.seen = [a or b for a, b in zip(self.seen, sh.printed, strict=True)]

    def scan(self, text: str) -> Scan:
        vals, decimals, exps, dens, den_len, pct = self.cols
        at = [np.concatenate(a) if a else None for a in self.at]
        strs = [list(chain.from_iterable(s)) for s in self.strs]
        if at[_K] is not None:  # keys with digits in them ("top5", "mAP50")
            keys = self.keys
            self.key[at[_K]] = [keys.setdefault(k, len(keys)) for k in strs[_K]]
        if at[_V] is not None:
            vals[at[_V]] = _floats(strs[_V])
        if at[_F] is not None:
            decimals[at[_F]] = _lens(strs[_F])
        if at[_X] is not None:
            exps[at[_X]] = _ints(strs[_X])
        if at[_D] is not None:
            dens[at[_D]] = _ints(strs[_D])
            den_len[at[_D]] = _lens(strs[_D])
        return Scan(
            keys=list(self.keys),
            key=self.key,
            vals=vals,
            decimals=decimals,
            exps=exps if self.seen[_X] else None,
            pct=pct if self.seen[_P] else None,
            dens=dens if self.seen[_D] else None,
            den_len=den_len if self.seen[_D] else None,
            text=text,
        )


def _whole(text: str) -> Scan | None:
    pairs = KV_RE.findall(text.replace("\n", NL_MARK))
    return Scan.of_pairs(pairs, text) if pairs else None

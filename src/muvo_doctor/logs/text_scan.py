"""The key/value scan of a batch of prepared text, read line shape by line shape.

``KV_RE`` is tried at every letter of a log and costs ~1 us per pair it finds: most of what reading
a console log costs. A log prints a few line shapes over and over (a progress bar, a logging line,
an epoch summary) that differ only in their digits, and the pattern treats every run of digits
alike (it tests for "a digit", never for how many), so it finds the same pairs, at the same places,
in any two lines that are equal once each run of digits is one digit. ``PairScanner`` runs it once
per shape (a line with its digit runs collapsed), turns the pairs it finds into a pattern for that
shape, the shape's own text with the digit runs and the pairs' groups as captures, and reads all
the lines of a shape in one ``findall``: a literal pattern, several times cheaper. What comes out
is what ``KV_RE.findall(text.replace("\\n", NL_MARK))`` gives, column by column; a batch with too
many new shapes (every line different) or a long line is scanned that way.
"""

from __future__ import annotations

import re

import numpy as np

from muvo_doctor.logs.text_pairs import KV_RE, NL_MARK

_DIGIT_RUN_RE = re.compile(r"\d+")  # str \d, as in KV_RE: other scripts' digits too
# A line's shape key: its bytes with every ASCII digit a "0" (one translate, no regex). Lines
# whose runs differ only in length get different keys but the same pattern; another script's digit
# stays itself, a literal in its shape's pattern.
_ZEROS = bytes.maketrans(b"0123456789", b"0" * 10)
_GROUPS = 6  # KV_RE's groups: key, value, decimals, exponent, percent, denominator
_MAX_SHAPES = 500  # line shapes remembered per read (their patterns are compiled)
_MAX_SHAPE_BYTES = 1000  # a longer line is scanned whole: the shapes' memory stays bounded (~1 MB)

Columns = tuple[tuple[str, ...], ...]


class _Shape:
    """One line shape: its pattern (over NL_MARK + line), the pairs per line, and per group of each
    pair either its text (no digit in it: the same on every line) or the index of its capture."""

    __slots__ = ("rx", "pairs", "groups", "captures")

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
                if s < 0 or not _DIGIT_RUN_RE.search(text):
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


def _literal(text: str) -> str:
    """A piece of a shape as a pattern: its digits (each one a collapsed run) match a run of digits."""
    return r"\d++".join(re.escape(t) for t in re.split("0+", text))


class PairScanner:
    """``KV_RE.findall(text.replace("\\n", NL_MARK))`` as columns, with the shapes seen kept across
    batches."""

    def __init__(self) -> None:
        self.shapes: dict[bytes, _Shape] = {}

    def columns(self, text: str) -> Columns | None:
        """The pairs of prepared text (lines after a newline) as six columns of strings, in order:
        key, value, decimals, exponent, percent, denominator; None when there is none."""
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
            return _findall(text)  # a pattern per line would cost more than it saves, or hold too much
        for s in new:
            shapes[s] = _Shape(NL_MARK + s.decode("utf-8", "surrogatepass"))
        index = {s: i for i, s in enumerate(uniq)}
        order = [shapes[s] for s in index]
        sid = np.fromiter(map(index.__getitem__, skels), np.int64, len(skels))
        per_line = np.asarray([sh.pairs for sh in order], np.int64)[sid]
        head = KV_RE.findall(parts[0]) if parts[0] else []
        starts = np.cumsum(per_line) - per_line + len(head)
        n = len(head) + int(per_line.sum())
        if not n:
            return None
        cols = [np.empty(n, object) for _ in range(_GROUPS)]
        for g in range(_GROUPS):
            cols[g][: len(head)] = [h[g] for h in head]
        by_shape = np.argsort(sid, kind="stable")
        bounds = np.searchsorted(sid[by_shape], np.arange(len(order) + 1))
        for i, sh in enumerate(order):
            if not sh.pairs:
                continue
            rows = by_shape[bounds[i] : bounds[i + 1]]
            got = sh.rx.findall(NL_MARK + NL_MARK.join([lines[r] for r in rows.tolist()]))
            if len(got) != len(rows):  # (cannot happen: every line of the shape matches once)
                return _findall(text)
            caps = list(zip(*got, strict=True)) if sh.captures > 1 else [got]
            at = starts[rows]
            for g in range(_GROUPS):
                col = cols[g]
                for j, spec in enumerate(sh.groups[g]):
                    col[at + j] = spec if isinstance(spec, str) else caps[spec]
        return tuple(tuple(c.tolist()) for c in cols)


def _findall(text: str) -> Columns | None:
    pairs = KV_RE.findall(text.replace("\n", NL_MARK))
    return tuple(zip(*pairs, strict=True)) if pairs else None

"""Tables in printed text: Markdown/ASCII tables (``| epoch | loss |``, an optional group row of split
words above the titles) and whitespace tables whose header row names the columns (Ultralytics).
Their rows become ``key=value`` pairs; the open table's columns carry over to the next batch."""

from __future__ import annotations

import re
from collections.abc import Iterator

from muvo_doctor.core.names import SPLITS

# Tables. A header row names the columns; the rows under it hold one number per column.
_PIPE_ROW_RE = re.compile(r"^[ \t]*\|[^\n]*\|[ \t]*$", re.MULTILINE)
_PIPE_START_RE = re.compile(rb"\n[ \t]*\|")
_RULE_CELL_RE = re.compile(r"^:?-{2,}:?$|^=+$")
# Titles, then nothing or a progress bar (Ultralytics prints its validation header with one).
# It runs on every chunk, so it must fail fast on ordinary lines: possessive quantifiers, and
# anchored on "\n", a literal the engine skips to (an "\A|\n" alternation is tried at every
# character: 2.9 ms per 160k characters, 0.3 ms this way); a header on the text's first line is
# matched by its own "\A" pattern (``_headers``).
_HEADER = r"[ \t]*+([A-Za-z][\w()@.\-%/]*+(?:[ \t]++[A-Za-z][\w()@.\-%/]*+){2,}+[ \t]*+(?::[ \t][^\n]*%\|[^\n]*)?)(?=\n)"
_HEADER_RE = re.compile("\n" + _HEADER)
_FIRST_HEADER_RE = re.compile(_HEADER)
_NAN_RE = re.compile(r"^(?:nan|inf|infinity)$", re.IGNORECASE)
_CELL_NUM_RE = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(%|/\d+|[KMG])?$")
# A duration cell ("00:12", "1:02:03", fastai's "time" column): fits a row, is not a value.
_TIME_CELL_RE = re.compile(r"^\d+(?::\d\d){1,2}$")
# Table column titles that are not keys by themselves.
_COLUMN_ALIASES = {"p": "precision", "r": "recall", "box(p": "precision", "mask(p": "mask_precision"}


def _pipe_lines(probe: bytes) -> bool:
    """Some line starts with "|" (a table row, or fairseq's "| epoch 001 | ..."); tqdm's mid-line
    bars do not count. Substring tests only: this runs on every chunk that holds a "|"."""
    return probe.lstrip(b" \t")[:1] == b"|" or _PIPE_START_RE.search(probe) is not None


def _row_tokens(line: str) -> list[str]:
    """A table row's cells: the text before a progress bar (": 100%|...") split at blanks."""
    return (line.split(": ", 1)[0] if ": " in line else line).split()


def _row_fits(line: str, n: int) -> bool:
    toks = _row_tokens(line)
    return len(toks) == n and all(_CELL_NUM_RE.match(t) or _TIME_CELL_RE.match(t) for t in toks[1:])


def _next_line(text: str, pos: int) -> str | None:
    """The next non-blank line after ``pos`` (the end of a line), or None at the end of the batch."""
    while pos < len(text):
        end = text.find("\n", pos + 1)
        if end < 0:
            return None
        line = text[pos + 1 : end]
        if line.strip():
            return line
        pos = end
    return None


def _headers(text: str) -> Iterator[re.Match[str]]:
    """Header row candidates in order: the first line's, then each one after a newline (a header
    holds no newline, so the two patterns never overlap)."""
    first = _FIRST_HEADER_RE.match(text)
    if first is not None:
        yield first
    yield from _HEADER_RE.finditer(text)


def _cell_key(title: str) -> str:
    t = title.strip().strip(":").strip()
    if t.endswith(")") and "(" not in t:  # "mAP50-95):" closes Ultralytics' "Box(P ... mAP50-95)"
        t = t[:-1]
    low = t.lower().rstrip(")") if t.lower().startswith(("box(", "mask(")) else t.lower()
    return _COLUMN_ALIASES.get(low, low).replace(" ", "_")


class Tables:
    """The open tables of one read: their column keys carry over between batches of lines."""

    def __init__(self) -> None:
        self.pipe_cols: list[str] = []  # the open Markdown/ASCII table's column keys
        self.pipe_groups: list[str] = []  # split words of a group-header row above it
        self.ws_cols: list[str] = []  # the open whitespace table's column keys

    def rewrite(self, text: str, probe: bytes) -> str:
        """``text`` with the rows of its tables as ``key=value`` pairs and their header rows dropped;
        ``probe`` is its bytes (cheap "is there a table?" tests)."""
        if b"|" in probe and (self.pipe_cols or self.pipe_groups or _pipe_lines(probe)):
            text = self._pipe_tables(text)
        if self.ws_cols or _FIRST_HEADER_RE.match(text) or _HEADER_RE.search(text):
            text = self._ws_tables(text)
        return text

    def _pipe_tables(self, text: str) -> str:
        """Markdown and ASCII tables: a header row of titles (an optional group row of split words
        above it: "| train | | validate |"), rule rows, then rows of numbers."""
        out: list[str] = []
        pos = 0
        for m in _PIPE_ROW_RE.finditer(text):
            cells = [c.strip() for c in m.group(0).strip().strip("|").split("|")]
            new = self._pipe_row(cells)
            if new is not None:
                out.append(text[pos : m.start()])
                out.append(new)
                pos = m.end()
        if not out:
            return text
        out.append(text[pos:])
        return "".join(out)

    def _pipe_row(self, cells: list[str]) -> str | None:
        filled = [c for c in cells if c]
        if not filled:
            return None
        if all(_RULE_CELL_RE.match(c) for c in filled):
            return ""  # a rule row
        nums = [bool(_CELL_NUM_RE.match(c)) for c in cells]
        if not any(nums):
            if any(re.search(r"[a-zA-Z]\w*[ \t]+[-+]?\d", c) for c in filled):
                self.pipe_cols = []  # "| epoch 027 | loss 6.3 |" (fairseq): pairs, not a table
                return None
            words = [c.lower() for c in cells]
            if all(not w or w in SPLITS for w in words):
                self.pipe_groups, self.pipe_cols = words, []
                return ""
            self.pipe_cols = [_cell_key(c) for c in cells]
            if len(self.pipe_groups) == len(cells):
                split = ""
                for i, g in enumerate(self.pipe_groups):
                    split = SPLITS[g] if g else split
                    if split and self.pipe_cols[i] and self.pipe_cols[i].partition("_")[0] not in SPLITS:
                        self.pipe_cols[i] = f"{split}_{self.pipe_cols[i]}"
            self.pipe_groups = []
            return ""
        if len(cells) != len(self.pipe_cols):
            return None
        pairs = [f"{k}={c}" for k, c, n in zip(self.pipe_cols, cells, nums, strict=True) if k and n]
        return " ".join(pairs)

    def _ws_tables(self, text: str) -> str:
        """Whitespace tables whose header row names the columns (Ultralytics' "Epoch GPU_mem
        box_loss ..." and "Class Images Instances Box(P R mAP50 mAP50-95)"): rows below it with one
        number per column (a leading label like "all" allowed) become ``key=value`` pairs.

        Work is proportional to the tables: only header candidates and the rows after them are split.
        """
        out: list[str] = []
        pos = 0
        if self.ws_cols:
            pos = self._ws_rows(text, 0, out)
        for m in _headers(text):
            if m.start() < pos:
                continue
            toks = _row_tokens(m.group(1))
            if len(toks) < 3 or not all(t[:1].isalpha() and not _NAN_RE.match(t) for t in toks):
                continue
            nxt = _next_line(text, m.end())
            if nxt is not None and not _row_fits(nxt, len(toks)):
                continue
            out.append(text[pos : m.start()])  # the header itself is dropped: titles, no numbers
            self.ws_cols = [_cell_key(t) for t in toks]
            pos = self._ws_rows(text, m.end(), out)
        if not out:
            return text
        out.append(text[pos:])
        return "".join(out)

    def _ws_rows(self, text: str, pos: int, out: list[str]) -> int:
        """Rewrite the rows of the open table from ``pos``; returns where they end (closing the table)."""
        n = len(self.ws_cols)
        while True:
            end = text.find("\n", pos + 1) if pos < len(text) else -1
            if end < 0:
                return pos  # the batch ends inside the table: it stays open for the next batch
            line = text[pos + 1 : end] if text[pos : pos + 1] == "\n" else text[pos:end]
            if not line.strip():
                out.append(text[pos:end])
                pos = end
                continue
            toks = _row_tokens(line)
            if len(toks) != n or not _row_fits(line, n):
                self.ws_cols = []
                return pos
            if not _CELL_NUM_RE.match(toks[0]) and self.ws_cols[0] not in ("class", ""):
                self.ws_cols = []
                return pos
            out.append(
                "\n"
                + " ".join(
                    f"{k}={t}" for k, t in zip(self.ws_cols, toks, strict=True) if _CELL_NUM_RE.match(t)
                )
            )
            pos = end

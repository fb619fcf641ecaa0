"""Output bytes to the parser's text lines: cut at newlines and progress-bar rewrites, escapes stripped."""

from __future__ import annotations

import codecs
import re

MAX_LINE = 1 << 16  # a "line" with no newline is cut here for the parser (output is never cut)
# CSI / OSC escape sequences and lone escapes: colours and cursor moves are not part of a number.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")


class LineSplitter:
    """Bytes in, text lines out: splits at ``\\n`` and at ``\\r`` (progress-bar rewrites), strips escapes."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._partial = ""
        self._resync = False

    def gap(self) -> None:
        """Bytes were skipped (not parsed): forget the line in progress and restart at the next line."""
        self._decoder.reset()
        self._partial = ""
        self._resync = True

    def feed(self, data: bytes) -> list[str]:
        if self._resync:
            breaks = [i for i in (data.find(b"\n"), data.find(b"\r")) if i >= 0]
            if not breaks:
                return []
            cut = min(breaks)
            self._resync = False
            data = data[cut + 1 :]
        text = self._partial + self._decoder.decode(data)
        parts = re.split(r"\r\n|\r|\n", text)
        self._partial = parts.pop()
        if len(self._partial) > MAX_LINE:
            parts.append(self._partial)
            self._partial = ""
        return [_ANSI.sub("", p) for p in parts if p]

    def close(self) -> list[str]:
        rest = self._partial + self._decoder.decode(b"", final=True)
        self._partial = ""
        return [_ANSI.sub("", rest)] if rest else []

"""The live dashboard: the child's output scrolls above a rich ``Live`` region holding the frame.

The frame is rebuilt from the doctor at most 4 times a second, on the caller's thread (the doctor
is not thread-safe); a ticker thread only prints buffered child output and repaints the last built
frame, at most 4 times a second.
"""

from __future__ import annotations

import codecs
import contextlib
import math
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from muvo_doctor.core.doctor import Doctor
from muvo_doctor.core.finding import Finding
from muvo_doctor.face.frame import render_dashboard, snapshot_dashboard
from muvo_doctor.fdio import fd_of, write_all

REFRESH_SECONDS = 0.25  # at most 4 dashboard refreshes a second
ALERT_STYLE = "bold bright_white on red"


class StdoutCRLF:
    """The live view's stdout: ``\r\n`` for every newline, and whole writes on a non-blocking fd.

    `run` puts the terminal in raw mode to forward keystrokes, which turns off the terminal's
    newline -> CR LF translation (rich writes bare newlines), and makes stdin non-blocking, which
    on a terminal is the same open file as stdout: a big frame written through ``sys.stdout``
    would then be cut short by EAGAIN. So frames go to the file descriptor, retried until written.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.encoding = getattr(stream, "encoding", None) or "utf-8"

    def write(self, text: str) -> int:
        data = text.replace("\r\n", "\n").replace("\n", "\r\n").encode(self.encoding, "replace")
        fd = fd_of(self._stream)
        if fd is None:
            self._stream.write(text)
            return len(text)
        self._stream.flush()  # whatever Python buffered goes first
        write_all(fd, data)
        return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()


class LiveView:
    """The rich Live dashboard with the child's output scrolling above it.

    ``clock`` (seconds, monotonic) paces the rebuilds; ``ticker=False`` leaves painting to the
    caller's :meth:`repaint` (tests drive both, so no test waits on real time).
    """

    def __init__(
        self,
        doctor: Doctor,
        *,
        title: str,
        console: Console,
        clock: Callable[[], float] = time.monotonic,
        ticker: bool = True,
    ) -> None:
        self.doctor = doctor
        self.title = title
        self.console = console
        self._clock = clock
        self._use_ticker = ticker
        self._lock = threading.RLock()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending: list[str | Text] = []  # complete lines not yet printed: the child's, our alerts
        self._partial = ""  # the current unfinished line (a progress bar redrawn with \r)
        self._renderable: RenderableType = Text("")
        self._built_at = -math.inf
        self._drawn_state: tuple[object, ...] | None = None
        self._dirty = True
        self._final = False
        self._live: Live | None = None
        self._ticker: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- layout
    def _size(self) -> tuple[int, int]:
        w, h = self.console.size
        # Leave room above the dashboard for the child's output to scroll.
        return w, max(min(h - 6, 60), 16)

    def _state(self) -> tuple[object, ...]:
        d = self.doctor
        return (
            d.history.count,
            tuple((f.check, f.severity, f.resolved_step) for f in d.findings),
            getattr(d, "evidence", None),
            self._final and d.verdict == "inconclusive",  # the only thing "final" changes
            self._size(),
        )

    def _build(self) -> None:
        # Drawing costs tens of ms: skip it when nothing it shows has changed.
        state = self._state()
        if state == self._drawn_state:
            return
        self._drawn_state = state
        w, h = self._size()
        r = render_dashboard(
            self.doctor,
            title=self.title,
            width=w,
            height=h,
            color=self.console.is_terminal,
            final=self._final,
        )
        with self._lock:
            self._renderable = r
            self._built_at = self._clock()
            self._dirty = True

    def _current(self) -> RenderableType:
        status = Text.from_ansi(self._partial, no_wrap=True, overflow="ellipsis")
        if not status.plain.strip():
            return self._renderable
        return Group(status, self._renderable)

    # -- View API
    def start(self) -> None:
        self._build()
        self._live = Live(
            self._current(),
            console=self.console,
            auto_refresh=False,
            transient=False,
            vertical_overflow="crop",
            redirect_stdout=True,
            redirect_stderr=True,
        )
        self._live.start(refresh=True)
        self._dirty = False
        if self._use_ticker:
            self._ticker = threading.Thread(target=self._tick_loop, name="muvo-doctor-dashboard", daemon=True)
            self._ticker.start()

    def update(self) -> None:
        now = self._clock()
        if now - self._built_at >= REFRESH_SECONDS:
            self._built_at = now
            self._build()

    def child_output(self, data: bytes) -> None:
        text = self._decoder.decode(data)
        if not text:
            return
        with self._lock:
            lines = (self._partial + text).split("\n")
            self._partial = _last_cr_segment(lines.pop())
            self._pending.extend(_last_cr_segment(line) for line in lines)
            self._dirty = True
        if self._live is None:  # not started (or stopped): nothing to scroll above
            self.repaint()

    def finding(self, f: Finding) -> None:
        self._built_at = -math.inf  # show it at the next update, throttle aside
        self.update()

    def alert_banner(self, text: str) -> None:
        """The confirmed alert (Alerts calls it): scrolled above the dashboard in red, with the bell."""
        lines = [line for line in text.replace("\a", "").splitlines() if line.strip()]
        with self._lock:
            self._pending.extend(Text(line, style=ALERT_STYLE) for line in lines)
            self._dirty = True
        if "\a" in text:
            self.console.bell()

    def stop(self) -> None:
        self._final = True
        self._stopping.set()
        if self._ticker is not None:
            self._ticker.join(timeout=2)
            self._ticker = None
        tail = self._decoder.decode(b"", final=True)
        with self._lock:
            rest = _last_cr_segment(self._partial + tail)
            if Text.from_ansi(rest).plain.strip():
                self._pending.append(rest)
            self._partial = ""
        self._build()
        self.repaint()
        if self._live is not None:
            self._live.stop()
            self._live = None

    def snapshot(self, path: str | Path) -> None:
        snapshot_dashboard(self.doctor, path, title=self.title, width=max(self.console.size.width, 100))

    # -- painting (ticker thread and stop)
    def _tick_loop(self) -> None:
        while not self._stopping.wait(REFRESH_SECONDS):
            try:
                self.repaint()
            except Exception as exc:  # fail open: a drawing bug must not stop the training
                print(f"muvo-doctor: dashboard disabled after an error: {exc!r}", file=sys.__stderr__)
                return

    def repaint(self) -> None:
        """Print the child's buffered lines above the dashboard and repaint the last built frame."""
        with self._lock:
            if not self._dirty and not self._pending:
                return
            lines, self._pending = self._pending, []
            self._dirty = False
            if self._live is not None:
                # Live.update(refresh=False) would not reach the region that console.print repaints
                # (rich sets it only in refresh), so the panel would stay stale while the child prints.
                self._live.update(self._current(), refresh=True)
            if lines:
                self.console.print(_scrolled(lines), soft_wrap=True, highlight=False)


def _scrolled(lines: list[str | Text]) -> Text:
    """The lines to print above the dashboard; the child's runs of lines are read as one ANSI text
    (a colour it leaves open goes on to its next line, as in a terminal)."""
    parts: list[Text] = []
    run: list[str] = []
    for line in lines:
        if isinstance(line, str):
            run.append(line)
            continue
        if run:
            parts.append(Text.from_ansi("\n".join(run)))
            run = []
        parts.append(line)
    if run:
        parts.append(Text.from_ansi("\n".join(run)))
    return Text("\n").join(parts)


def _last_cr_segment(line: str) -> str:
    """What a terminal shows of a line redrawn with carriage returns (pty lines end in \\r\\n)."""
    line = line.rstrip("\r")
    return line.rsplit("\r", 1)[-1]

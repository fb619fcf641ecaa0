"""The live terminal dashboard of `run` and `demo`, and its plain-line fallback.

A view only reads ``doctor.history``, ``doctor.findings`` and ``doctor.verdict``. The caller
(the `run` wrapper, the demo) drives it:

    view = make_view(doctor, title="python train.py", plain=args.plain)
    view.start()
    ...  view.child_output(bytes_from_child)      # any thread
    ...  doctor.evaluate(); view.update()         # the thread that feeds the doctor
    ...  view.finding(f)                          # each new finding (doctor.on_finding)
    view.stop()
    view.snapshot("run.svg")

Live mode (a colour terminal, ``face/live.py``): the child's output scrolls above a rich ``Live``
region that holds the charts, the findings and the verdict (one frame: ``face/frame.py``).

Plain mode (``plain=True``, stdout not a terminal, ``NO_COLOR`` set, or ``TERM=dumb``): the
child's bytes go to stdout unchanged and each new finding is one greppable line on stderr:
``muvo-doctor: CRITICAL prior_baseline step 120: <message>``; a resolved one gets
``muvo-doctor: RESOLVED prior_baseline step 300 (was critical from step 120): <message>``.

The header shows the current verdict, or "NO EVIDENCE YET" while the run is inconclusive (no
finding holds and nothing shows learning yet); the line under it says what shows learning. The
alert banner and bell come with the confirmed alert (``alert_banner``), not with the first
critical finding.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import BinaryIO, Protocol, TextIO

from rich.console import Console

from muvo_doctor.core.doctor import Doctor
from muvo_doctor.core.finding import Finding
from muvo_doctor.face.frame import snapshot_dashboard
from muvo_doctor.face.live import LiveView, StdoutCRLF
from muvo_doctor.face.style import wants_plain
from muvo_doctor.fdio import fd_of, write_all


class View(Protocol):
    """What the `run` wrapper and the demo drive; see the module docstring."""

    def start(self) -> None: ...
    def update(self) -> None: ...
    def child_output(self, data: bytes) -> None: ...
    def finding(self, f: Finding) -> None: ...
    def alert_banner(self, text: str) -> None: ...
    def stop(self) -> None: ...
    def snapshot(self, path: str | Path) -> None: ...


def make_view(
    doctor: Doctor,
    *,
    title: str,
    plain: bool,
    console: Console | None = None,
    out: BinaryIO | None = None,
    err: TextIO | None = None,
) -> View:
    """Make the live dashboard, or the plain-line view when the terminal cannot show one.

    Args:
        doctor: the doctor whose history, findings and verdict are shown.
        title: what is being watched (the command line, "demo: random-labels").
        plain: force plain output (``--plain``).
        console: the rich console to draw on (tests pass one writing to a StringIO);
            by default stdout; ``style.wants_plain`` picks the view by rich's rules (NO_COLOR,
            TERM=dumb, isatty).
        out: where plain mode writes the child's bytes (default: ``sys.stdout.buffer``).
        err: where plain mode writes finding lines (default: the given console's file, else stderr).
    """
    con = console or Console()
    if wants_plain(plain, con):
        return PlainView(doctor, title=title, out=out, err=err or (console.file if console else None))
    if console is None:
        con = Console(file=StdoutCRLF(sys.stdout))  # type: ignore[arg-type]
    return LiveView(doctor, title=title, console=con)


def _finding_line(f: Finding) -> str:
    step = f" step {f.step}" if f.step is not None else ""
    msg = " ".join(f.message.split())
    if f.resolved_step is not None:
        return (
            f"muvo-doctor: RESOLVED {f.check} step {f.resolved_step} "
            f"(was {f.severity}{' from' + step if step else ''}): {msg}"
        )
    return f"muvo-doctor: {f.severity.upper()} {f.check}{step}: {msg}"


class PlainView:
    """No live screen, no colour: child bytes pass through, one line per new finding."""

    def __init__(
        self, doctor: Doctor, *, title: str, out: BinaryIO | None = None, err: TextIO | None = None
    ) -> None:
        self.doctor = doctor
        self.title = title
        self._out = out
        self._err = err
        self._seen: dict[str, tuple[str, bool]] = {}
        self._lock = threading.Lock()

    def _line(self, text: str) -> None:
        """One line on the error stream; CR LF on a terminal (`run` may have put it in raw mode)."""
        stream = self._err if self._err is not None else sys.stderr
        fd = fd_of(stream) if self._err is None else None
        with self._lock:
            if fd is not None and os.isatty(fd):
                stream.flush()
                write_all(fd, (text + "\r\n").encode(getattr(stream, "encoding", None) or "utf-8", "replace"))
            else:
                stream.write(text + "\n")
                stream.flush()

    def start(self) -> None:
        pass

    def update(self) -> None:
        # Findings the caller did not pass to finding() still get their line.
        for f in self.doctor.findings:
            self.finding(f)

    def child_output(self, data: bytes) -> None:
        with self._lock:
            if self._out is not None:
                self._out.write(data)
                self._out.flush()
                return
            sys.stdout.flush()  # text printed before goes first
            write_all(sys.stdout.fileno(), data)  # unchanged bytes, whole even on a non-blocking fd

    def finding(self, f: Finding) -> None:
        state = (f.severity, f.resolved_step is not None)
        prev = self._seen.get(f.check)
        if prev == state or (prev is None and f.resolved_step is not None):
            return  # nothing new; or resolved before it ever got its line
        self._seen[f.check] = state
        self._line(_finding_line(f))

    def alert_banner(self, text: str) -> None:
        """The confirmed alert's banner (Alerts calls it): on stderr, bell included."""
        stream = self._err if self._err is not None else sys.stderr
        with self._lock:
            stream.write(text)
            stream.flush()

    def stop(self) -> None:
        self.update()
        n = len(self.doctor.findings)
        steps = max(self.doctor.history.last_step + 1, 0)
        self._line(f"muvo-doctor: verdict {self.doctor.verdict} ({n} finding{'s' * (n != 1)}, {steps} steps)")
        evidence = getattr(self.doctor, "evidence", None)
        if evidence:
            self._line(f"muvo-doctor: evidence of learning: {evidence}")

    def snapshot(self, path: str | Path) -> None:
        snapshot_dashboard(self.doctor, path, title=self.title, width=140)


__all__ = ["LiveView", "PlainView", "View", "make_view"]

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

Live mode (a colour terminal): the child's output scrolls above a rich ``Live`` region that holds
the charts, the findings and the verdict. The dashboard is rebuilt from the doctor at most
4 times a second, on the caller's thread (the doctor is not thread-safe); a ticker thread only
prints buffered child output and repaints the last built dashboard, at most 4 times a second.

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

import codecs
import contextlib
import math
import os
import select
import sys
import threading
import time
from io import StringIO
from pathlib import Path
from typing import BinaryIO, Protocol, TextIO

import numpy as np
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from muvo_doctor.core.doctor import Doctor, headline, order_findings
from muvo_doctor.core.finding import Finding
from muvo_doctor.face.chart import line_chart

REFRESH_SECONDS = 0.25  # at most 4 dashboard refreshes a second
SNAPSHOT_SUFFIXES = (".svg", ".html", ".htm")
SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
VERDICT_STYLE = {
    "dead": "bold white on red",
    "warning": "bold black on yellow",
    "healthy": "bold black on green",
    "inconclusive": "bold black on white",
}
NO_EVIDENCE = "no evidence yet"  # what the live header says while the verdict is inconclusive
# Evidence keys of a prior_baseline finding that hold the prior's loss (checks/prior_baseline.py).
_BASELINE_KEYS = ("baseline_loss", "prior_entropy")


class View(Protocol):
    """What the `run` wrapper and the demo drive; see the module docstring."""

    def start(self) -> None: ...
    def update(self) -> None: ...
    def child_output(self, data: bytes) -> None: ...
    def finding(self, f: Finding) -> None: ...
    def alert_banner(self, text: str) -> None: ...
    def stop(self) -> None: ...
    def snapshot(self, path: str | Path) -> None: ...


class SnapshotError(ValueError):
    """A ``--snapshot`` path that cannot be written; the message names the fix."""


def check_snapshot_path(path: str | Path) -> Path:
    """Validate a ``--snapshot`` path before the run starts.

    Raises:
        SnapshotError: the extension is not .svg/.html, or the folder does not exist.
    """
    p = Path(path)
    if p.suffix.lower() not in SNAPSHOT_SUFFIXES:
        raise SnapshotError(
            f"--snapshot {p}: unsupported file type '{p.suffix or '(none)'}'; use a .svg or .html path"
        )
    if not p.parent.exists():
        raise SnapshotError(
            f"--snapshot {p}: folder {p.parent} does not exist; create it or pick another path"
        )
    return p


def wants_plain(plain: bool, console: Console) -> bool:
    """Plain line output when asked, when stdout is not a terminal, or NO_COLOR / TERM=dumb is set."""
    return bool(plain or not console.is_terminal or console.is_dumb_terminal or console.no_color)


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
            by default stdout, and rich decides colour and TTY (NO_COLOR, TERM=dumb, isatty).
        out: where plain mode writes the child's bytes (default: ``sys.stdout.buffer``).
        err: where plain mode writes finding lines (default: the given console's file, else stderr).
    """
    con = console or Console()
    if wants_plain(plain, con):
        return PlainView(doctor, title=title, out=out, err=err or (console.file if console else None))
    if console is None:
        con = Console(file=_CRLFWriter(sys.stdout))  # type: ignore[arg-type]
    return LiveView(doctor, title=title, console=con)


def _write_fd(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``, waiting out EAGAIN (the fd may be non-blocking)."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [], 1.0)
            continue
        except InterruptedError:
            continue
        view = view[n:]


def _fd_of(stream: object) -> int | None:
    try:
        return int(stream.fileno())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None


class _CRLFWriter:
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
        fd = _fd_of(self._stream)
        if fd is None:
            self._stream.write(text)
            return len(text)
        self._stream.flush()  # whatever Python buffered goes first
        _write_fd(fd, data)
        return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()


# ----------------------------------------------------------------------------- what is drawn


def prior_loss(doctor: Doctor) -> float | None:
    """The loss of predicting the label prior alone, or None when it is unknown.

    The number a ``prior_baseline`` finding compared the loss with, when there is one (the
    line then matches the finding's message); else, from the labels seen so far, binary:
    ``H(p) = -p ln p - (1-p) ln(1-p)`` with p the mean of ``label/positive_fraction``;
    multiclass: ``-sum p_k ln p_k`` over the mean ``label/fraction/<k>``.
    """
    for f in doctor.findings:
        if f.check == "prior_baseline":
            for key in _BASELINE_KEYS:
                v = f.evidence.get(key)
                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                    return float(v)
    h = doctor.history
    s = h.series("label/positive_fraction")
    if s is not None and len(s):
        p = float(np.nanmean(s.values))
        if 0.0 < p < 1.0:
            return -p * math.log(p) - (1 - p) * math.log(1 - p)
        if p in (0.0, 1.0):
            return 0.0
    fractions = []
    for name in h.names("label/fraction/"):
        fs = h.series(name)
        if fs is not None and len(fs):
            fractions.append(float(np.nanmean(fs.values)))
    total = sum(fractions)
    if total > 0:
        return -sum((q / total) * math.log(q / total) for q in fractions if q > 0)
    return None


def _series(doctor: Doctor, names: list[str], strip: str = "") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in names:
        s = doctor.history.series(name)
        if s is not None and len(s):
            out[name.removeprefix(strip) or name] = (s.steps, s.values)
    return out


def _grad_names(doctor: Doctor, limit: int = 4) -> list[str]:
    """grad/norm/total plus the modules with the largest and the smallest recent norms."""
    h = doctor.history
    modules = [n for n in h.names("grad/norm/") if n != "grad/norm/total" and "@rank" not in n]
    recent: list[tuple[float, str]] = []
    for n in modules:
        s = h.series(n)
        if s is not None and len(s):
            v = s.values[-20:]
            v = v[np.isfinite(v)]
            if len(v):
                recent.append((float(np.median(v)), n))
    recent.sort()
    if len(recent) > limit:
        half = limit // 2
        recent = recent[:half] + recent[-(limit - half) :]
    names = ["grad/norm/total"] if "grad/norm/total" in h else []
    return names + [n for _, n in reversed(recent)]


def _chart(text: str) -> Text:
    return Text.from_ansi(text, no_wrap=True, overflow="crop")


def _findings_table(findings: list[Finding], rows: int) -> RenderableType:
    if not findings:
        return Text("no findings yet", style="dim")
    fs = order_findings(findings)  # what holds first, cause before symptom, outcome before mechanism
    table = Table.grid(padding=(0, 1), expand=True)
    table.add_column(no_wrap=True)
    table.add_column(no_wrap=True)
    table.add_column(no_wrap=True, justify="right")
    table.add_column(ratio=1, overflow="ellipsis", no_wrap=True)
    for f in fs[:rows]:
        step = "" if f.step is None else f"step {f.step}"
        if f.resolved_step is not None:
            table.add_row(
                Text("RESOLVED", style="dim"),
                Text(f.check, style="dim"),
                Text(f"{step}-{f.resolved_step}", style="dim"),
                Text(f"(was {f.severity}) {f.message}", style="dim"),
            )
            continue
        style = SEVERITY_STYLE.get(f.severity, "")
        table.add_row(Text(f.severity.upper(), style=style), Text(f.check, style="bold"), step, f.message)
    if len(fs) > rows:
        table.add_row("", Text(f"+{len(fs) - rows} more", style="dim"), "", "")
    return table


def render_dashboard(
    doctor: Doctor,
    *,
    title: str,
    width: int,
    height: int,
    color: bool = True,
    final: bool = False,
) -> RenderableType:
    """The dashboard as one rich renderable, laid out for a ``width`` x ``height`` area.

    Reads only ``doctor.history``, ``doctor.findings``, ``doctor.verdict`` and ``doctor.evidence``.
    ``final``: the run is over, so an inconclusive verdict is named as such, not "no evidence yet".
    """
    width = max(width, 40)
    height = max(height, 16)
    findings = doctor.findings
    verdict = doctor.verdict
    evidence = getattr(doctor, "evidence", None)
    steps = max(doctor.history.last_step, 0)
    parts: list[RenderableType] = []

    head = Text()
    head.append(" muvo-doctor ", style="bold reverse")
    head.append(f" {title}  ·  step {steps}  ·  ")
    shown = NO_EVIDENCE if verdict == "inconclusive" and not final else verdict
    head.append(f" {shown.upper()} ", style=VERDICT_STYLE.get(verdict, "bold"))
    if evidence:
        head.append(f"  {evidence}", style="green")
    parts.append(head)
    critical = [f for f in findings if f.severity == "critical" and f.resolved_step is None]
    if critical:
        first = headline(findings) or critical[0]
        parts.append(
            Panel(
                Text(f"{first.check}: {first.message}", style="bold", no_wrap=True, overflow="ellipsis"),
                title="DEAD RUN",
                border_style="bold red",
                style="red",
            )
        )
    n_find = min(max(len(findings), 1), 6) + 2
    used = sum(3 if isinstance(p, Panel) else 1 for p in parts) + n_find
    avail = height - used
    two_cols = width >= 100
    rows = 2 if two_cols else (4 if avail >= 40 else 2 if avail >= 20 else 1)
    chart_h = max(avail // rows - 2, 6)  # -2: the panel border
    col_w = (width // 2 if two_cols else width) - 2

    def panel(title_: str, chart: str) -> Panel:
        return Panel(_chart(chart), title=title_, title_align="left", padding=0, border_style="blue")

    base = prior_loss(doctor)
    loss = _series(doctor, ["train/loss", "printed/loss", "val/loss"])
    charts = [
        panel(
            "loss",
            line_chart(
                loss,
                baseline=base,
                baseline_label=f"prior baseline H(p)={base:.3f}" if base is not None else "",
                width=col_w,
                height=chart_h,
                color=color,
            ),
        ),
        panel(
            "gradient norm per module (log)",
            line_chart(
                _series(doctor, _grad_names(doctor), strip="grad/norm/"),
                log_y=True,
                width=col_w,
                height=chart_h,
                color=color,
            ),
        ),
        panel(
            "output spread and saturation",
            line_chart(
                _series(doctor, ["output/std", "output/saturated"], strip="output/"),
                width=col_w,
                height=chart_h,
                color=color,
            ),
        ),
        panel(
            "label balance",
            line_chart(
                _series(
                    doctor,
                    ["label/positive_fraction", *doctor.history.names("label/fraction/")[:6]],
                    strip="label/",
                ),
                width=col_w,
                height=chart_h,
                color=color,
            ),
        ),
    ]
    if two_cols:
        grid = Table.grid(expand=True)
        grid.add_column(ratio=1)
        grid.add_column(ratio=1)
        grid.add_row(charts[0], charts[1])
        grid.add_row(charts[2], charts[3])
        parts.append(grid)
    else:
        parts.extend(charts[:rows])
    parts.append(
        Panel(
            _findings_table(findings, n_find - 2),
            title=f"findings ({len(findings)})",
            title_align="left",
            border_style="red"
            if critical
            else "yellow"
            if any(f.resolved_step is None for f in findings)
            else "green",
        )
    )
    return Group(*parts)


def export_snapshot(renderable: RenderableType, path: str | Path, *, width: int, title: str) -> Path:
    """Write ``renderable`` as an SVG or HTML picture (rich's export); returns the path."""
    p = check_snapshot_path(path)
    rec = Console(record=True, file=StringIO(), width=width, force_terminal=True, color_system="truecolor")
    rec.print(renderable)
    if p.suffix.lower() == ".svg":
        p.write_text(rec.export_svg(title=title), encoding="utf-8")
    else:
        p.write_text(rec.export_html(inline_styles=True), encoding="utf-8")
    return p


def _finding_line(f: Finding) -> str:
    step = f" step {f.step}" if f.step is not None else ""
    msg = " ".join(f.message.split())
    if f.resolved_step is not None:
        return (
            f"muvo-doctor: RESOLVED {f.check} step {f.resolved_step} "
            f"(was {f.severity}{' from' + step if step else ''}): {msg}"
        )
    return f"muvo-doctor: {f.severity.upper()} {f.check}{step}: {msg}"


# ----------------------------------------------------------------------------- plain mode


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
        fd = _fd_of(stream) if self._err is None else None
        with self._lock:
            if fd is not None and os.isatty(fd):
                stream.flush()
                _write_fd(fd, (text + "\r\n").encode(getattr(stream, "encoding", None) or "utf-8", "replace"))
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
            _write_fd(sys.stdout.fileno(), data)  # unchanged bytes, whole even on a non-blocking fd

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
        r = render_dashboard(self.doctor, title=self.title, width=140, height=48, final=True)
        export_snapshot(r, path, width=140, title=f"muvo-doctor: {self.title}")


# ----------------------------------------------------------------------------- live mode


class LiveView:
    """The rich Live dashboard with the child's output scrolling above it."""

    def __init__(self, doctor: Doctor, *, title: str, console: Console) -> None:
        self.doctor = doctor
        self.title = title
        self.console = console
        self._lock = threading.RLock()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending: list[str] = []  # complete lines not yet printed
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
            self._built_at = time.monotonic()
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
        self._ticker = threading.Thread(target=self._tick_loop, name="muvo-doctor-dashboard", daemon=True)
        self._ticker.start()

    def update(self) -> None:
        now = time.monotonic()
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
            self._flush()

    def finding(self, f: Finding) -> None:
        self._built_at = -math.inf  # show it at the next update, throttle aside
        self.update()

    def alert_banner(self, text: str) -> None:
        """The confirmed alert (Alerts calls it): scrolled above the dashboard in red, with the bell."""
        lines = [line for line in text.replace("\a", "").splitlines() if line.strip()]
        with self._lock:
            self._pending.extend(f"\x1b[1;41;97m{line}\x1b[0m" for line in lines)
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
        self._flush()
        if self._live is not None:
            self._live.stop()
            self._live = None

    def snapshot(self, path: str | Path) -> None:
        w = max(self.console.size.width, 100)
        r = render_dashboard(self.doctor, title=self.title, width=w, height=48, final=True)
        export_snapshot(r, path, width=w, title=f"muvo-doctor: {self.title}")

    # -- painting (ticker thread and stop)
    def _tick_loop(self) -> None:
        while not self._stopping.wait(REFRESH_SECONDS):
            try:
                self._flush()
            except Exception as exc:  # fail open: a drawing bug must not stop the training
                print(f"muvo-doctor: dashboard disabled after an error: {exc!r}", file=sys.__stderr__)
                return

    def _flush(self) -> None:
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
                self.console.print(Text.from_ansi("\n".join(lines)), soft_wrap=True, highlight=False)


def _last_cr_segment(line: str) -> str:
    """What a terminal shows of a line redrawn with carriage returns (pty lines end in \\r\\n)."""
    line = line.rstrip("\r")
    return line.rsplit("\r", 1)[-1]


__all__ = [
    "LiveView",
    "PlainView",
    "SnapshotError",
    "View",
    "check_snapshot_path",
    "export_snapshot",
    "make_view",
    "prior_loss",
    "render_dashboard",
    "wants_plain",
]

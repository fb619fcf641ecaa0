"""The parent side of `muvo-doctor run`: spawn the child, pass its terminal through, feed the Doctor.

One thread, one ``select`` loop over: the child's output (a pseudo-terminal when our stdout is a
terminal, read through a pipe that a small process keeps drained; else pipes), our stdin (forwarded
in raw mode under a pseudo-terminal), the telemetry FIFO every Python process of the child writes
to, and a wake-up pipe for signals. The Doctor is evaluated at its grid of recorded steps
(``evaluate_every_steps``), as the observations cross it, and once at the end, never on a wall
clock: the same output gives the same findings however it was chunked. The step clock is the telemetry of rank 0 once the instrumented child reports a step
(printed numbers are held until the telemetry passes their step), else the printed numbers themselves.

Transparency: output bytes are written through unchanged (the pseudo-terminal does no output
processing of its own: the user's terminal does it once, as without us), first, before anything
is parsed; the parser works on the side, in slices, and drops (and counts) what it cannot keep up
with rather than slow the child. The doctor's own lines wait for the end of the child's current
line (at most ``LINE_HOLD_S``). SIGINT/SIGTERM/SIGHUP are forwarded to the child's process group
(a second Ctrl-C sends SIGTERM, and SIGKILL follows after a grace period); window size changes
are copied to the pseudo-terminal; the exit code is the child's (128 + signal when it was
killed), unless ``--fail-on`` is reached. Output is drained until every process holding it
(background grandchildren too) has closed it. If the wrapper itself is killed, a watchdog process
hangs up the child's group, kills it after ``WATCHDOG_GRACE_S``, restores the terminal and removes
the temporary folder. Fail open: a failure of the doctor's own machinery (the view, the parser) is
reported once and the training goes on; a report or record that cannot be written makes the exit
code 2 when nothing else failed.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from muvo_doctor.run.child import KILL_GRACE_S, ChildProcess, is_tty, same_file, widen_pipe
from muvo_doctor.run.files import RunFiles
from muvo_doctor.run.leader import LeaderChild
from muvo_doctor.run.passthrough import (
    GATHER_BYTES,
    GATHER_S,
    PARSE_BURST_S,
    Passthrough,
)
from muvo_doctor.run.redact import command_line
from muvo_doctor.run.session import Session
from muvo_doctor.run.watchdog import TEMP_PREFIX, remove_stale_temp_folders, start_watchdog, stop_watchdog

if TYPE_CHECKING:
    from muvo_doctor.core.config import DoctorConfig
    from muvo_doctor.core.finding import Finding
    from muvo_doctor.run.lines import LineSplitter

# The doctor, the dashboard and pydantic are imported after the child is started (see Runner.run):
# the child's own start-up hides most of ours.


@dataclass
class RunOptions:
    """What `muvo-doctor run` was asked to do."""

    command: list[str]
    config: DoctorConfig | None = None  # None: the defaults
    config_path: str | None = None
    report: Path | None = None
    record: Path | None = None
    snapshot: Path | None = None
    plain: bool = False
    notify_url: str | None = None
    notify_cmd: str | None = None
    notify_format: str | None = None  # None: inferred from the --notify URL
    redact: bool = True  # secrets in the command line are masked in every output
    follow_symlinks: bool = False  # --report/--record through a symlink only when asked
    stop_on: Literal["dead"] | None = None
    fail_on: Literal["warning", "dead"] | None = None
    grace_s: float = KILL_GRACE_S


class Runner(ChildProcess, Passthrough, Session, RunFiles):
    """Runs one wrapped command under the doctor. Use :func:`run`."""

    def __init__(self, opts: RunOptions) -> None:
        # The state of every part (child, passthrough, session, files) is set here: one place to read it.
        self.opts = opts
        self.source = command_line(opts.command, redact=opts.redact)  # the only form any output shows
        self.doctor: Any = None  # made in _setup, after the child started
        self.use_pty = is_tty(1)
        self.child: subprocess.Popen[bytes] | LeaderChild | None = None
        self.returncode: int | None = None
        self.sel = selectors.DefaultSelector()
        self._said: set[str] = set()
        # Steps: the latest telemetry step of rank 0, or a counter of printed lines with numbers.
        self.telemetry_step = -1
        self.printed_lines = 0
        self.printed_step: int | None = None  # the last "step N" the program printed
        self.instrumented = False  # some process of the child imported torch
        self.ranks: set[int] = set()
        self.splitters: dict[int, LineSplitter] = {}
        self.reader: Any = None
        self.record: IO[bytes] | None = None
        self._record_flush_at = 0.0
        self.file_failed = False  # --report or --record could not be written: exit 2 if all else is fine
        # Parsing on the side: (fd, bytes) waiting for the parser, (fd, None) when that output closed.
        self._parse_q: deque[tuple[int, bytes | None]] = deque()
        self._parse_q_bytes = 0
        self.unparsed_lines = 0
        self._parse_credit = PARSE_BURST_S  # seconds of parsing allowed now (PARSE_DUTY of the time)
        self._credit_at = time.monotonic()
        self.unparsed_bytes = 0
        # The doctor's own lines wait while the child is in the middle of a line on the same file.
        self._out_shares_err = same_file(1, 2)
        self._midline = {"out": False, "err": False}
        self._midline_since = 0.0
        self._held: list[Callable[[], None]] = []
        self.helpers: dict[int, str | None] = {}  # pid -> command of descendants that are not ranks
        # ... those of them that stepped an optimizer (the report names them)
        self.training_helpers: list[int] = []
        self._watchdog: tuple[int, int] | None = None
        self._read_this_turn = 0
        self._early: list[tuple[str, bytes]] = []  # ("out"/"err", an open line) copied during the set-up
        self._drain: tuple[int, int, int] | None = None  # a pty's drain: (pid, its pipe, close to end it)
        self.view: Any = None
        self.alerts: Any = None
        self._dirty = False
        self._signals: list[int] = []
        self._interrupts = 0
        self._kill_at: float | None = None
        self._stop_state: str | None = None  # None, "int", "term"
        self._stop_deadline = 0.0
        self._tty_saved: list[Any] | None = None
        self.stopped_dead: Finding | None = None

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> int:
        """Run the command to its end; returns the exit code of docs/contract.md."""
        remove_stale_temp_folders()
        tmp = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-")
        fifo = os.path.join(tmp, "telemetry")
        os.mkfifo(fifo, 0o600)
        # Our own write end keeps the FIFO from reading EOF between children's processes.
        self.fifo_r = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        self._fifo_w = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        widen_pipe(self.fifo_r)
        self.sel.register(self.fifo_r, selectors.EVENT_READ, "fifo")
        old_handlers: dict[int, Any] = {}
        started = False
        try:
            old_handlers = self._install_signals()
            try:
                self._spawn(self._env(fifo))
            except OSError as exc:
                self._restore_tty()
                print(
                    f"muvo-doctor run: cannot start {self.opts.command[0]!r}: {exc.strerror}", file=sys.stderr
                )
                return 127 if exc.errno == errno.ENOENT else 126
            started = True
            assert self.child is not None
            try:
                self._watchdog = start_watchdog(self.child.pid, tmp, self._tty_saved)
            except OSError as exc:
                self.say_once(
                    "watchdog", f"no watchdog ({exc.strerror}): if killed, the training may outlive us"
                )
            try:
                self._drain_pty()
                self._copy_during(self._setup)
                self._safe(self.view.start, "view")
                self._pass_early()
                self._loop()
            except Exception as exc:  # a doctor bug: the training goes on, unwatched
                self.say_once("internal", f"internal error ({exc!r}); the training goes on unmonitored")
                self._passthrough_rest()
        finally:
            self._restore_tty()
            for s, h in old_handlers.items():
                signal.signal(s, h)
            if old_handlers:
                signal.set_wakeup_fd(self._old_wakeup)
            if started:
                self._finish()
            for fd in (self.fifo_r, self._fifo_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            shutil.rmtree(tmp, ignore_errors=True)
            self._stop_watchdog()
        return self._exit_code()

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            stop_watchdog(self._watchdog)
            self._watchdog = None

    def _loop(self) -> None:
        assert self.child is not None
        exited = False
        while True:
            self._read_this_turn = 0
            for key, _ in self.sel.select(self._select_timeout()):
                what = key.data
                if what in ("out", "err"):
                    self._read_output(key.fd, what)
                elif what == "fifo":
                    self._read_fifo()
                elif what == "stdin":
                    self._forward_stdin()
                elif what == "wake":
                    with contextlib.suppress(OSError):
                        os.read(key.fd, 512)
                elif what == "status":
                    self._child_status(key.fd)
            self._handle_signals()
            self._timers()
            self._parse_on_the_side()
            if 0 < self._read_this_turn < GATHER_BYTES and not exited:
                time.sleep(GATHER_S)
            if not exited:
                code = self.child.poll()
                if code is not None:
                    exited = True
                    self.returncode = code
            if exited and not self._has_outputs():
                # Every process that held the output (background grandchildren too) closed it.
                self._parse_some(None)
                self._read_fifo()
                break
            self._release_held()
            if self._dirty and not self._held:
                # The Doctor evaluated (or not) as the observations crossed its grid; the view only redraws,
                # throttled by itself.
                self._dirty = False
                self._safe(self.view.update, "view")

    def _timers(self) -> None:
        now = time.monotonic()
        self._flush_record(now)
        if self._kill_at is not None and now >= self._kill_at:
            self._kill_at = None
            self._signal_child(signal.SIGKILL)
        if self._stop_state == "int" and now >= self._stop_deadline:
            self._stop_state = "term"
            self._stop_deadline = now + self.opts.grace_s
            self.say_once(
                "stop-term", f"the training did not stop within {self.opts.grace_s:.0f} s; sent SIGTERM"
            )
            self._signal_child(signal.SIGTERM)
        elif self._stop_state == "term" and now >= self._stop_deadline:
            self._stop_state = "kill"
            self._signal_child(signal.SIGKILL)

    def _finish(self) -> None:
        with contextlib.suppress(Exception):
            self._parse_some(None)
        for fd, sp in list(self.splitters.items()):
            with contextlib.suppress(Exception):
                self._parse_lines(sp.close())
            self.splitters.pop(fd, None)
        if self.child is not None and self.returncode is None:
            # We are leaving early (an exception in the loop): do not orphan the training.
            self.returncode = self.child.wait()
        # Without a doctor or a view the set-up itself failed (reported): nothing to judge or write.
        if self.doctor is not None and self.view is not None:
            self._judge_and_write()
        with contextlib.suppress(Exception):
            self.sel.close()
        self._end_drain()  # (an early exit: it has not read the pty to its end)
        self._release_child()
        if getattr(self, "master", -1) >= 0:
            with contextlib.suppress(OSError):
                os.close(self.master)
        if self.child is not None:
            for s in (self.child.stdout, self.child.stderr):
                if s is not None:
                    with contextlib.suppress(OSError):
                        s.close()

    def _judge_and_write(self) -> None:
        self._release_held(force=True)
        if self.unparsed_lines or self.unparsed_bytes:
            self.say_once(
                "unparsed",
                f"{self.unparsed_lines} output lines ({self.unparsed_bytes / 1e6:.1f} MB) were not read "
                "for numbers: they came faster than the parser (the output itself passed through whole)",
            )
        try:
            self.doctor.on_evaluated.remove(self._on_evaluated)
            changed = self.doctor.evaluate()  # the steps after the last grid step (and everything held back)
            self._on_evaluated(self.doctor, changed, final=True)
        except Exception as exc:
            self.say_once("doctor", f"the final evaluation failed ({exc!r})")
        self._release_held(force=True)
        self._safe(self.view.stop, "view")
        if self.opts.snapshot is not None:
            self._safe(lambda: self.view.snapshot(self.opts.snapshot), "snapshot")
        if self.alerts is not None:
            self.alerts.close()
        self._close_record()
        self._write_report()

    def _exit_code(self) -> int:
        verdict = self.doctor.verdict if self.doctor is not None else "inconclusive"
        if self.opts.fail_on == "warning" and verdict in ("warning", "dead"):
            return 1
        if self.opts.fail_on == "dead" and verdict == "dead":
            return 1
        code = self.returncode if self.returncode is not None else 1
        code = 128 - code if code < 0 else code
        return 2 if code == 0 and self.file_failed else code


def run(opts: RunOptions) -> int:
    """Run ``opts.command`` under the doctor and return the exit code (docs/contract.md).

    For the command line: the process is expected to exit next. Its heap is frozen out of the
    garbage collector first, which spares the interpreter's exit a full collection of the doctor's
    objects (0.1 s of the 2-core dev box, during which the terminal still waits for us to close it).
    """
    code = Runner(opts).run()
    gc.freeze()
    return code

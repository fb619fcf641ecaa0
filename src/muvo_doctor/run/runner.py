"""The parent side of `muvo-doctor run`: spawn the child, pass its terminal through, feed the Doctor.

One thread, one ``select`` loop over: the child's output (a pseudo-terminal when our stdout is a
terminal, else pipes), our stdin (forwarded in raw mode under a pseudo-terminal), the telemetry
FIFO every Python process of the child writes to, and a wake-up pipe for signals. The Doctor is
evaluated at its grid of recorded steps (``evaluate_every_steps``), as the observations cross it, and
once at the end, never on a wall clock: the same output gives the same findings however it was
chunked. The step clock is the telemetry of rank 0 once the instrumented child reports a step
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

import codecs
import contextlib
import errno
import fcntl
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import termios
import time
import tty
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from muvo_doctor.run.fdio import SymlinkRefused, create_replacing, write_all, write_atomic
from muvo_doctor.run.inject import PYTHONPATH_DIR
from muvo_doctor.run.redact import command_line, redact_text

if TYPE_CHECKING:
    from muvo_doctor.core.config import DoctorConfig
    from muvo_doctor.core.finding import Finding
    from muvo_doctor.core.observation import Observation

# The doctor, the dashboard and pydantic are imported after the child is started (see Runner.run):
# the child's own start-up hides most of ours.

SELECT_TIMEOUT_S = 0.25  # the loop wakes at least 4 times a second (timers, signals, the view)
KILL_GRACE_S = 10.0  # SIGTERM -> SIGKILL (after a second Ctrl-C), SIGINT -> SIGTERM (--stop-on)
MAX_LINE = 1 << 16  # a "line" with no newline is cut here for the parser (output is never cut)
READ_BURST = 1 << 20  # bytes read and passed through from one output before the others get a turn
# Output that trickles in small writes is gathered this long before a loop turn handles it: each
# turn costs CPU (a core the child may need). A pipe (1 MiB here) holds far more; a pty holds 20 KiB,
# 2 ms of a child printing 10 MB/s, and hands it over ~0.5 KiB a read when read at once (10 MB
# read back at once: 17-23k reads, 0.18-0.27 s CPU; after 1 ms: 2.7k reads, 0.06 s; same speed).
GATHER_S = 0.002
GATHER_PTY_S = 0.001
GATHER_BYTES = 32 << 10  # ... unless a turn already read this much
PARSE_SLICE = 2 << 10  # bytes parsed between two looks at the output: ~2 ms, what a pty holds of a fast child
PARSE_DUTY = 0.05  # share of the time parsing may take while output floods in (the CPU is the child's)
PARSE_BURST_S = 0.05  # parse time saved up while the output is quiet, spent at once when it comes
PARSE_BACKLOG = 64 << 10  # output waiting for the parser beyond this is dropped (counted), never waited on
RECORD_FLUSH_S = 0.5  # the --record file is flushed this often: a SIGKILL loses at most ~0.75 s of it
LINE_HOLD_S = 1.0  # the doctor's lines wait at most this long for the child to end its line
WATCHDOG_GRACE_S = 3.0  # wrapper killed: SIGHUP to the child's group, SIGKILL this much later
TEMP_PREFIX = "muvo-doctor-"  # + the wrapper's pid: a folder whose wrapper died is removed next run
# CSI / OSC escape sequences and lone escapes: colours and cursor moves are not part of a number.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
# The signals the recorder measures itself.
_RECORDER_SIGNALS = frozenset({"train/loss", "train/acc", "optim/lr", "grad/norm/total"})
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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


def _widen_pipe(fd: int) -> None:
    """Grow the telemetry FIFO from 64 KiB to the system's limit for unprivileged users (1 MiB on
    Linux): one flush of a large model's statistics is bigger than 64 KiB, and every byte the pipe
    holds is a byte the children need not keep in their backlog while this loop draws the screen."""
    setsz = getattr(fcntl, "F_SETPIPE_SZ", 1031 if sys.platform.startswith("linux") else None)
    if setsz is None:
        return
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            size = int(f.read())
    except (OSError, ValueError):
        size = 1 << 20
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, setsz, size)


def _same_file(a: int, b: int) -> bool:
    try:
        sa, sb = os.fstat(a), os.fstat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _remove_stale_temp_folders() -> None:
    """Temporary folders of wrappers that were killed before they could remove them (and their
    watchdog too): cheap, one listing of the temporary folder."""
    root = tempfile.gettempdir()
    try:
        names = [n for n in os.listdir(root) if n.startswith(TEMP_PREFIX)]
    except OSError:
        return
    for name in names:
        pid = name[len(TEMP_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        except OSError:
            pass


def _start_watchdog(pgid: int, tmp: str, tty_saved: list[Any] | None) -> tuple[int, int]:
    """Fork a small process that outlives a killed wrapper; returns (its pid, the pipe to tell it
    the wrapper ended normally).

    It blocks on the pipe. A clean exit of the wrapper writes to it first; EOF without that means
    the wrapper died (SIGKILL, a crash): the watchdog hangs up the child's process group (a
    terminal would do the same), kills it after ``WATCHDOG_GRACE_S``, restores the terminal
    (modes, cursor) and removes the temporary folder. Its own session: a Ctrl-C or a signal to the
    wrapper's group does not reach it.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(r)
        return pid, w
    try:  # the watchdog: only os calls, and never back into the caller's code
        signal.set_wakeup_fd(-1)
        for s in (*_FORWARDED, signal.SIGWINCH, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(s, signal.SIG_DFL)
        os.setsid()
        # Nothing of the wrapper's but the terminal: a pty master or pipe kept open here would keep
        # the child from seeing its terminal hang up.
        os.closerange(3, r)
        os.closerange(r + 1, 1 << 16)
        while True:
            try:
                said = os.read(r, 1)
                break
            except InterruptedError:
                continue
        if not said:
            _end_group(pgid)
            if tty_saved is not None:
                with contextlib.suppress(termios.error, OSError):
                    termios.tcsetattr(0, termios.TCSAFLUSH, tty_saved)
            if _is_tty(1):
                with contextlib.suppress(OSError):
                    os.write(1, b"\x1b[?25h")  # the live view hides the cursor while it draws
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        os._exit(0)


def _end_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGHUP)
    except OSError:
        return
    deadline = time.monotonic() + WATCHDOG_GRACE_S
    while time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            os.killpg(pgid, 0)
        except OSError:
            return
    with contextlib.suppress(OSError):
        os.killpg(pgid, signal.SIGKILL)


def _is_tty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def _foreground(fd: int) -> bool:
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:  # a terminal that is not our controlling one: no job control, no SIGTTOU
        return True


def _winsize(fd: int) -> bytes | None:
    try:
        return fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
    except OSError:
        return None


class Runner:
    """Runs one wrapped command under the doctor. Use :func:`run`."""

    def __init__(self, opts: RunOptions) -> None:
        self.opts = opts
        self.source = command_line(opts.command, redact=opts.redact)  # the only form any output shows
        self.doctor: Any = None  # made in _setup, after the child started
        self.use_pty = _is_tty(1)
        self.child: subprocess.Popen[bytes] | None = None
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
        self._out_shares_err = _same_file(1, 2)
        self._midline = {"out": False, "err": False}
        self._midline_since = 0.0
        self._held: list[Callable[[], None]] = []
        self.helpers: dict[int, str | None] = {}  # pid -> command of descendants that are not ranks
        self._watchdog: tuple[int, int] | None = None
        self._read_this_turn = 0
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

    # -- fail-open reporting ------------------------------------------------------------------
    def say_once(self, key: str, msg: str) -> None:
        if key in self._said:
            return
        self._said.add(key)
        self._speak(lambda: self._say_now(msg))

    def _say_now(self, msg: str) -> None:
        with contextlib.suppress(Exception):
            sys.stderr.write(f"muvo-doctor: {msg}\n")
            sys.stderr.flush()

    # -- our lines between the child's lines -------------------------------------------------------
    def _line_open(self) -> bool:
        return self._midline["err"] or (self._out_shares_err and self._midline["out"])

    def _may_speak(self) -> bool:
        return not self._line_open() or time.monotonic() - self._midline_since >= LINE_HOLD_S

    def _speak(self, fn: Callable[[], None]) -> None:
        if self._held or not self._may_speak():
            self._held.append(fn)
        else:
            fn()

    def _release_held(self, force: bool = False) -> None:
        if self._held and (force or self._may_speak()):
            held, self._held = self._held, []
            for fn in held:
                self._safe(fn, "view")

    # -- set-up -------------------------------------------------------------------------------
    def _setup(self) -> None:
        from muvo_doctor.core.config import DoctorConfig
        from muvo_doctor.core.doctor import Doctor
        from muvo_doctor.face.dashboard import PlainView, make_view
        from muvo_doctor.run.alerts import Alerts
        from muvo_doctor.run.stream import LineReader

        self.reader = LineReader()
        self.doctor = Doctor(self.opts.config or DoctorConfig(), source=self.source)
        self.doctor.on_evaluated.append(self._on_evaluated)
        self.view = make_view(self.doctor, title=self.source, plain=self.opts.plain)
        self.alerts = Alerts(
            source=self.source,
            notify_url=self.opts.notify_url,
            notify_cmd=self.opts.notify_cmd,
            notify_format=self.opts.notify_format,
            # The confirmed alert's banner and bell: above the live dashboard, or on stderr in plain mode.
            banner=self._banner if isinstance(self.view, PlainView) else self.view.alert_banner,
        )
        self._open_record()

    def _stdout_bytes(self, data: bytes) -> None:
        try:
            write_all(1, data)
        except OSError as exc:
            self.say_once("stdout", f"cannot write the training's output ({exc.strerror}); it goes on")

    def _open_record(self) -> None:
        path = self.opts.record
        if path is None:
            return
        from muvo_doctor.run.stream import Header, encode

        try:
            head = encode(Header(source=self.source)).encode("utf-8")
            self.record = create_replacing(path, head, follow_symlinks=self.opts.follow_symlinks)
        except OSError as exc:
            self.record = None
            self._file_error("record", path, exc, "the run goes on without it")

    def _file_error(self, flag: str, path: Path, exc: OSError, then: str) -> None:
        self.file_failed = True
        if isinstance(exc, SymlinkRefused):
            why = "a symbolic link, left untouched; pass --follow-symlinks to write to its target"
        else:
            why = f"cannot write ({exc.strerror or exc})"
        self.say_once(flag, f"--{flag} {path}: {why}; {then}")

    def _env(self, fifo: str) -> dict[str, str]:
        env = dict(os.environ)
        old = env.get("PYTHONPATH")
        env["PYTHONPATH"] = PYTHONPATH_DIR + (os.pathsep + old if old else "")
        env["MUVO_DOCTOR_FIFO"] = fifo
        env["MUVO_DOCTOR_HOME"] = str(Path(__file__).resolve().parents[2])
        if self.opts.config_path:
            env["MUVO_DOCTOR_CONFIG"] = str(Path(self.opts.config_path).resolve())
        return env

    def _spawn(self, env: dict[str, str]) -> None:
        cmd = self.opts.command
        # Typed keys are forwarded only when we own the terminal: a background job (`... &`) that
        # switched it to raw mode would be stopped by SIGTTOU.
        stdin_tty = _is_tty(0) and _foreground(0)
        if self.use_pty:
            import pty

            master, slave = pty.openpty()
            size = _winsize(1)
            if size is not None:
                fcntl.ioctl(slave, termios.TIOCSWINSZ, size)
            stderr: Any = slave if _is_tty(2) else subprocess.PIPE

            def make_controlling_tty() -> None:
                # A session of its own with the pty as controlling terminal: job control, Ctrl-C
                # (the \x03 we forward) and window-size signals reach the child as in a terminal.
                os.setsid()
                fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

            # No output processing on the child's side: our terminal does it once, as it would
            # without us (with both, every \r\n the child wrote arrived as \r\r\n).
            attrs = termios.tcgetattr(slave)
            attrs[1] &= ~termios.OPOST
            termios.tcsetattr(slave, termios.TCSANOW, attrs)

            self.child = subprocess.Popen(
                cmd,
                stdin=slave if stdin_tty else None,
                stdout=slave,
                stderr=stderr,
                env=env,
                preexec_fn=make_controlling_tty,
            )
            os.close(slave)
            self.master = master
            self._register(master, "out")
            if self.child.stderr is not None:
                self._register(self.child.stderr.fileno(), "err")
            if stdin_tty:
                self._tty_saved = termios.tcgetattr(0)
                tty.setraw(0)
                # Raw input (keys go to the child as typed), but keep output processing: stdin and
                # stdout are one terminal, and our own lines (findings, the dashboard) need \n -> \r\n.
                raw = termios.tcgetattr(0)
                raw[1] = self._tty_saved[1]
                termios.tcsetattr(0, termios.TCSANOW, raw)
                self._register(0, "stdin")
        else:
            self.master = -1
            self.child = subprocess.Popen(
                cmd,
                stdin=None,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                process_group=0,  # our signals are forwarded once, not delivered twice
            )
            assert self.child.stdout is not None and self.child.stderr is not None
            self._register(self.child.stdout.fileno(), "out")
            self._register(self.child.stderr.fileno(), "err")

    def _register(self, fd: int, what: str) -> None:
        # Not stdin: on a terminal it shares its open file with stdout, and O_NONBLOCK there would make
        # our writes fail with EAGAIN. The selector says when it is readable, so reads never block.
        if what != "stdin":
            os.set_blocking(fd, False)
        if what in ("out", "err") and not _is_tty(fd):
            _widen_pipe(fd)  # more room for the child to write while we parse
        self.sel.register(fd, selectors.EVENT_READ, what)
        if what in ("out", "err"):
            self.splitters[fd] = LineSplitter()

    def _install_signals(self) -> dict[int, Any]:
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._wake_r, self._wake_w = r, w
        self.sel.register(r, selectors.EVENT_READ, "wake")
        old: dict[int, Any] = {}

        def handler(signum: int, frame: Any) -> None:
            self._signals.append(signum)

        for s in (*_FORWARDED, signal.SIGWINCH, signal.SIGCHLD):
            old[s] = signal.signal(s, handler)
        self._old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        return old

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> int:
        """Run the command to its end; returns the exit code of docs/contract.md."""
        _remove_stale_temp_folders()
        tmp = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-")
        fifo = os.path.join(tmp, "telemetry")
        os.mkfifo(fifo, 0o600)
        # Our own write end keeps the FIFO from reading EOF between children's processes.
        self.fifo_r = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        self._fifo_w = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        _widen_pipe(self.fifo_r)
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
                self._watchdog = _start_watchdog(self.child.pid, tmp, self._tty_saved)
            except OSError as exc:
                self.say_once(
                    "watchdog", f"no watchdog ({exc.strerror}): if killed, the training may outlive us"
                )
            try:
                self._setup()
                self._safe(self.view.start, "view")
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
        if self._watchdog is None:
            return
        pid, w = self._watchdog
        self._watchdog = None
        with contextlib.suppress(OSError):
            os.write(w, b"x")  # a clean end: the watchdog leaves the child's group alone
            os.close(w)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)

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
            self._handle_signals()
            self._timers()
            self._parse_on_the_side()
            if 0 < self._read_this_turn < GATHER_BYTES and not exited:
                time.sleep(GATHER_PTY_S if self.use_pty else GATHER_S)
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

    def _passthrough_rest(self) -> None:
        """After an internal error: only copy bytes and forward signals until the child ends."""
        assert self.child is not None
        while self.child.poll() is None or self._has_outputs():
            for key, _ in self.sel.select(0.1):
                fd, what = key.fd, key.data
                if what in ("out", "err"):
                    try:
                        data = os.read(fd, 65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        self.sel.unregister(fd)
                        continue
                    with contextlib.suppress(OSError):
                        write_all(1 if what == "out" else 2, data)
                elif what == "stdin":
                    self._forward_stdin()
                elif what in ("wake", "fifo"):
                    with contextlib.suppress(OSError):
                        os.read(fd, 1 << 16)
            self._handle_signals()
            self._timers()
        self.returncode = self.child.returncode

    def _has_outputs(self) -> bool:
        return any(k.data in ("out", "err") for k in self.sel.get_map().values())

    def _read_output(self, fd: int, what: str) -> None:
        """Read what the output holds (up to ``READ_BURST``), pass it through in one write, queue it
        for the parser. One write: a child on a terminal writes line by line, the pty hands them over
        ~1 KiB at a time, and each write to our terminal has a cost of its own (20 MB through a pty,
        3 runs: 3.1 s wrapped with one write per burst, 4.0 s with writes of at most 128 KiB or 16 KiB)."""
        chunks: list[bytes] = []
        got = 0
        closed = False
        while got < READ_BURST:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                break
            except OSError:  # EIO: the pty's other side is closed
                data = b""
            if not data:
                closed = True
                break
            chunks.append(data)
            got += len(data)
        if chunks:
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self._read_this_turn += got
            self._pass_through(what, data)
            self._queue_parse(fd, data)
        if closed:
            self.sel.unregister(fd)
            self._parse_q.append((fd, None))

    def _pass_through(self, what: str, data: bytes) -> None:
        if self._held and (what == "err" or self._out_shares_err):
            # Our waiting lines go in right after the child's last complete line in this chunk.
            cut = data.rfind(b"\n") + 1
            if 0 < cut < len(data):
                self._write_child(what, data[:cut])
                self._release_held()
                data = data[cut:]
        self._write_child(what, data)
        if self._held:
            self._release_held()

    def _write_child(self, what: str, data: bytes) -> None:
        if what == "out":
            self._safe(
                lambda: self.view.child_output(data), "view", fallback=lambda: self._stdout_bytes(data)
            )
        else:
            try:
                write_all(2, data)
            except OSError as exc:
                self.say_once("stderr", f"cannot write the training's stderr ({exc.strerror}); it goes on")
        if not self._line_open() or b"\n" in data:
            self._midline_since = time.monotonic()  # LINE_HOLD_S counts from the child's last line end
        self._midline[what] = not data.endswith(b"\n")

    def _queue_parse(self, fd: int, data: bytes) -> None:
        for i in range(0, len(data), PARSE_SLICE):
            piece = data[i : i + PARSE_SLICE]
            self._parse_q.append((fd, piece))
            self._parse_q_bytes += len(piece)
        # The parser is behind: drop its oldest work rather than make the child wait for it.
        while self._parse_q_bytes > PARSE_BACKLOG:
            old_fd, old = self._parse_q.popleft()
            if old is None:
                self._close_splitter(old_fd)
                continue
            self._parse_q_bytes -= len(old)
            self.unparsed_bytes += len(old)
            self.unparsed_lines += old.count(b"\n")
            splitter = self.splitters.get(old_fd)
            if splitter is not None:
                splitter.gap()

    def _select_timeout(self) -> float:
        """Parse work waiting: only look at the output (no wait) when there is parse time to spend,
        else wait no longer than it takes to earn some."""
        if not self._parse_q:
            return SELECT_TIMEOUT_S
        if self._parse_credit > 0:
            return 0.0
        return min(-self._parse_credit / PARSE_DUTY + 0.001, SELECT_TIMEOUT_S)

    def _parse_on_the_side(self) -> None:
        now = time.monotonic()
        self._parse_credit = min(self._parse_credit + (now - self._credit_at) * PARSE_DUTY, PARSE_BURST_S)
        self._credit_at = now
        if self._parse_q and self._parse_credit > 0:
            self._parse_some(PARSE_SLICE)
            self._parse_credit -= time.monotonic() - now

    def _parse_some(self, budget: int | None) -> None:
        """Parse queued output: about ``budget`` bytes, or all of it (None: the child is done)."""
        while self._parse_q and (budget is None or budget > 0):
            fd, data = self._parse_q.popleft()
            if data is None:
                self._close_splitter(fd)
                continue
            self._parse_q_bytes -= len(data)
            if budget is not None:
                budget -= len(data)
            try:
                self._parse_lines(self.splitters[fd].feed(data))
            except Exception as exc:
                self.say_once(
                    "parser", f"the printed-number parser failed ({exc!r}); output still passes through"
                )

    def _close_splitter(self, fd: int) -> None:
        splitter = self.splitters.pop(fd, None)
        if splitter is not None:
            self._parse_lines(splitter.close())

    def _parse_lines(self, lines: list[str]) -> None:
        """The child's output lines through the one text reader (``logs.text.TextParser``, as
        ``audit`` reads files): the same lines give the same series, steps, splits and digits."""
        from muvo_doctor.core.observation import Observation
        from muvo_doctor.logs.text import TextParser

        parser = getattr(self, "_text_parser", None)  # made on the first output, lives with the run
        if parser is None:
            parser = self._text_parser = TextParser(keep_rewrites=True)  # each \r rewrite is a line here
        got = parser.lines(lines)
        self.printed_lines = parser.st.records
        for name, key, step, value, digits, own in zip(
            got.names, got.keys, got.steps, got.values, got.digits, got.own_step, strict=True
        ):
            if own:
                self.printed_step = step
            if self.instrumented:
                # Telemetry arrives in batches (heartbeats at most 20 a second), so a fast loop's lines
                # can run ahead of it: a step number printed on the line itself is the better clock.
                step = max(self.telemetry_step, step) if own else self.telemetry_step
            step = max(step, 0)
            self._observe(Observation(name=f"printed/{key}", step=step, value=value, digits=digits))
            # Without tensors (not Python, or no torch) the printed numbers are the evidence,
            # judged like a log. With tensors, the printed numbers still bring what the
            # recorder cannot see (validation metrics); its own signals come from the tensors.
            if not self.instrumented or name not in _RECORDER_SIGNALS:
                self._observe(Observation(name=name, step=step, value=value, digits=digits))

    def _read_fifo(self) -> None:
        from muvo_doctor.core.observation import Observation
        from muvo_doctor.run.stream import Hello, Notice, StepBeat

        while True:
            try:
                data = os.read(self.fifo_r, 1 << 16)
            except BlockingIOError:
                return
            except OSError as exc:
                self.say_once(
                    "fifo", f"telemetry channel failed ({exc.strerror}); watching printed output only"
                )
                return
            if not data:
                return
            for msg in self.reader.feed(data):
                if isinstance(msg, Observation):
                    self._observe(msg, telemetry=True)
                    if not msg.rank and msg.step > self.telemetry_step:
                        self.telemetry_step = msg.step
                elif isinstance(msg, StepBeat):
                    if msg.pid is not None:
                        self._helper_trains(msg.pid)
                    elif not msg.rank and msg.step > self.telemetry_step:
                        self.telemetry_step = msg.step
                elif isinstance(msg, Hello):
                    if msg.role == "helper":
                        if msg.command is not None or msg.pid not in self.helpers:
                            self.helpers[msg.pid] = msg.command
                        continue
                    self.helpers.pop(msg.pid, None)  # a spawn worker that became a rank
                    if msg.rank is not None:
                        self.ranks.add(msg.rank)
                    if msg.stage == "torch":
                        self.instrumented = True
                elif isinstance(msg, Notice):
                    self.say_once(f"notice:{msg.message}", f"rank {msg.rank}: {msg.message}")
            if self.reader.errors:
                self.say_once("stream", f"skipped bad telemetry lines ({self.reader.first_error})")

    def _helper_trains(self, pid: int) -> None:
        command = self.helpers.get(pid)
        shown = (redact_text(command) if self.opts.redact else command) if command else "a helper process"
        self.say_once(
            f"helper:{pid}",
            f"process {pid} ({shown}) steps an optimizer of its own; it is not a rank of this run, "
            "so its numbers are not part of this verdict",
        )

    def _observe(self, obs: Observation, telemetry: bool = False) -> None:
        from muvo_doctor.run.stream import encode_observation

        # The step clock: rank 0's telemetry once it reports steps (printed lines can run ahead of it), the
        # printed numbers otherwise: not Python, no torch, or torch imported but no optimizer step seen
        # (a script that uses torch for data only would otherwise wait for the end to be judged).
        clock = (telemetry and not obs.rank) or not self.instrumented or self.telemetry_step < 0
        self.doctor.observe(obs, clock=clock)
        self._dirty = True
        if self.record is not None:
            line = encode_observation(obs.name, obs.step, obs.value, obs.digits, obs.rank)
            try:
                self.record.write(line.encode("utf-8"))
            except OSError as exc:
                self._record_failed(exc)

    def _record_failed(self, exc: OSError) -> None:
        if self.record is not None:
            with contextlib.suppress(OSError):
                self.record.close()
        self.record = None
        assert self.opts.record is not None
        self._file_error("record", self.opts.record, exc, "the run goes on without it")

    def _forward_stdin(self) -> None:
        try:
            data = os.read(0, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.sel.unregister(0)
            return
        with contextlib.suppress(OSError):
            write_all(self.master, data)

    # -- signals and stopping ------------------------------------------------------------------
    def _signal_child(self, sig: int) -> None:
        assert self.child is not None
        alive = self.child.poll() is None
        try:
            # The whole group: a child that exited may have left processes still writing its output.
            os.killpg(self.child.pid, sig)
        except (ProcessLookupError, PermissionError):
            if alive:
                with contextlib.suppress(ProcessLookupError):
                    self.child.send_signal(sig)

    def _handle_signals(self) -> None:
        while self._signals:
            sig = self._signals.pop(0)
            if sig == signal.SIGCHLD:
                continue
            if sig == signal.SIGWINCH:
                size = _winsize(1)
                if size is not None and self.master >= 0:
                    # The kernel then sends SIGWINCH to the child's foreground process group.
                    with contextlib.suppress(OSError):
                        fcntl.ioctl(self.master, termios.TIOCSWINSZ, size)
                continue
            if sig == signal.SIGINT:
                self._interrupts += 1
                if self._interrupts >= 2:
                    self._signal_child(signal.SIGTERM)
                    self._kill_at = time.monotonic() + self.opts.grace_s
                    continue
            self._signal_child(sig)

    def _timers(self) -> None:
        now = time.monotonic()
        if self.record is not None and now >= self._record_flush_at:
            self._record_flush_at = now + RECORD_FLUSH_S
            try:
                self.record.flush()
            except OSError as exc:
                self._record_failed(exc)
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

    def _stop_dead(self, f: Finding | None, held: str) -> None:
        if self._stop_state is not None:
            return
        self.stopped_dead = f
        self._stop_state = "int"
        self._stop_deadline = time.monotonic() + self.opts.grace_s
        why = f"{f.check}, " if f is not None else ""
        self.say_once(
            "stop", f"--stop-on dead: the run is dead ({why}{held}); sent SIGINT so it can save and stop"
        )
        self._signal_child(signal.SIGINT)

    # -- the doctor ---------------------------------------------------------------------------
    def _on_evaluated(self, doctor: Any, changed: list[Finding], final: bool = False) -> None:
        """After each evaluation (a grid step, or the end): the view, then alerts and --stop-on dead,
        which act on a dead verdict only once it has held for its confirmation window."""
        from muvo_doctor.core.doctor import confirm_window

        for f in changed:
            self._speak(lambda f=f: self.view.finding(f))
        verdict, since, step = doctor.verdict, doctor.verdict_since, doctor.step or 0
        held_steps = step - since if since is not None else 0
        confirmed = since is not None and held_steps >= confirm_window(since, doctor.config)
        held = f"{verdict} for {held_steps} steps (since step {since})" if since is not None else ""
        if final and held and not confirmed:
            held += ", when the run ended"
        if self.alerts is not None:
            self.alerts.update(verdict, doctor.headline, confirmed=confirmed, held=held, final=final)
        if self.opts.stop_on == "dead" and verdict == "dead" and confirmed and not final:
            self._stop_dead(doctor.headline, held)
        self._dirty = True

    def _banner(self, text: str) -> None:
        def write() -> None:
            sys.stderr.write(text)
            sys.stderr.flush()

        self._speak(write)

    def _safe(self, fn: Callable[[], Any], key: str, fallback: Callable[[], Any] | None = None) -> None:
        try:
            fn()
        except Exception as exc:
            self.say_once(key, f"the {key} failed ({exc!r}); the training goes on")
            if fallback is not None:
                with contextlib.suppress(Exception):
                    fallback()

    def _restore_tty(self) -> None:
        if self._tty_saved is not None:
            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(0, termios.TCSAFLUSH, self._tty_saved)
            self._tty_saved = None

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
        if self.record is not None:
            try:
                self.record.close()
            except OSError as exc:
                self._record_failed(exc)
        if self.opts.report is not None:
            try:
                report = self.doctor.report(source=self.source)
                data = (report.to_json() + "\n").encode("utf-8")
                write_atomic(self.opts.report, data, follow_symlinks=self.opts.follow_symlinks)
            except OSError as exc:
                self._file_error("report", self.opts.report, exc, "the previous file, if any, is unchanged")

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
    """Run ``opts.command`` under the doctor and return the exit code (docs/contract.md)."""
    return Runner(opts).run()

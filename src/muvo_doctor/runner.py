"""The parent side of `muvo-doctor run`: spawn the child, pass its terminal through, feed the Doctor.

One thread, one ``select`` loop over: the child's output (a pseudo-terminal when our stdout is a
terminal, else pipes), our stdin (forwarded in raw mode under a pseudo-terminal), the telemetry
FIFO every Python process of the child writes to, and a wake-up pipe for signals. The Doctor is
evaluated at its grid of recorded steps (``evaluate_every_steps``), as the observations cross it, and
once at the end, never on a wall clock: the same output gives the same findings however it was
chunked. The step clock is the telemetry of rank 0 once the instrumented child reports a step
(printed numbers are held until the telemetry passes their step), else the printed numbers themselves.

Transparency: output bytes are written through unchanged; SIGINT/SIGTERM/SIGHUP are forwarded
(a second Ctrl-C sends SIGTERM, and SIGKILL follows after a grace period); window size changes
are copied to the pseudo-terminal; the exit code is the child's (128 + signal when it was
killed), unless ``--fail-on`` is reached. Fail open: a failure of the doctor's own machinery
(the record file, the view, the parser) is reported once and the training goes on.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import fcntl
import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import termios
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from muvo_doctor.fdio import write_all
from muvo_doctor.inject import PYTHONPATH_DIR

if TYPE_CHECKING:
    from muvo_doctor.config import DoctorConfig
    from muvo_doctor.finding import Finding
    from muvo_doctor.observation import Observation

# The doctor, the dashboard and pydantic are imported after the child is started (see Runner.run):
# the child's own start-up hides most of ours.

SELECT_TIMEOUT_S = 0.25  # the loop wakes at least 4 times a second (timers, signals, the view)
KILL_GRACE_S = 10.0  # SIGTERM -> SIGKILL (after a second Ctrl-C), SIGINT -> SIGTERM (--stop-on)
MAX_LINE = 1 << 16  # a "line" with no newline is cut here for the parser (output is never cut)
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

    def feed(self, data: bytes) -> list[str]:
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
        self.source = shlex.join(opts.command)
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
        self.record: IO[str] | None = None
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
        with contextlib.suppress(Exception):
            sys.stderr.write(f"muvo-doctor: {msg}\n")
            sys.stderr.flush()

    # -- set-up -------------------------------------------------------------------------------
    def _setup(self) -> None:
        from muvo_doctor.alerts import Alerts
        from muvo_doctor.config import DoctorConfig
        from muvo_doctor.dashboard import PlainView, make_view
        from muvo_doctor.doctor import Doctor
        from muvo_doctor.stream import LineReader

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
        from muvo_doctor.stream import Header, encode

        try:
            self.record = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed in finish)
            self.record.write(encode(Header(source=self.source)))
        except OSError as exc:
            self.record = None
            self.say_once(
                "record", f"--record {path}: cannot write ({exc.strerror}); the run goes on without it"
            )

    def _env(self, fifo: str) -> dict[str, str]:
        env = dict(os.environ)
        old = env.get("PYTHONPATH")
        env["PYTHONPATH"] = PYTHONPATH_DIR + (os.pathsep + old if old else "")
        env["MUVO_DOCTOR_FIFO"] = fifo
        env["MUVO_DOCTOR_HOME"] = str(Path(__file__).resolve().parent.parent)
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
        tmp = tempfile.mkdtemp(prefix="muvo-doctor-")
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
        return self._exit_code()

    def _loop(self) -> None:
        assert self.child is not None
        exited_at: float | None = None
        while True:
            if exited_at is None:
                timeout = SELECT_TIMEOUT_S
            else:
                timeout = 0.05  # child gone: drain what is buffered, then stop
            got_output = False
            for key, _ in self.sel.select(timeout):
                what = key.data
                if what in ("out", "err"):
                    got_output |= self._read_output(key.fd, what)
                elif what == "fifo":
                    self._read_fifo()
                elif what == "stdin":
                    self._forward_stdin()
                elif what == "wake":
                    with contextlib.suppress(OSError):
                        os.read(key.fd, 512)
            self._handle_signals()
            self._timers()
            if exited_at is None:
                code = self.child.poll()
                if code is not None:
                    exited_at = time.monotonic()
                    self.returncode = code
            elif not got_output or not self._has_outputs() or time.monotonic() - exited_at > 5.0:
                self._read_fifo()
                break
            if self._dirty:
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

    def _read_output(self, fd: int, what: str) -> bool:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return False
        except OSError:  # EIO: the pty's other side is closed
            data = b""
        if not data:
            self.sel.unregister(fd)
            self._parse_lines(self.splitters.pop(fd).close())
            return False
        if what == "out":
            self._safe(
                lambda: self.view.child_output(data), "view", fallback=lambda: self._stdout_bytes(data)
            )
        else:
            try:
                write_all(2, data)
            except OSError as exc:
                self.say_once("stderr", f"cannot write the training's stderr ({exc.strerror}); it goes on")
        try:
            self._parse_lines(self.splitters[fd].feed(data))
        except Exception as exc:
            self.say_once(
                "parser", f"the printed-number parser failed ({exc!r}); output still passes through"
            )
        return True

    def _parse_lines(self, lines: list[str]) -> None:
        """The child's output lines through the one text reader (``logs.text.TextParser``, as
        ``audit`` reads files): the same lines give the same series, steps, splits and digits."""
        from muvo_doctor.logs.text import TextParser
        from muvo_doctor.observation import Observation

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
        from muvo_doctor.observation import Observation
        from muvo_doctor.stream import Hello, Notice, StepBeat

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
                    if not msg.rank and msg.step > self.telemetry_step:
                        self.telemetry_step = msg.step
                elif isinstance(msg, Hello):
                    if msg.rank is not None:
                        self.ranks.add(msg.rank)
                    if msg.stage == "torch":
                        self.instrumented = True
                elif isinstance(msg, Notice):
                    self.say_once(f"notice:{msg.message}", f"rank {msg.rank}: {msg.message}")
            if self.reader.errors:
                self.say_once("stream", f"skipped bad telemetry lines ({self.reader.first_error})")

    def _observe(self, obs: Observation, telemetry: bool = False) -> None:
        from muvo_doctor.stream import encode_observation

        # The step clock: rank 0's telemetry once it reports steps (printed lines can run ahead of it), the
        # printed numbers otherwise: not Python, no torch, or torch imported but no optimizer step seen
        # (a script that uses torch for data only would otherwise wait for the end to be judged).
        clock = (telemetry and not obs.rank) or not self.instrumented or self.telemetry_step < 0
        self.doctor.observe(obs, clock=clock)
        self._dirty = True
        if self.record is not None:
            try:
                self.record.write(encode_observation(obs.name, obs.step, obs.value, obs.digits, obs.rank))
            except OSError as exc:
                self.record = None
                self.say_once(
                    "record", f"--record: write failed ({exc.strerror}); the run goes on without it"
                )

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
        if self.child.poll() is not None:
            return
        try:
            os.killpg(self.child.pid, sig)
        except (ProcessLookupError, PermissionError):
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
        from muvo_doctor.doctor import confirm_window

        for f in changed:
            self._safe(lambda f=f: self.view.finding(f), "view")
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
        sys.stderr.write(text)
        sys.stderr.flush()

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
        try:
            self.doctor.on_evaluated.remove(self._on_evaluated)
            changed = self.doctor.evaluate()  # the steps after the last grid step (and everything held back)
            self._on_evaluated(self.doctor, changed, final=True)
        except Exception as exc:
            self.say_once("doctor", f"the final evaluation failed ({exc!r})")
        self._safe(self.view.stop, "view")
        if self.opts.snapshot is not None:
            self._safe(lambda: self.view.snapshot(self.opts.snapshot), "snapshot")
        if self.alerts is not None:
            self.alerts.close()
        if self.record is not None:
            try:
                self.record.close()
            except OSError as exc:
                self.say_once("record", f"--record: could not finish the file ({exc.strerror})")
        if self.opts.report is not None:
            try:
                report = self.doctor.report(source=self.source)
                Path(self.opts.report).write_text(report.to_json() + "\n", encoding="utf-8")
            except OSError as exc:
                self.say_once("report", f"--report {self.opts.report}: cannot write ({exc.strerror})")

    def _exit_code(self) -> int:
        verdict = self.doctor.verdict if self.doctor is not None else "inconclusive"
        if self.opts.fail_on == "warning" and verdict in ("warning", "dead"):
            return 1
        if self.opts.fail_on == "dead" and verdict == "dead":
            return 1
        code = self.returncode if self.returncode is not None else 1
        return 128 - code if code < 0 else code


def run(opts: RunOptions) -> int:
    """Run ``opts.command`` under the doctor and return the exit code (docs/contract.md)."""
    return Runner(opts).run()

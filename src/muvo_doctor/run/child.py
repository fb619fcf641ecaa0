"""The child process: started on a pseudo-terminal or on pipes, our terminal's modes, signals to its group."""

from __future__ import annotations

import contextlib
import fcntl
import os
import selectors
import signal
import subprocess
import sys
import termios
import time
import tty
from pathlib import Path
from typing import Any

from muvo_doctor.fdio import write_all
from muvo_doctor.run.inject import PYTHONPATH_DIR
from muvo_doctor.run.leader import LeaderChild, spawn_led
from muvo_doctor.run.lines import LineSplitter

KILL_GRACE_S = 10.0  # SIGTERM -> SIGKILL (after a second Ctrl-C), SIGINT -> SIGTERM (--stop-on)
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def widen_pipe(fd: int) -> None:
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


def same_file(a: int, b: int) -> bool:
    try:
        sa, sb = os.fstat(a), os.fstat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def is_tty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def foreground(fd: int) -> bool:
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:  # a terminal that is not our controlling one: no job control, no SIGTTOU
        return True


def winsize(fd: int) -> bytes | None:
    try:
        return fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
    except OSError:
        return None


class ChildProcess:
    """The part of the Runner that starts the child, owns its terminal or pipes and forwards signals."""

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
        stdin_tty = is_tty(0) and foreground(0)
        if self.use_pty:
            import pty

            master, slave = pty.openpty()
            size = winsize(1)
            if size is not None:
                fcntl.ioctl(slave, termios.TIOCSWINSZ, size)
            # No output processing on the child's side: our terminal does it once, as it would
            # without us (with both, every \r\n the child wrote arrived as \r\r\n).
            attrs = termios.tcgetattr(slave)
            attrs[1] &= ~termios.OPOST
            termios.tcsetattr(slave, termios.TCSANOW, attrs)
            # A session of its own with the pty as controlling terminal, led by a small process of
            # ours (run/leader.py: the command's exit must not hang up its background jobs): job
            # control, Ctrl-C (the \x03 we forward) and window-size signals reach the child as in a
            # terminal.
            try:
                self.child = spawn_led(cmd, slave, stdin_tty=stdin_tty, stderr_tty=is_tty(2), env=env)
            except OSError:
                os.close(master)
                raise
            finally:
                os.close(slave)
            self.master = master
            self._register(self.child.status_fd, "status")
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
        if what in ("out", "err") and not is_tty(fd):
            widen_pipe(fd)  # more room for the child to write while we parse
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

        for s in (*FORWARDED, signal.SIGWINCH, signal.SIGCHLD):
            old[s] = signal.signal(s, handler)
        self._old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        return old

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

    def _child_status(self, fd: int) -> None:
        """The command's leader said something (the command ended) or left: its pipe is done then."""
        assert isinstance(self.child, LeaderChild)
        if not self.child.read_status():
            self.sel.unregister(fd)

    def _release_child(self) -> None:
        """Every holder of the output has closed it: a session leader may go now."""
        if isinstance(self.child, LeaderChild):
            self.child.release()

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
                size = winsize(1)
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

    def _restore_tty(self) -> None:
        if self._tty_saved is not None:
            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(0, termios.TCSAFLUSH, self._tty_saved)
            self._tty_saved = None

"""The watchdog: a forked process that ends the child and cleans up when the wrapper itself is killed."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import termios
import time
from typing import Any

from muvo_doctor.run.child import FORWARDED, is_tty

WATCHDOG_GRACE_S = 3.0  # wrapper killed: SIGHUP to the child's group, SIGKILL this much later
TEMP_PREFIX = "muvo-doctor-"  # + the wrapper's pid: a folder whose wrapper died is removed next run


def remove_stale_temp_folders() -> None:
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


def start_watchdog(pgid: int, tmp: str, tty_saved: list[Any] | None) -> tuple[int, int]:
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
        for s in (*FORWARDED, signal.SIGWINCH, signal.SIGCHLD, signal.SIGPIPE):
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
            if is_tty(1):
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


def stop_watchdog(watchdog: tuple[int, int]) -> None:
    """The wrapper ends normally: tell the watchdog (its pid, its pipe) and reap it."""
    pid, w = watchdog
    with contextlib.suppress(OSError):
        os.write(w, b"x")  # a clean end: the watchdog leaves the child's group alone
        os.close(w)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)

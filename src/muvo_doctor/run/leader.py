"""The inner terminal's session leader: a small fork of the wrapper that holds the pseudo-terminal
while the command runs on it, and after, until the wrapper has read it to its end.

Why a process of its own: the leader of a terminal's session is its controlling process, and when
it exits the kernel hangs up the terminal's foreground process group (SIGHUP). Were the command
that leader, its exit would end the background jobs it left (`(sleep 1; echo done) &` keeps the
shell's group), which a terminal without the wrapper lets run on: there the user's shell leads
the session, not the command. So the leader starts the command in its own session and process
group, waits for it, reports its exit status through a pipe, and leaves only when released.

The command shares the leader's process group, which is then orphaned (its only link out of the
session is the leader's parent, the wrapper): the terminal's stop keys (Ctrl-Z) are ignored, as
they were when the command led the session, rather than stopping the training with no shell to
resume it. The leader therefore ignores the signals sent to that group (the ones the wrapper
forwards, those the terminal's keys make); only SIGKILL ends it early, and then its own death is
the command's status (the group's SIGKILL reached both).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import subprocess
import termios
from typing import IO

# Signals that reach the whole group (forwarded by the wrapper, or made by the terminal's keys):
# the leader outlives them to report the command's status. Caught, not ignored, so the command's
# exec restores their default.
GROUP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class LeaderChild:
    """The command run under a session leader, seen as the wrapper sees a ``subprocess.Popen``.

    ``pid`` is the leader's: the id of the session and of the process group the command and all it
    starts run in (what ``killpg`` and the watchdog take). ``returncode`` is the command's (-N when
    a signal N killed it). ``status_fd`` becomes readable when the command ends (select on it).
    """

    def __init__(self, leader: int, command: int, status_fd: int, release_fd: int, stderr: IO[bytes] | None):
        self.pid = leader
        self.command_pid = command
        self.status_fd = status_fd
        self.stdout: IO[bytes] | None = None
        self.stderr = stderr
        self.returncode: int | None = None
        self._release_fd = release_fd
        self._leader_reaped = False
        os.set_blocking(status_fd, False)

    def read_status(self) -> bool:
        """Take what the leader said (the command's exit status); False once the leader is gone."""
        while True:
            try:
                data = os.read(self.status_fd, 64)
            except BlockingIOError:
                return True
            except OSError:
                data = b""
            if not data:
                self._reap_leader()
                return False
            if self.returncode is None:
                self.returncode = int(data.split(b"\n", 1)[0])

    def poll(self) -> int | None:
        self.read_status()
        return self.returncode

    def wait(self) -> int:
        while self.returncode is None:
            select.select([self.status_fd], [], [])
            self.read_status()
        return self.returncode

    def send_signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.command_pid, sig)

    def release(self) -> None:
        """The wrapper has read the terminal to its end: the leader may go (and is reaped)."""
        if self._release_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._release_fd)  # EOF: the leader's signal to leave
            self._release_fd = -1
        self._reap_leader()
        with contextlib.suppress(OSError):
            os.close(self.status_fd)

    def _reap_leader(self) -> None:
        if self._leader_reaped:
            return
        with contextlib.suppress(ChildProcessError):
            _, status = os.waitpid(self.pid, 0)
            if self.returncode is None:  # killed before it could say (SIGKILL to the group)
                self.returncode = os.waitstatus_to_exitcode(status)
        self._leader_reaped = True


def spawn_led(
    cmd: list[str], slave: int, *, stdin_tty: bool, stderr_tty: bool, env: dict[str, str]
) -> LeaderChild:
    """Start ``cmd`` on the pseudo-terminal ``slave`` under a session leader (see the module).

    stdout is the terminal; stdin too when ``stdin_tty`` (else the wrapper's own stdin), stderr
    when ``stderr_tty`` (else a pipe: the returned ``stderr``). The caller closes ``slave``.

    Raises:
        OSError: the command could not be started (its errno: ENOENT, EACCES, ...).
    """
    status_r, status_w = os.pipe()
    release_r, release_w = os.pipe()
    err_r, err_w = os.pipe() if not stderr_tty else (-1, -1)
    pid = os.fork()
    if pid == 0:
        _lead(cmd, slave, stdin_tty, err_w if err_w >= 0 else slave, env, status_w, release_r)
    for fd in (status_w, release_r, err_w):
        if fd >= 0:
            os.close(fd)
    first = b""
    while not first.endswith(b"\n"):  # a byte at a time: the exit status may follow at once
        chunk = os.read(status_r, 1)
        if not chunk:
            break
        first += chunk
    what, _, value = first.decode().strip().partition(" ")
    if what != "pid":
        for fd in (status_r, release_w, err_r):
            if fd >= 0:
                os.close(fd)
        os.waitpid(pid, 0)
        code = (int(value) if what == "error" else 0) or errno.EIO  # EIO: setsid or TIOCSCTTY failed
        raise OSError(code, os.strerror(code))
    stderr = os.fdopen(err_r, "rb", buffering=0) if err_r >= 0 else None
    return LeaderChild(pid, int(value), status_r, release_w, stderr)


def _lead(
    cmd: list[str], slave: int, stdin_tty: bool, err: int, env: dict[str, str], status: int, release: int
) -> None:
    """The leader's life, in the forked process: never returns, never runs the wrapper's code."""
    try:
        signal.set_wakeup_fd(-1)
        for s in GROUP_SIGNALS:
            signal.signal(s, lambda *_: None)
        for s in (signal.SIGCHLD, signal.SIGWINCH, signal.SIGPIPE):
            signal.signal(s, signal.SIG_DFL)
        # Nothing of the wrapper's: a pty master held here would keep the terminal from hanging up
        # when the wrapper dies; the wrapper's stdout held here would keep its reader waiting.
        keep = {0, slave, err, status, release}
        for fd in range(3, max(keep) + 1):
            if fd not in keep:
                with contextlib.suppress(OSError):
                    os.close(fd)
        os.closerange(max(keep) + 1, 1 << 16)
        null = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            if fd not in keep:  # (a closed stderr may have made one of ours fd 2)
                os.dup2(null, fd)
        if null not in (1, 2, *keep):
            os.close(null)
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        try:
            child = subprocess.Popen(
                cmd, stdin=slave if stdin_tty else None, stdout=slave, stderr=err, env=env
            )
        except OSError as exc:
            os.write(status, f"error {exc.errno or 0}\n".encode())
            return
        os.write(status, f"pid {child.pid}\n".encode())
        # The command and what it starts hold the terminal now; the session keeps it as controlling
        # terminal without an open descriptor here (the wrapper reads EOF when they close it).
        os.close(slave)
        if err != slave:
            os.close(err)
        code = child.wait()
        os.write(status, f"{code}\n".encode())
        while True:
            try:
                if not os.read(release, 1):
                    break
            except InterruptedError:
                continue
    except BaseException:
        pass
    finally:
        os._exit(0)

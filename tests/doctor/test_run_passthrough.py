"""`muvo-doctor run` under a terminal: the child's output is taken from it while the wrapper is busy."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import signal
import subprocess
import sys
import time

import pytest

PY = sys.executable


def _read_to_end(master: int, timeout: float = 60) -> bytes:
    out = b""
    while select.select([master], [], [], timeout)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every holder of the terminal has closed it
            break
        if not chunk:
            break
        out += chunk
    return out


def _wrapped_on_a_terminal(argv: list[str], code: str) -> tuple[int, subprocess.Popen[bytes]]:
    """``muvo-doctor run --plain -- python -c code`` with a fresh pty as its terminal: (its master side, the wrapper)."""
    master, slave = pty.openpty()
    wrapper = subprocess.Popen(
        [*argv, "--plain", "--", PY, "-c", code], stdin=subprocess.DEVNULL, stdout=slave,
        stderr=slave, env=dict(os.environ, NO_COLOR="1"), start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    return master, wrapper


def test_a_terminal_slow_to_take_output_does_not_stop_the_child(doctor_run, tmp_path):
    # The child prints 512 KiB (a pty holds 20 KiB) and then says so; the terminal is read only
    # after that. The wrapper, blocked writing to the terminal, must still take the child's output.
    written = tmp_path / "written"
    code = (
        "import sys\n"
        "for i in range(8192): sys.stdout.write(f'step {i:>8} loss={1 / (i + 1):.12f} ' + 'x' * 29 + '\\n')\n"
        f"sys.stdout.flush(); open({str(written)!r}, 'w').close()\n"
    )
    master, wrapper = _wrapped_on_a_terminal(doctor_run.argv, code)
    end = time.monotonic() + 30
    while not written.exists() and time.monotonic() < end and wrapper.poll() is None:
        time.sleep(0.01)
    child_done_unread = written.exists()
    out = _read_to_end(master)
    os.close(master)
    assert wrapper.wait(timeout=30) == 0, out[-500:]
    assert child_done_unread
    direct = subprocess.run([PY, "-c", code], capture_output=True, timeout=60).stdout
    assert len(direct) == 8192 * 64
    assert direct in out.replace(b"\r\n", b"\n")  # whole and in order (our terminal adds the \r)


def _holding_a_pty_master(marker: str) -> list[int]:
    """Pids of processes whose command line has ``marker`` and that hold a pty's master side open."""

    def target(link: str) -> str:
        try:
            return os.readlink(link)
        except OSError:  # closed meanwhile (a file it opens and closes), or the process is gone
            return ""

    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() not in f.read():
                    continue
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # gone meanwhile, or not ours to look at
            continue
        if any(target(f"/proc/{pid}/fd/{fd}") == "/dev/ptmx" for fd in fds):
            found.append(int(pid))
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_kill_9_of_the_wrapper_leaves_nothing_holding_the_childs_terminal(doctor_run, tmp_path):
    # The child's terminal hangs up only when every holder of its master side has closed it: the
    # wrapper and the process that drains it. The child here ignores the hang-up and stays quiet (the
    # drain is waiting): only the wrapper's death can make the drain leave.
    pid_file = tmp_path / "child.pid"
    code = (
        "import os, signal, time\n"
        "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "time.sleep(60)\n"
    )
    master, wrapper = _wrapped_on_a_terminal(doctor_run.argv, code)
    end = time.monotonic() + 30
    out = b""
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < end:
        if select.select([master], [], [], 0.1)[0]:
            out += os.read(master, 65536)
    marker = str(pid_file)  # in the command line of the wrapper and of what it forked
    assert _holding_a_pty_master(marker), out
    wrapper.kill()
    wrapper.wait()
    end = time.monotonic() + 2.0  # before the watchdog's grace (3 s) ends and it kills the child
    while _holding_a_pty_master(marker) and time.monotonic() < end:
        time.sleep(0.05)
    try:
        assert _holding_a_pty_master(marker) == []
    finally:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        os.close(master)

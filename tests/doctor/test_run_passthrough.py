"""`muvo-doctor run` under a terminal: the child's output is taken from it while the wrapper is busy."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

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


def test_a_terminal_slow_to_take_output_does_not_stop_the_child(doctor_run, tmp_path):
    # The child prints 512 KiB (a pty holds 20 KiB) and then says so; the terminal is read only
    # after that. The wrapper, blocked writing to the terminal, must still take the child's output.
    written = tmp_path / "written"
    code = (
        "import sys\n"
        "for i in range(8192): sys.stdout.write(f'step {i:>8} loss={1 / (i + 1):.12f} ' + 'x' * 29 + '\\n')\n"
        f"sys.stdout.flush(); open({str(written)!r}, 'w').close()\n"
    )
    master, slave = pty.openpty()
    wrapper = subprocess.Popen(
        [*doctor_run.argv, "--plain", "--", PY, "-c", code], stdin=subprocess.DEVNULL, stdout=slave,
        stderr=slave, env=dict(os.environ, NO_COLOR="1"), start_new_session=True,
    )  # fmt: skip
    os.close(slave)
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

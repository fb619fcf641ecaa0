"""Writing whole buffers to raw file descriptors (stdlib only: imported before the child starts)."""

from __future__ import annotations

import os
import time


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd``, waiting out a non-blocking descriptor that is full."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            time.sleep(0.001)
            continue
        view = view[n:]

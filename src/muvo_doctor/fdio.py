"""Writing whole buffers to raw file descriptors, and files that replace others atomically.

Stdlib only: imported before the child starts.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import stat
import time
from pathlib import Path
from typing import BinaryIO


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd``, waiting out a non-blocking descriptor that is full."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [], 1.0)  # until the reader drains it, without spinning
            continue
        view = view[n:]


def fd_of(stream: object) -> int | None:
    """The file descriptor under ``stream``, or None for a StringIO, a closed or a fake stream."""
    try:
        return int(stream.fileno())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None


class SymlinkRefused(OSError):
    """The path to write is a symbolic link, and following it was not asked for."""


def _target(path: str | os.PathLike[str], follow_symlinks: bool) -> Path:
    p = Path(path)
    if p.is_symlink():
        if not follow_symlinks:
            raise SymlinkRefused(
                errno.ELOOP,
                "is a symbolic link; refusing to write through it (its target is untouched)",
                str(p),
            )
        return Path(os.path.realpath(p))
    return p


def _special(target: Path) -> bool:
    """A device, FIFO or socket (``/dev/null``, ``/dev/full``): written in place, never replaced."""
    try:
        mode = os.stat(target).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def _open_temp_beside(target: Path) -> tuple[BinaryIO, Path]:
    # Same folder as the target: the rename stays on one file system, hence atomic. Mode 0o666 less
    # the umask, as open() would give the file (mkstemp's 0o600 would change who can read a report).
    for attempt in range(100):
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{time.monotonic_ns() + attempt}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue
        return os.fdopen(fd, "wb"), tmp
    raise OSError(errno.EEXIST, "cannot create a temporary file beside it", str(target))


def write_atomic(path: str | os.PathLike[str], data: bytes, *, follow_symlinks: bool = False) -> None:
    """Replace the file at ``path`` with ``data``, all or nothing.

    The bytes go to a temporary file in the same folder, are synced, and the temporary file is
    renamed over ``path``: a reader sees the old file or the new one, never a part (a full disk
    leaves the old file as it was). A symbolic link at ``path`` is refused unless
    ``follow_symlinks``, then its target is replaced the same way. A device or FIFO
    (``/dev/null``) is written in place: renaming over it would replace the device.

    Raises:
        SymlinkRefused: ``path`` is a symbolic link and ``follow_symlinks`` is False.
        OSError: the folder is not writable, the disk is full, ... (nothing was changed).
    """
    target = _target(path, follow_symlinks)
    if _special(target):
        with open(target, "wb") as f:
            f.write(data)
        return
    fh, tmp = _open_temp_beside(target)
    try:
        with fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def create_replacing(path: str | os.PathLike[str], head: bytes, *, follow_symlinks: bool = False) -> BinaryIO:
    """A new file at ``path`` that starts with ``head``, open for appending (a stream written as it goes).

    Made as :func:`write_atomic` makes its file (a temporary file renamed over ``path``), so a
    symbolic link at ``path`` is replaced, not written through, unless ``follow_symlinks``. The
    caller writes and flushes the rest; what was flushed stays if the process is killed. A device
    or FIFO is written in place.

    Raises:
        SymlinkRefused: ``path`` is a symbolic link and ``follow_symlinks`` is False.
        OSError: the file cannot be created.
    """
    target = _target(path, follow_symlinks)
    if _special(target):
        dev = open(target, "wb")  # noqa: SIM115 (the caller closes it)
        try:
            dev.write(head)
            dev.flush()
        except BaseException:
            dev.close()
            raise
        return dev
    fh, tmp = _open_temp_beside(target)
    try:
        fh.write(head)
        fh.flush()
        os.replace(tmp, target)
    except BaseException:
        fh.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return fh

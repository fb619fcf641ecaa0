"""The child's output: passed through first and whole, parsed on the side, our lines between its lines."""

from __future__ import annotations

import contextlib
import os
import select
import selectors
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from muvo_doctor.fdio import write_all
from muvo_doctor.run.child import FORWARDED, widen_pipe

SELECT_TIMEOUT_S = 0.25  # the loop wakes at least 4 times a second (timers, signals, the view)
READ_BURST = 1 << 20  # bytes read and passed through from one output before the others get a turn
# A read shorter than this has caught up with the writer: the burst ends there, not at the first empty
# read. A pty hands over at most 4 KiB a read; read on, it hands over each line a running child writes
# (50 MB through a pty: 49-93k reads, 1.0-1.3 s CPU; ending at a short read: 20-23k, 0.7-0.8 s).
CAUGHT_UP = 2 << 10
# Output that trickles in small writes is gathered this long before a loop turn handles it: each
# turn costs CPU (a core the child may need). A pipe (1 MiB here) holds far more; a pty holds 20 KiB,
# 2 ms of a child printing 10 MB/s, and hands it over ~0.5 KiB a read when read at once (10 MB
# read back at once: 17-23k reads, 0.18-0.27 s CPU; after 1 ms: 2.7k reads, 0.06 s; same speed).
# So the loop reads a pty through a pipe that a process of its own keeps filled (see _drain_pty).
GATHER_S = 0.002
GATHER_PTY_S = 0.001  # ... the process that drains a pty
GATHER_BYTES = 32 << 10  # ... unless a turn already read this much
PARSE_SLICE = 2 << 10  # bytes parsed between two looks at the output: ~2 ms, what a pty holds of a fast child
PARSE_DUTY = 0.05  # share of the time parsing may take while output floods in (the CPU is the child's)
PARSE_BURST_S = 0.05  # parse time saved up while the output is quiet, spent at once when it comes
PARSE_BACKLOG = 64 << 10  # output waiting for the parser beyond this is dropped (counted), never waited on
LINE_HOLD_S = 1.0  # the doctor's lines wait at most this long for the child to end its line
EARLY_SWITCH_S = 0.0005  # the GIL's switch interval while a thread copies the output (see _copy_during)
EARLY_LINE_MAX = 64 << 10  # ... it holds back an open line up to this long (a progress bar rewritten by \r)


def read_burst(fd: int) -> tuple[bytes, bool]:
    """What the output ``fd`` holds now, up to ``READ_BURST``, and whether it is closed (else
    learned at the next read: it is readable then)."""
    chunks: list[bytes] = []
    got = 0
    while got < READ_BURST:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            break
        except OSError:  # EIO: the pty's other side is closed
            data = b""
        if not data:
            return b"".join(chunks), True
        chunks.append(data)
        got += len(data)
        if len(data) < CAUGHT_UP:
            break
    return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), False


def start_drain(src: int) -> tuple[int, int, int]:
    """Fork a process that copies the non-blocking ``src`` (a pty) into a pipe until ``src`` closes.

    Returns (its pid, the pipe's read end, a descriptor to close to make it leave). A process, not a
    thread: a thread needs the GIL after each read, and waited for it while the loop parsed (50 MB
    through a thread: 0.8-1.1 s of its CPU and ~1.2 s more CPU for the wrapper than reading the pty
    in the loop, load ~4). It leaves when ``src`` closes, when the wrapper leaves (the descriptor
    closes, or the pipe: SIGPIPE) or is killed; its own session, so signals to the wrapper's group
    do not reach it.
    """
    r, w = os.pipe()
    stay_r, stay_w = os.pipe()
    try:
        widen_pipe(w)
        os.set_blocking(r, False)
        pid = os.fork()
    except BaseException:
        for fd in (r, w, stay_r, stay_w):
            os.close(fd)
        raise
    if pid:
        os.close(w)
        os.close(stay_r)
        return pid, r, stay_w
    try:  # the drain: only os calls, and never back into the caller's code
        signal.set_wakeup_fd(-1)
        for s in (*FORWARDED, signal.SIGWINCH, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(s, signal.SIG_DFL)
        os.setsid()
        keep = sorted({src, w, stay_r})
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            if fd not in keep:
                os.dup2(null, fd)
        for lo, hi in zip([3, *(k + 1 for k in keep)], [*keep, 1 << 16], strict=True):
            if lo < hi:
                os.closerange(lo, hi)
        _drain(src, w, stay_r)
    finally:
        os._exit(0)


def _drain(src: int, dst: int, stay: int) -> None:
    """Copy ``src`` into ``dst`` until ``src`` closes or ``stay`` does (the wrapper left). Reads wait
    ``GATHER_PTY_S`` after a small one: fewer, larger reads (each wake-up may take the CPU from the
    child). A full ``dst`` makes the copy, then the child, wait."""
    while True:
        data, closed = read_burst(src)
        if data:
            write_all(dst, data)
        if closed:
            return
        if not data:  # quiet: wait for it (while it prints, read again after the sleep)
            if stay in select.select([src, stay], [], [])[0]:
                return
        elif len(data) < GATHER_BYTES:
            time.sleep(GATHER_PTY_S)


class Passthrough:
    """The part of the Runner that copies the child's output, feeds the parser and places our own lines."""

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

    def _safe(self, fn: Callable[[], Any], key: str, fallback: Callable[[], Any] | None = None) -> None:
        try:
            fn()
        except Exception as exc:
            self.say_once(key, f"the {key} failed ({exc!r}); the training goes on")
            if fallback is not None:
                with contextlib.suppress(Exception):
                    fallback()

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

    # -- the output ---------------------------------------------------------------------------
    def _stdout_bytes(self, data: bytes) -> None:
        try:
            write_all(1, data)
        except OSError as exc:
            self.say_once("stdout", f"cannot write the training's output ({exc.strerror}); it goes on")

    def _passthrough_rest(self) -> None:
        """After an internal error: only copy bytes and forward signals until the child ends."""
        assert self.child is not None
        self._pass_early(raw=True)
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
                        self._output_closed(fd)
                        continue
                    with contextlib.suppress(OSError):
                        write_all(1 if what == "out" else 2, data)
                elif what == "stdin":
                    self._forward_stdin()
                elif what in ("wake", "fifo"):
                    with contextlib.suppress(OSError):
                        os.read(fd, 1 << 16)
                elif what == "status":
                    self._child_status(fd)
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
        data, closed = read_burst(fd)
        if data:
            self._read_this_turn += len(data)
            self._pass_through(what, data)
            self._queue_parse(fd, data)
        if closed:
            self._output_closed(fd)

    def _drain_pty(self) -> None:
        """Read the child's pseudo-terminal through a pipe that a process keeps filled (``start_drain``).

        The pty holds 20 KiB, 2 ms of a child printing 10 MB/s, and the loop is often away longer:
        writing to our terminal (it waits for the terminal's reader), parsing (a slice may cross a
        grid step, and an evaluation takes ~10 ms). Then the child waited (50 MB printed: blocked
        1.2-1.6 s, 0.2-0.4 s without the wrapper). The pipe holds 1 MiB. The pty's other uses (typed
        keys, window size) stay the loop's.
        """
        for fd, key in list(self.sel.get_map().items()):
            if key.data != "out" or not os.isatty(fd):
                continue
            pid, r, stay = start_drain(fd)  # an error leaves the pty as it was, read directly
            self.sel.unregister(fd)
            self.sel.register(r, selectors.EVENT_READ, "out")
            self.splitters[r] = self.splitters.pop(fd)
            self._drain = (pid, r, stay)

    def _output_closed(self, fd: int) -> None:
        """``fd`` read its end: no more output there (and a pty's drain has ended)."""
        self.sel.unregister(fd)
        self._parse_q.append((fd, None))
        if self._drain is not None and fd == self._drain[1]:
            self._end_drain()

    def _end_drain(self) -> None:
        """The drain leaves (it has, when its pipe read its end) and is reaped."""
        if self._drain is None:
            return
        pid, r, stay = self._drain
        self._drain = None
        os.close(stay)
        os.close(r)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)

    def _copy_during(self, work: Callable[[], None]) -> None:
        """Run ``work`` (the doctor's set-up: ~0.5 s of imports, after the child started) while a
        thread passes the child's output through. Else a child that prints at once waits for us
        all that time: a pty holds 20 KiB, 2 ms of a child printing 10 MB/s (a child printing 20 MB
        under a pty: its first bytes reached the terminal 0.5-0.9 s after it started, and it was
        blocked until then). The thread writes whole lines only; a line still open when ``work``
        ends goes through the view (``_pass_early``), which then knows it is open. All of it is
        queued for the parser, as the loop would have."""
        outputs = {fd: key.data for fd, key in self.sel.get_map().items() if key.data in ("out", "err")}
        tails = dict.fromkeys(outputs, b"")
        read: list[tuple[int, bytes | None]] = []  # in order, for the parser; None: that output closed
        failed: list[tuple[str, OSError]] = []
        stop_r, stop_w = os.pipe()

        def copy(fd: int, data: bytes) -> None:
            held = tails[fd] + data
            cut = held.rfind(b"\n") + 1 if len(held) < EARLY_LINE_MAX else len(held)
            tails[fd] = held[cut:]
            if cut:
                try:
                    write_all(1 if outputs[fd] == "out" else 2, held[:cut])
                except OSError as exc:
                    failed.append((outputs[fd], exc))

        def run() -> None:
            with selectors.DefaultSelector() as sel:
                for fd in (*outputs, stop_r):
                    sel.register(fd, selectors.EVENT_READ)
                while len(sel.get_map()) > 1:
                    for key, _ in sel.select():
                        if key.fd == stop_r:
                            return
                        data, closed = read_burst(key.fd)
                        if data:
                            read.append((key.fd, data))
                            copy(key.fd, data)
                        if closed:
                            sel.unregister(key.fd)
                            read.append((key.fd, None))

        # The thread waits for the GIL after each read and write: a shorter switch interval than the
        # default 5 ms keeps the imports from leaving the pty full that long.
        interval = sys.getswitchinterval()
        sys.setswitchinterval(EARLY_SWITCH_S)
        thread = threading.Thread(target=run, name="muvo-doctor-copy", daemon=True)
        thread.start()
        try:
            work()
        finally:
            os.write(stop_w, b"x")
            thread.join()
            sys.setswitchinterval(interval)
            os.close(stop_r)
            os.close(stop_w)
            for what, exc in failed:
                self.say_once(what, f"cannot write the training's {what} ({exc.strerror}); it goes on")
            self._early = [(outputs[fd], tail) for fd, tail in tails.items() if tail]
            for fd, data in read:
                if data is not None:
                    self._queue_parse(fd, data)
                else:
                    self._output_closed(fd)

    def _pass_early(self, raw: bool = False) -> None:
        """The open lines ``_copy_during`` left: through the view, or only copied (``raw``: the
        set-up failed, there is no view)."""
        early, self._early = self._early, []
        for what, data in early:
            if raw:
                with contextlib.suppress(OSError):
                    write_all(1 if what == "out" else 2, data)
            else:
                self._pass_through(what, data)

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

    # -- the parser on the side ---------------------------------------------------------------
    def _queue_parse(self, fd: int, data: bytes) -> None:
        if len(data) > PARSE_BACKLOG:
            # Only its last PARSE_BACKLOG bytes can wait for the parser: the rest, and all that waits
            # already, is dropped at once (a flood hands over up to 1 MiB a turn: no slicing of it).
            while self._parse_q:
                self._drop_oldest()
            cut = len(data) - PARSE_BACKLOG
            self._dropped(fd, cut, data.count(b"\n", 0, cut))
            data = data[cut:]
        for i in range(0, len(data), PARSE_SLICE):
            piece = data[i : i + PARSE_SLICE]
            self._parse_q.append((fd, piece))
            self._parse_q_bytes += len(piece)
        # The parser is behind: drop its oldest work rather than make the child wait for it.
        while self._parse_q_bytes > PARSE_BACKLOG:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        fd, data = self._parse_q.popleft()
        if data is None:
            self._close_splitter(fd)
            return
        self._parse_q_bytes -= len(data)
        self._dropped(fd, len(data), data.count(b"\n"))

    def _dropped(self, fd: int, size: int, lines: int) -> None:
        self.unparsed_bytes += size
        self.unparsed_lines += lines
        splitter = self.splitters.get(fd)
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

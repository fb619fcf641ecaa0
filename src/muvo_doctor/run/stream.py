"""The telemetry stream: JSON lines from an instrumented child (and `run --record` files).

A stream is UTF-8 text, one JSON object per line. A recorded file starts with a header line;
every other line is one of:

    {"schema": "muvo-doctor/telemetry/v1", "source": "python train.py", "created": 1764170000.0}
    {"name": "train/loss", "step": 12, "value": 0.6931, "digits": null, "rank": 0}   # an Observation
    {"event": "hello", "stage": "python" | "torch", "rank": 0, "pid": 4242}             # a process started
    {"event": "step", "step": 12, "rank": 0}                                            # heartbeat: current step

A helper process (a descendant that is not a rank, docs/run.md) says ``"role": "helper"`` in its
hello (with its ``command`` at the torch stage) and only sends step beats with its ``pid``.
    {"event": "notice", "message": "...", "rank": 0}                                    # a doctor failure, once

Non-finite values are written as Python's json tokens ``NaN``, ``Infinity`` and ``-Infinity``
(a NaN loss is exactly what the doctor must see); :func:`parse_line` reads them back.
The writer and the reader here are the only code that knows this format.
"""

from __future__ import annotations

import json
import os
import select
import time
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from muvo_doctor.core.observation import Observation
from muvo_doctor.fdio import write_all

SCHEMA = "muvo-doctor/telemetry/v1"
# Writes of at most PIPE_BUF bytes to a pipe or FIFO are atomic, so lines from several ranks
# sharing one FIFO never interleave mid-line (POSIX guarantees at least 512; Linux has 4096).
PIPE_BUF: int = getattr(select, "PIPE_BUF", 512)


class Header(BaseModel):
    """The first line of a recorded stream."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_: Literal["muvo-doctor/telemetry/v1"] = Field(default=SCHEMA, alias="schema")
    source: str = ""
    created: float = Field(default_factory=time.time)


class Hello(BaseModel):
    """A Python process of the child started (``stage="python"``) or imported torch (``"torch"``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event: Literal["hello"] = "hello"
    stage: Literal["python", "torch"]
    rank: int | None = None
    pid: int
    role: Literal["rank", "helper"] = "rank"
    command: str | None = None  # a helper's command line (as the process saw it; redacted by the parent)


class StepBeat(BaseModel):
    """The child's current optimizer step (sent at most a few times a second)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event: Literal["step"] = "step"
    step: int
    rank: int | None = None
    pid: int | None = None  # a helper's beats only


class Notice(BaseModel):
    """A one-time message from the child's doctor (e.g. its instrumentation failed)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event: Literal["notice"] = "notice"
    message: str
    rank: int | None = None


Message = Header | Observation | Hello | StepBeat | Notice


class StreamError(ValueError):
    """A line that is not a telemetry message."""


def encode(msg: Message) -> str:
    """One message as a JSON line (with the trailing newline)."""
    if isinstance(msg, Observation):
        return encode_observation(msg.name, msg.step, msg.value, msg.digits, msg.rank)
    return json.dumps(msg.model_dump(by_alias=True, exclude_none=True), separators=(",", ":")) + "\n"


def encode_observation(name: str, step: int, value: float, digits: int | None, rank: int | None) -> str:
    """The fast path for observations: no model is built."""
    return (
        json.dumps(
            {"name": name, "step": step, "value": value, "digits": digits, "rank": rank},
            separators=(",", ":"),
        )
        + "\n"
    )


def parse_line(line: str | bytes) -> Message | None:
    """Parse one line; None for a blank line.

    Raises:
        StreamError: the line is not JSON or not one of the messages above.
    """
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    text = text.strip()
    if not text:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StreamError(f"not JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(data, dict):
        raise StreamError("not a JSON object")
    try:
        if "name" in data:
            return Observation.model_validate(data)
        if "schema" in data:
            if data["schema"] != SCHEMA:
                raise StreamError(f"unknown schema {data['schema']!r}; expected {SCHEMA!r}")
            return Header.model_validate(data)
        kind = {"hello": Hello, "step": StepBeat, "notice": Notice}.get(data.get("event"))  # type: ignore[arg-type]
        if kind is None:
            raise StreamError(f"unknown message with keys {sorted(data)}")
        return kind.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise StreamError(f"bad field '{loc}': {first['msg']}") from None


class LineReader:
    """Incremental reader: feed it bytes as they arrive, get whole messages back.

    Bad lines are counted in ``errors`` (the first one kept in ``first_error``) and skipped:
    a stream damaged by a crashing child still yields everything that was whole.
    """

    def __init__(self) -> None:
        self._partial = b""
        self.errors = 0
        self.first_error: str | None = None

    def feed(self, data: bytes) -> list[Message]:
        buf = self._partial + data
        *lines, self._partial = buf.split(b"\n")
        out: list[Message] = []
        for raw in lines:
            try:
                msg = parse_line(raw)
            except StreamError as exc:
                self.errors += 1
                if self.first_error is None:
                    self.first_error = str(exc)
                continue
            if msg is not None:
                out.append(msg)
        return out

    def close(self) -> list[Message]:
        """Whatever complete message is left without a final newline."""
        rest, self._partial = self._partial, b""
        return self.feed(rest + b"\n") if rest.strip() else []


def read_stream(path: str | Path) -> Iterator[Message]:
    """Every message of a recorded stream file (bad lines skipped, see :class:`LineReader`).

    Raises:
        StreamError: the file does not start with a telemetry header.
        OSError: the file cannot be read.
    """
    reader = LineReader()
    with open(path, "rb") as fh:
        first = fh.readline()
        try:
            head = parse_line(first) if first.strip() else None
        except StreamError:
            head = None
        if not isinstance(head, Header):
            raise StreamError(f"{path}: not a muvo-doctor telemetry record (no {SCHEMA!r} header line)")
        yield head
        for chunk in iter(lambda: fh.read(1 << 16), b""):
            yield from reader.feed(chunk)
        yield from reader.close()


def read_observations(path: str | Path) -> Iterator[Observation]:
    """Only the observations of a recorded stream file."""
    for msg in read_stream(path):
        if isinstance(msg, Observation):
            yield msg


def is_stream(path: str | Path) -> bool:
    """Whether a file starts with the telemetry header (for audit's format sniffing)."""
    try:
        with open(path, "rb") as fh:
            first = fh.readline(4096)
        return isinstance(parse_line(first), Header)
    except (OSError, StreamError):
        return False


class BatchWriter:
    """Batches lines and writes them to a file descriptor in whole-line chunks of at most PIPE_BUF bytes.

    Meant for the child, on a non-blocking pipe: a chunk the pipe cannot take now waits in a
    backlog that every later ``add``/``flush`` (the step heartbeats, 20 a second) tries again, so a
    reader that is busy for a moment loses nothing and training never stalls. Only a backlog above
    ``max_backlog_bytes`` (a reader gone for good) drops its oldest chunks; ``dropped`` counts their
    lines. Any OSError other than a full pipe (a closed pipe, a full disk) disables the writer;
    ``failure`` says why. It never raises.
    """

    def __init__(
        self, fd: int, *, max_lines: int = 256, max_seconds: float = 1.0, max_backlog_bytes: int = 16 << 20
    ) -> None:
        self.fd = fd
        self.max_lines = max_lines
        self.max_seconds = max_seconds
        self.max_backlog_bytes = max_backlog_bytes
        self._lines: list[str] = []
        self._backlog: deque[tuple[bytes, int]] = deque()
        self._backlog_bytes = 0
        self._last = time.monotonic()
        self.dropped = 0
        self.failure: str | None = None

    @property
    def pending(self) -> int:
        """Lines accepted but not yet written."""
        return len(self._lines) + sum(n for _, n in self._backlog)

    def add(self, line: str) -> None:
        self.add_many((line,))

    def add_many(self, lines: Iterable[str]) -> None:
        if self.failure is not None:
            return
        self._lines.extend(lines)
        if len(self._lines) >= self.max_lines or time.monotonic() - self._last >= self.max_seconds:
            self.flush()
        elif self._backlog:
            self._drain()

    def flush(self) -> None:
        """Write what the pipe takes now; keep the rest for the next call."""
        self._last = time.monotonic()
        if self.failure is not None:
            self._lines.clear()
            return
        if self._lines:
            lines, self._lines = self._lines, []
            for chunk, n in _chunks(lines, PIPE_BUF):
                self._backlog.append((chunk, n))
                self._backlog_bytes += len(chunk)
        self._drain()
        while self._backlog_bytes > self.max_backlog_bytes and self._backlog:
            chunk, n = self._backlog.popleft()
            self._backlog_bytes -= len(chunk)
            self.dropped += n

    def close(self, timeout: float = 2.0) -> None:
        """Flush, then wait up to ``timeout`` seconds for the reader to take the backlog (at exit)."""
        self.flush()
        deadline = time.monotonic() + timeout
        while self._backlog and self.failure is None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                select.select([], [self.fd], [], min(left, 0.1))
            except (OSError, ValueError):
                break
            self._drain()
        self.dropped += sum(n for _, n in self._backlog)
        self._backlog.clear()
        self._backlog_bytes = 0

    def _drain(self) -> None:
        while self._backlog:
            chunk, n = self._backlog[0]
            try:
                written = os.write(self.fd, chunk)
            except BlockingIOError:
                return
            except OSError as exc:
                self.failure = f"{type(exc).__name__}: {exc}"
                self._backlog.clear()
                self._backlog_bytes = 0
                return
            self._backlog.popleft()
            self._backlog_bytes -= len(chunk)
            if written < len(chunk):  # only possible for files or a single oversized line
                try:
                    write_all(self.fd, chunk[written:])
                except OSError as exc:
                    self.failure = f"{type(exc).__name__}: {exc}"
                    return


def _chunks(lines: list[str], limit: int) -> Iterator[tuple[bytes, int]]:
    buf: list[bytes] = []
    size = 0
    for line in lines:
        b = line.encode("utf-8")
        if buf and size + len(b) > limit:
            yield b"".join(buf), len(buf)
            buf, size = [], 0
        buf.append(b)
        size += len(b)
    if buf:
        yield b"".join(buf), len(buf)

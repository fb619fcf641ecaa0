"""TensorBoard event files (``events.out.tfevents.*``), read without TensorFlow or protobuf.

A TFRecord file is a sequence of ``uint64 length, uint32 crc, bytes[length], uint32 crc``; each
record is an ``Event`` protobuf. Only the few fields scalars need are decoded: ``Event.step`` (2),
``Event.summary`` (5) -> ``Summary.value`` (1) -> ``Value.tag`` (1), ``Value.simple_value`` (2,
PyTorch's SummaryWriter, TF1) or ``Value.tensor`` (8, TF2/Keras: a one-element float/double/int
``TensorProto``). Histograms, images and text are skipped. Both CRCs of every record are checked
(masked CRC-32C, as TFRecord defines them): a truncated or corrupt file is read up to its first bad
record, and the break (where, records read, bytes skipped) is reported.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from muvo_doctor.logs.base import MAX_STEP, AddPoint, Break, ReadStats, as_fraction, classify
from muvo_doctor.logs.crc32c import crc32c, crc32c_many, masked

_SPLIT_DIRS = {
    "train": "train",
    "validation": "val",
    "val": "val",
    "eval": "val",
    "valid": "val",
    "test": "test",
}
_MAX_RECORD = 256 << 20
_BLOCK = 4 << 20  # bytes read and CRC-checked at a time


def looks_like_tfrecord(head: bytes) -> bool:
    """The first record of an event file: a sane length and an Event starting with wall_time (field 1, fixed64)."""
    if len(head) < 13:
        return False
    (length,) = struct.unpack_from("<Q", head, 0)
    return 0 < length < (1 << 20) and head[12] == 0x09


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes):  # -> Iterator[tuple[int, int, int | bytes]]
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            val, i = _varint(buf, i)
            yield field, wire, val
        elif wire == 1:
            yield field, wire, buf[i : i + 8]
            i += 8
        elif wire == 2:
            size, i = _varint(buf, i)
            yield field, wire, buf[i : i + size]
            i += size
        elif wire == 5:
            yield field, wire, buf[i : i + 4]
            i += 4
        else:  # groups (3, 4) are not used by these messages
            raise ValueError(f"unsupported wire type {wire}")


def _last(buf: bytes, *wanted: tuple[int, int]) -> dict[tuple[int, int], Any]:
    """The last value of each (field, wire type) asked for: how protobuf reads a non-repeated field."""
    got: dict[tuple[int, int], Any] = {}
    for field, wire, val in _fields(buf):
        if (field, wire) in wanted:
            got[field, wire] = val
    return got


def _tensor_scalar(buf: bytes) -> float | None:
    dtype = 0
    values: list[float] = []
    content = b""
    for field, wire, val in _fields(buf):
        if field == 1 and wire == 0:
            dtype = int(val)  # type: ignore[arg-type]
        elif field == 4 and wire == 2:
            content = bytes(val)  # type: ignore[arg-type]
        elif field == 5:  # float_val
            b = bytes(val)  # type: ignore[arg-type]
            values.extend(struct.unpack(f"<{len(b) // 4}f", b))
        elif field == 6:  # double_val
            b = bytes(val)  # type: ignore[arg-type]
            values.extend(struct.unpack(f"<{len(b) // 8}d", b))
        elif field in (7, 10):  # int_val, int64_val
            if wire == 0:
                values.append(float(val))  # type: ignore[arg-type]
            else:
                b, j = bytes(val), 0  # type: ignore[arg-type]
                while j < len(b):
                    v, j = _varint(b, j)
                    values.append(float(v))
    if content:
        fmt = {1: "f", 2: "d", 3: "i", 9: "q"}.get(dtype)
        if fmt is None or len(content) != struct.calcsize(fmt):
            return None
        return float(struct.unpack("<" + fmt, content)[0])
    if len(values) == 1:
        return values[0]
    return None


def read_events(path: str, add: AddPoint) -> ReadStats:
    """Scalars of one event file into ``add``. A parent folder named ``train``/``validation`` (Keras)
    names the split: ``validation/epoch_loss`` -> ``val/loss``. A truncated or corrupt file is read
    up to its first bad record and the break is recorded in ``ReadStats.breaks``."""
    st = ReadStats()
    split = _SPLIT_DIRS.get(Path(path).parent.name.lower())
    steps: set[int] = set()
    names: dict[str, tuple[str | None, bool]] = {}
    records = 0
    with open(path, "rb") as f:
        for item in _records(f):
            if isinstance(item, _Bad):
                size = os.fstat(f.fileno()).st_size
                st.breaks.append(Break(path, item.offset, records, size - item.offset, item.reason))
                break
            records += 1
            try:
                _event(item, add, st, steps, names, split)
            except (ValueError, IndexError, struct.error):  # its checksum holds: a writer's odd event
                st.skip("an event record that is not a valid Event message")
    st.records = len(steps)
    if not st.points:
        st.note = "event file without scalar summaries" + (" (truncated or corrupt)" if st.breaks else "")
    return st


class _Bad(NamedTuple):
    offset: int
    reason: str


def _records(f: BinaryIO) -> Iterator[bytes | _Bad]:
    """The payload of each record in file order, both CRCs checked; at the first bad record a _Bad
    (where it starts, why), then nothing: a broken frame leaves no trustworthy place to resume.

    Reads ``_BLOCK`` bytes at a time (more only for a record longer than that, up to ``_MAX_RECORD``),
    and checks the CRCs of each block's records together (crc32c.py: vectorised).
    """
    buf, base, eof = b"", 0, False  # base: file offset of buf[0]
    while True:
        more = f.read(_BLOCK)
        eof = len(more) < _BLOCK
        buf += more
        offsets, lengths, end, bad = _frame(buf, eof)
        arr = np.frombuffer(buf, dtype=np.uint8)
        ok = _crc_ok(arr, offsets, lengths)
        first_bad = int(np.argmin(ok)) if len(ok) and not ok.all() else len(ok)
        for off, n in zip(offsets[:first_bad].tolist(), lengths[:first_bad].tolist(), strict=True):
            yield buf[off + 12 : off + 12 + n]
        if first_bad < len(ok):
            yield _Bad(base + int(offsets[first_bad]), "a record fails its CRC check (corrupt)")
            return
        if bad is not None:
            yield _Bad(base + end, bad)
            return
        if eof:
            if end < len(buf):
                yield _Bad(base + end, "the last record is cut off (truncated)")
            return
        buf, base = buf[end:], base + end


def _frame(buf: bytes, eof: bool) -> tuple[np.ndarray, np.ndarray, int, str | None]:
    """Offsets and lengths of the complete records in ``buf``, where the next one starts, and why
    framing stopped there when it cannot go on (an impossible length, a length whose CRC fails)."""
    offsets: list[int] = []
    lengths: list[int] = []
    i, size, why = 0, len(buf), None
    while i + 12 <= size:
        (n,) = struct.unpack_from("<Q", buf, i)
        if n > _MAX_RECORD or i + 16 + n > size:
            # The record does not fit what was read: check its length before trusting it (8 bytes).
            if not _length_ok(buf, i):
                why = "a record length fails its CRC check (corrupt)"
            elif n > _MAX_RECORD:
                why = f"a record of {n} bytes, more than an event file holds"
            elif eof:
                why = "the last record is cut off (truncated)"
            break  # otherwise the rest of this record is in the next block
        offsets.append(i)
        lengths.append(n)
        i += 16 + n
    return np.array(offsets, dtype=np.int64), np.array(lengths, dtype=np.int64), i, why


def _length_ok(buf: bytes, i: int) -> bool:
    (stored,) = struct.unpack_from("<I", buf, i + 8)
    return masked(crc32c(buf[i : i + 8])) == stored


def _crc_ok(arr: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per record: do the stored masked CRCs of its length and of its data match?"""
    if not len(offsets):
        return np.ones(0, dtype=bool)
    head = masked(crc32c_many(arr, offsets, np.full(len(offsets), 8)))
    data = masked(crc32c_many(arr, offsets + 12, lengths))
    return (head == _u32(arr, offsets + 8)) & (data == _u32(arr, offsets + 12 + lengths))


def _u32(arr: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Little-endian uint32 at each offset of ``at``."""
    b = arr[at[:, None] + np.arange(4)].astype(np.uint32)
    return b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16) | (b[:, 3] << 24)


def _event(
    data: bytes, add: AddPoint, st: ReadStats, steps: set[int], names: dict, split: str | None
) -> None:
    top = _last(data, (2, 0), (5, 2))  # step, summary
    step, summary = int(top.get((2, 0), 0)), bytes(top.get((5, 2), b""))
    if not summary:
        return
    if step >= MAX_STEP:  # a corrupt varint or a writer bug: not a step
        st.skip(f"an event with step {step} (>= 2**53)")
        return
    for field, wire, val in _fields(summary):
        if field != 1 or wire != 2:
            continue
        got = _last(bytes(val), (1, 2), (2, 5), (8, 2))  # tag, simple_value, tensor
        tag = bytes(got.get((1, 2), b"")).decode("utf-8", errors="replace")
        value = None
        if (2, 5) in got:
            value = struct.unpack("<f", got[2, 5])[0]
        if (8, 2) in got:  # writers set one of the two (TF1 simple_value, TF2 and torch tensor)
            value = _tensor_scalar(bytes(got[8, 2]))
        if not tag or value is None:
            continue
        kind = names.get(tag)
        if kind is None:
            key = tag if split is None or tag.lower().startswith(split) else f"{split}_{tag}"
            name, frac, _ = classify(key)
            kind = names[tag] = (name, frac)
        name, frac = kind
        if name is None:
            continue
        d = None
        if frac:
            value, d = as_fraction(value, None)
        add(name, step, value, d)
        st.points += 1
        steps.add(step)
        if step > st.last_step:
            st.last_step = step

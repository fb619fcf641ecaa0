"""TensorBoard event files (``events.out.tfevents.*``), read without TensorFlow or protobuf.

A TFRecord file is a sequence of ``uint64 length, uint32 crc, bytes[length], uint32 crc``; each
record is an ``Event`` protobuf. Only the few fields scalars need are decoded: ``Event.step`` (2),
``Event.summary`` (5) -> ``Summary.value`` (1) -> ``Value.tag`` (1), ``Value.simple_value`` (2,
PyTorch's SummaryWriter, TF1) or ``Value.tensor`` (8, TF2/Keras: a one-element float/double/int
``TensorProto``). Histograms, images and text are skipped. CRCs are not verified: a corrupt
record ends the read like a truncated one.
"""

from __future__ import annotations

import struct
from pathlib import Path

from muvo_doctor.logs.base import MAX_STEP, AddPoint, ReadStats, as_fraction, classify

_SPLIT_DIRS = {
    "train": "train",
    "validation": "val",
    "val": "val",
    "eval": "val",
    "valid": "val",
    "test": "test",
}
_MAX_RECORD = 256 << 20


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
    names the split: ``validation/epoch_loss`` -> ``val/loss``."""
    st = ReadStats()
    split = _SPLIT_DIRS.get(Path(path).parent.name.lower())
    steps: set[int] = set()
    names: dict[str, tuple[str | None, bool]] = {}
    truncated = False
    with open(path, "rb") as f:
        while True:
            head = f.read(12)
            if len(head) < 12:
                truncated = bool(head)
                break
            (length,) = struct.unpack_from("<Q", head, 0)
            if length > _MAX_RECORD:
                truncated = True
                break
            data = f.read(length)
            f.read(4)
            if len(data) < length:
                truncated = True
                break
            try:
                _event(data, add, st, steps, names, split)
            except (ValueError, IndexError, struct.error):
                truncated = True
                break
    st.records = len(steps)
    if not st.points:
        st.note = "event file without scalar summaries" + (" (truncated or corrupt)" if truncated else "")
    return st


def _event(
    data: bytes, add: AddPoint, st: ReadStats, steps: set[int], names: dict, split: str | None
) -> None:
    step = 0
    summary = b""
    for field, wire, val in _fields(data):
        if field == 2 and wire == 0:
            step = int(val)  # type: ignore[arg-type]
        elif field == 5 and wire == 2:
            summary = bytes(val)  # type: ignore[arg-type]
    if not summary:
        return
    if step >= MAX_STEP:  # a corrupt varint or a writer bug: not a step
        st.skip(f"an event with step {step} (>= 2**53)")
        return
    for field, wire, val in _fields(summary):
        if field != 1 or wire != 2:
            continue
        tag, value = "", None
        for f2, w2, v2 in _fields(bytes(val)):  # type: ignore[arg-type]
            if f2 == 1 and w2 == 2:
                tag = bytes(v2).decode("utf-8", errors="replace")  # type: ignore[arg-type]
            elif f2 == 2 and w2 == 5:
                value = struct.unpack("<f", v2)[0]
            elif f2 == 8 and w2 == 2:
                value = _tensor_scalar(bytes(v2))  # type: ignore[arg-type]
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

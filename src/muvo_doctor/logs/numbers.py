"""Many decimal numbers parsed at once, each to exactly the float ``float(text)`` gives.

``float()`` costs 0.1-0.6 us a value on our machines, most of what reading a dense log costs. Here
the fields of a chunk are parsed by numpy, all at once: the digits of each field (at most 24, at
most 19 after leading zeros) are put together eight at a time in 64-bit words (no loop per digit),
and the integer they make is divided by the power of ten of its decimals: in doubles when both are
exact doubles (below 2**53, at most 22 decimals: one correctly rounded division), else in x87
extended precision (64-bit mantissa: both exact, the division correctly rounded), where rounding
the result to a double is correct except when it lies exactly half way between two doubles (double
rounding). Those fields, fields in any other spelling (an exponent, "nan", a space, "+"), and the
long ones where long double is not x87's, are left to the caller (``ok`` False), which parses them
one by one with ``float``: what a reader gets never depends on the path.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# x87 extended precision: a 64-bit mantissa, whose low 11 bits are what rounding to a double drops
_X87 = np.finfo(np.longdouble).nmant == 63 and np.dtype(np.longdouble).itemsize in (12, 16)
_WIDTH = 24  # digits in a field's window (3 words of 8)
_HALF = np.uint64(0x400)  # the low 11 bits of a long double exactly half way between two doubles
_POW10 = np.array([np.longdouble(10) ** k for k in range(_WIDTH + 1)])  # exact: 5**24 < 2**64
_POW10_D = np.array([10.0**k for k in range(_WIDTH + 1)])  # exact up to 10**22
# _MASK[k]: the 3 words of a window that keep its last k bytes (the digits of a field of k digits)
_MASK = np.array(
    [[(1 << 64) - (1 << 8 * min(max(_WIDTH - k - 8 * j, 0), 8)) if _WIDTH - k - 8 * j < 8 else 0 for j in range(3)]
     for k in range(_WIDTH + 1)],
    np.uint64,
)  # fmt: skip
_PIECE = 1 << 18  # bytes parsed at once: larger temporaries cost more in page faults than they save


class Fields(NamedTuple):
    """The fields of a text, parsed: ``values[i]`` is ``float(field i)`` where ``ok[i]`` (0.0
    elsewhere); ``places[i]`` the digits after its "." (-1: no ".") where ``ok[i]``; the field is
    ``data[starts[i]:ends[i]]``."""

    values: np.ndarray
    ok: np.ndarray
    places: np.ndarray
    starts: np.ndarray
    ends: np.ndarray


def decimals(data: bytes, seps: bytes = b",") -> Fields:
    """The fields of ASCII ``data`` between any of the bytes ``seps``, parsed (``Fields``)."""
    parts: list[Fields] = []
    pos, size = 0, len(data)
    while True:
        end = size
        if size - pos > _PIECE:
            cut = [c for c in (data.find(s, pos + _PIECE) for s in seps) if c >= 0]
            end = min(cut) if cut else size
        got = _decimals(data[pos:end], seps)
        if pos:
            got = got._replace(starts=got.starts + pos, ends=got.ends + pos)
        parts.append(got)
        if end >= size:
            break
        pos = end + 1
    if len(parts) == 1:
        return parts[0]
    return Fields(*(np.concatenate(arrays) for arrays in zip(*parts, strict=True)))


def _decimals(data: bytes, seps: bytes) -> Fields:
    b = np.frombuffer(data, np.uint8)
    # every byte that is not a digit; which of them are separators, dots, minus signs, others
    nd = np.flatnonzero((b - np.uint8(ord("0"))) > 9)
    c = b[nd]
    is_sep = c == seps[0]
    for s in seps[1:]:
        is_sep |= c == s
    cuts = nd[is_sep]
    nf = len(cuts) + 1
    starts = np.empty(nf, np.int64)
    starts[0] = 0
    starts[1:] = cuts + 1
    ends = np.empty(nf, np.int64)
    ends[:-1] = cuts
    ends[-1] = len(b)
    is_dot = c == ord(".")
    is_minus = c == ord("-")
    field = np.cumsum(is_sep)  # the field of each non-digit (a separator: the field it starts)
    # a field is plain when it holds only digits, at most one ".", and a "-" only as its first byte
    bad = np.zeros(nf, bool)
    bad[field[~(is_sep | is_dot | is_minus)]] = True
    mi = np.flatnonzero(is_minus)
    at, minus = field[mi], nd[mi]
    first = starts[at] == minus
    bad[at[~first]] = True
    neg = np.zeros(nf, bool)
    neg[at[first]] = True
    removed = np.bincount(at, minlength=nf)
    di = np.flatnonzero(is_dot)
    at, dots = field[di], nd[di]
    ndots = np.bincount(at, minlength=nf)
    removed += ndots
    places = np.full(nf, -1, np.int64)
    places[at] = ends[at] - dots - 1
    ndig = ends - starts - removed
    bad |= (ndots > 1) | (ndig <= 0) | (ndig > _WIDTH)
    # Without its "." and "-", a plain field is its digits: its window is the _WIDTH bytes that end
    # where it ends, all but its own digits masked out. (A bad field's window is not read.)
    flat = b"0" * _WIDTH + data.translate(None, b".-")
    rows = np.ndarray((len(flat) - _WIDTH + 1,), f"V{_WIDTH}", flat, strides=(1,))  # every window
    dend = ends - np.cumsum(removed)
    # read as little-endian words on any machine: the digit arithmetic below counts on the byte order
    w = rows[dend].view("<u8").reshape(nf, 3).astype(np.uint64, copy=False) ^ np.uint64(0x3030303030303030)
    w &= np.take(_MASK, np.where(bad, 0, ndig), axis=0)  # byte 0 of a word is its most significant digit
    # pairs of digits (10 * 2**8 + 1), then fours (100 * 2**16 + 1), then eights (10**4 * 2**32 + 1)
    w *= np.uint64(2561)
    w >>= np.uint64(8)
    w &= np.uint64(0x00FF00FF00FF00FF)
    w *= np.uint64(6553601)
    w >>= np.uint64(16)
    w &= np.uint64(0x0000FFFF0000FFFF)
    w *= np.uint64(42949672960001)
    w >>= np.uint64(32)
    hi, mid, lo = w[:, 0], w[:, 1], w[:, 2]
    bad |= hi >= 1000  # more than 19 digits after the leading zeros: the integer overflows 64 bits
    m = hi * np.uint64(10**16) + mid * np.uint64(10**8) + lo
    k = np.where(bad, 0, np.maximum(places, 0))
    # Where the integer and 10**k are exact doubles (< 2**53, k <= 22) one division is correctly
    # rounded; the others are divided in long double.
    small = (m < np.uint64(1 << 53)) & (k <= 22)
    vals = m.astype(np.float64) / _POW10_D[np.minimum(k, 22)]
    big = np.flatnonzero(~small & ~bad)
    if big.size and not _X87:
        bad[big] = True
    elif big.size:
        q = m[big].astype(np.longdouble) / _POW10[k[big]]
        bad[big[(q.view(np.uint64).reshape(big.size, -1)[:, 0] & np.uint64(0x7FF)) == _HALF]] = True
        vals[big] = q.astype(np.float64)
    ni = np.flatnonzero(neg)
    vals[ni] = -vals[ni]
    vals[bad] = 0.0
    return Fields(vals, ~bad, places, starts, ends)

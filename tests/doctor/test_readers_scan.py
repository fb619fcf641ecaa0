"""A console log's pairs are read line shape by line shape (``logs.text_scan``); what comes out must be
what one ``KV_RE`` scan over the whole batch gives: every pair of every line, in order, whatever the
digits (any count, other scripts'), across batches that share shapes, converted alike (key, value to
the bit, decimals, exponent, percentage, ratio)."""

from __future__ import annotations

import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from muvo_doctor.logs.text_pairs import KV_RE, NL_MARK
from muvo_doctor.logs.text_scan import PairScanner, Scan

_WORDS = ["loss", "Loss", "val_acc", "lr", "step", "Epoch", "map50", "it/s", "GiB", "iters", "nan", "inf"]
_WORDS += ["Train Loss", "x", "e", "E", "tensor", "avg_score", "Zqctr"]
_MARKS = [
    "=",
    ": ",
    " ",
    ":",
    ", ",
    "|",
    "[",
    "]",
    "/",
    "%",
    "'",
    '"',
    "(",
    ")",
    ".",
    "-",
    "+",
    "\t",
    "█",
    "\r",
]
_DIGITS = "0123456789"
_OTHER_DIGITS = "\u0663\uff13"  # ARABIC-INDIC THREE, FULLWIDTH THREE: digits to the pattern too


def _reference(text: str) -> Scan | None:
    pairs = KV_RE.findall(text.replace("\n", NL_MARK))
    return Scan.of_pairs(pairs, text) if pairs else None


def _columns(s: Scan | None) -> tuple[object, ...] | None:
    """What a scan says about each pair, comparable with ==: keys as strings, values as bits."""
    if s is None:
        return None

    def col(a: np.ndarray | None) -> list[object] | None:
        return None if a is None else a.tolist()

    keys = [s.keys[i] for i in s.key.tolist()]
    bits = s.vals.view(np.int64).tolist()
    return keys, bits, col(s.decimals), col(s.exps), col(s.pct), col(s.dens), col(s.den_len), s.printed()


def _redigit(line: str, rng: random.Random) -> str:
    """The same shape with other digits: every digit run replaced by a run of another length."""
    out = []
    for ch in line:
        if ch in _DIGITS:
            if not out or out[-1][-1:] not in _DIGITS:
                out.append("".join(rng.choice(_DIGITS) for _ in range(rng.randint(1, 6))))
        else:
            out.append(ch)
    return "".join(out)


_token = st.one_of(
    st.sampled_from(_WORDS),
    st.sampled_from(_MARKS),
    st.text(_DIGITS, min_size=1, max_size=7),
    st.text(_DIGITS + _OTHER_DIGITS, min_size=1, max_size=3),
)
_line = st.lists(_token, max_size=14).map("".join)


@settings(max_examples=300, deadline=None)
@given(shapes=st.lists(_line, min_size=1, max_size=6), seed=st.integers(0, 2**32 - 1), head=_line)
def test_the_scan_by_line_shape_finds_what_one_scan_finds(shapes: list[str], seed: int, head: str) -> None:
    rng = random.Random(seed)
    scanner = PairScanner()
    for batch in range(3):  # later batches reuse the shapes the first one saw
        lines = [_redigit(rng.choice(shapes), rng) for _ in range(rng.randint(1, 60))]
        text = (head if batch == 0 else "") + "\n" + "\n".join(lines)
        assert _columns(scanner.scan(text)) == _columns(_reference(text))


def test_a_batch_of_mostly_new_shapes_is_scanned_whole_and_its_shapes_not_kept() -> None:
    lines = [f"sample_{chr(65 + i % 26)}{'x' * (i // 26)} loss={i}.5" for i in range(200)]
    text = "\n" + "\n".join(lines)
    scanner = PairScanner()
    assert _columns(scanner.scan(text)) == _columns(_reference(text))
    assert not scanner.shapes


def test_long_lines_are_scanned_whole_and_their_shapes_not_kept() -> None:
    lines = [" ".join(f"k{j}={i}.{j}" for j in range(150)) for i in range(40)]  # ~1.3 KB a line
    text = "\n" + "\n".join(lines)
    scanner = PairScanner()
    assert _columns(scanner.scan(text)) == _columns(_reference(text))
    assert not scanner.shapes


def test_digits_right_after_the_line_start_are_read_per_line() -> None:
    # each line's first key and value carry digits next to the newline mark the scan puts there
    lines = [f"x{i % 7}={i}.5 top{i % 3} {i % 5}" for i in range(40)]
    text = "\n" + "\n".join(lines)
    got = PairScanner().scan(text)
    assert _columns(got) == _columns(_reference(text))
    assert got is not None and {"x3", "top2"} <= set(got.keys)

"""Numbers parsed in bulk (logs/numbers.py) are exactly what ``float`` gives, and the readers that use
them read the same series as their one-record-at-a-time rules on awkward spellings."""

from __future__ import annotations

import json
import random
import struct
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_same_series

from muvo_doctor.core.history import History
from muvo_doctor.logs import csvlog, numbers
from muvo_doctor.logs.jsonl import read_json_array, read_jsonl

AWKWARD = [
    "", "-", ".", "-.", "1.", ".5", "-.5", "-0", "0", "-0.0", "007", "1..2", "1-2", "--1", "+1",
    " 1", "1 ", "nan", "NaN", "-inf", "Infinity", "1e5", "1E-05", "1_000", "0x10", "1;5",
    "0.0000000000000000000000001", "1234567890123456789", "12345678901234567890",
    "9999999999999999999", "18446744073709551616", "0.1234567890123456789012345",
    "9007199254740993", "1e999", "0.30000000000000004", "2.2250738585072014", "4.9406564584124654",
]  # fmt: skip


def _near_halves(rng: random.Random, n: int) -> list[str]:
    """Decimals a few digits from a point half way between two doubles: where a parse that rounds
    twice (to 64 bits, then to 53) goes wrong."""
    out = []
    for _ in range(n):
        x = rng.uniform(0, 2) * 10 ** rng.randint(-3, 3)
        half = Decimal(x) + Decimal(float(np.spacing(x))) / 2
        text = f"{half:f}"
        out.append(text[: rng.randint(17, 22)])
    return out


def _fields(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.3:
            out.append(repr(rng.uniform(-2, 2)))
        elif r < 0.4:
            out.append(repr(rng.random() * 10 ** rng.randint(-30, 30)))
        elif r < 0.5:
            out.append(f"{rng.random():.{rng.randint(0, 12)}f}")
        elif r < 0.6:
            out.append(str(rng.randint(-(10**20), 10**20)))
        elif r < 0.7:
            out.append(rng.choice(AWKWARD))
        else:
            out.append(rng.choice(_near_halves(rng, 1)))
    return out


@pytest.mark.parametrize("seed", range(3))
def test_bulk_parse_is_float_bit_for_bit(seed: int) -> None:
    fields = _fields(seed, 20_000)
    data = ",".join(fields).encode()
    got = numbers.decimals(data)
    assert len(got.values) == len(fields)
    for i, text in enumerate(fields):
        assert data[got.starts[i] : got.ends[i]].decode() == text
        if got.ok[i]:
            want = float(text)
            assert struct.pack("<d", got.values[i]) == struct.pack("<d", want), text
            assert got.places[i] == (len(text) - text.index(".") - 1 if "." in text else -1), text
    # the bulk path is taken for plain decimals, and never for what it cannot vouch for
    assert got.ok[[i for i, t in enumerate(fields) if t in ("0", "-0", "1.", ".5", "007")]].all()
    assert not got.ok[[i for i, t in enumerate(fields) if t in ("", "-", ".", "1e5", " 1", "nan")]].any()
    if numbers._X87:  # 17-digit reprs: divided in long double
        assert got.ok[[i for i, t in enumerate(fields) if t == "0.30000000000000004"]].all()


def test_without_x87_long_fields_are_left_to_float(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(numbers, "_X87", False)  # e.g. ARM, where long double is a double or binary128
    fields = _fields(11, 5000)
    got = numbers.decimals(",".join(fields).encode())
    for i in np.flatnonzero(got.ok).tolist():
        assert struct.pack("<d", got.values[i]) == struct.pack("<d", float(fields[i])), fields[i]
    assert got.ok[[i for i, t in enumerate(fields) if t in ("0", "-0", "1.", ".5", "007")]].all()
    assert not got.ok[[i for i, t in enumerate(fields) if t == "0.30000000000000004"]].any()


def test_bulk_parse_across_pieces_and_separators(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(numbers, "_PIECE", 64)  # many pieces: offsets carried across them
    fields = _fields(7, 3000)
    data = "".join(f + ("\n" if i % 7 == 6 else ",") for i, f in enumerate(fields))[:-1].encode()
    got = numbers.decimals(data, b",\n")
    assert [data[s:e].decode() for s, e in zip(got.starts, got.ends, strict=True)] == fields
    for i in np.flatnonzero(got.ok).tolist():
        assert got.values[i] == float(fields[i]) and np.signbit(got.values[i]) == np.signbit(float(fields[i]))


def test_json_lines_with_awkward_numbers_read_as_records_one_by_one(tmp_path: Path) -> None:
    rng = random.Random(3)
    lines = []
    records = []
    for i in range(4000):
        loss = rng.choice(_fields(i, 1) + _near_halves(rng, 1))
        try:
            float(loss)
            json.loads(loss)
        except ValueError:
            loss = "0.25"
        line = f'{{"step": {i}, "loss": {loss}, "acc": {rng.choice(["57", "0.5", "99.5", "1e-05"])}}}'
        r = rng.random()
        if r < 0.01:
            line = f'{{"step": {i}, "loss": NaN, "acc": Infinity}}'
        elif r < 0.02:
            line = f'{{"step": {i}, "loss": "0.5", "note": "a \\"quoted\\" word"}}'
        elif r < 0.03:
            line = f'{{"step": {i}, "loss": -0, "acc": -0.0}}'
        elif r < 0.04:
            line = f'{{"step": {i}, "loss": 0.5, "extra": {{"grad_norm": 1.5}}}}'
        lines.append(line)
        records.append(json.loads(line, parse_float=str))
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    array = tmp_path / "log.json"
    array.write_text(json.dumps(records), encoding="utf-8")
    a, b = History(64), History(64)
    sa, sb = read_jsonl(str(log), a.add_point), read_json_array(str(array), b.add_point)
    assert_same_series(a, b)
    assert (sa.records, sa.points, sa.skipped) == (sb.records, sb.points, sb.skipped)


def test_csv_with_awkward_cells_reads_as_the_per_row_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(5)
    rows = ["step,train_loss,acc,lr"]
    for i in range(6000):
        cells = [str(i), rng.choice(_fields(i, 1)), f"{rng.uniform(0, 100):.2f}", rng.choice(AWKWARD)]
        rows.append(",".join(cells))
    path = tmp_path / "metrics.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    bulk = History(64)
    sb = csvlog.read_csv(str(path), bulk.add_point)
    monkeypatch.setattr(csvlog, "_SMALL", 1 << 30)  # every row by the per-row rules
    monkeypatch.setattr(csvlog._Columns, "text", lambda self, chunk, width: False)
    per_row = History(64)
    sr = csvlog.read_csv(str(path), per_row.add_point)
    assert_same_series(bulk, per_row)
    assert (sb.records, sb.points, sb.skipped, sb.first_reason) == (
        sr.records,
        sr.points,
        sr.skipped,
        sr.first_reason,
    )

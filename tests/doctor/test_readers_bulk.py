"""Dense logs are read in bulk (runs of same-shaped records at once); what is read must be what the
record-by-record rules give: the same series, steps, values and digits, and the same skipped count."""

from __future__ import annotations

import json
import math
import random
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_same_series

from muvo_doctor.core.history import History
from muvo_doctor.logs.jsonl import read_json_array, read_jsonl


def _records(seed: int, n: int) -> list[dict[str, object]]:
    """Training records in runs of one shape, broken by other shapes and by impossible records."""
    rng = random.Random(seed)
    out: list[dict[str, object]] = []
    shape = 0
    for i in range(n):
        if rng.random() < 0.02:
            shape = rng.randrange(5)
        loss = 0.3 + math.exp(-i / 300) + rng.gauss(0, 0.02)
        rec: dict[str, object] = {"step": i, "loss": round(loss, 4), "lr": 1e-3 * 0.999**i}
        if shape == 1:
            rec = {"iter": i, "loss": loss, "acc": round(rng.uniform(0, 100), 2), "epoch": i // 100}
        elif shape == 2:
            rec = {
                "global_step": i,
                "loss": rng.choice([1, 0, -0.0, 2.5e-07]),
                "acc": rng.choice([0, 1, 57, 99.5]),
            }
        elif shape == 3:
            rec = {"loss": round(loss, 3), "total_loss": round(loss * 2, 3), "grad_norm": rng.randint(0, 9)}
        elif shape == 4:
            rec = {"step": i, "val_loss": loss, "val_accuracy": rng.randint(1, 100)}
        r = rng.random()
        if r < 0.01:
            rec["step"] = rng.choice([1e30, -1, float("nan"), 2**53])  # a step that cannot be one
        elif r < 0.02:
            rec["loss"] = rng.choice([float("nan"), float("inf"), "0.5", 10**400, True])
        out.append(rec)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_json_lines_read_in_bulk_match_the_same_records_one_by_one(tmp_path: Path, seed: int) -> None:
    records = _records(seed, 3000)
    lines = tmp_path / "log.jsonl"
    lines.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    array = tmp_path / "log.json"  # a JSON array is read record by record (json.load, add_record)
    array.write_text(json.dumps(records), encoding="utf-8")
    a, b = History(64), History(64)
    sa, sb = read_jsonl(str(lines), a.add_point), read_json_array(str(array), b.add_point)
    assert_same_series(a, b)
    assert len(a.names()) >= 6
    assert (sa.records, sa.points, sa.last_step, sa.skipped) == (
        sb.records,
        sb.points,
        sb.last_step,
        sb.skipped,
    )
    assert sa.skipped > 0


@pytest.mark.parametrize("key", ["loss", "l\u00f6ss_\u00e9"])
def test_json_lines_with_other_scripts_digits_or_keys_read_like_json_loads(tmp_path: Path, key: str) -> None:
    # "1\u0663" (ARABIC-INDIC DIGIT THREE) is not a JSON number: json.loads rejects the line, so the
    # bulk path must not take it for one (it did: a crash, then the text reader read it as 13)
    records = [{"step": i, key: round(0.5 - i / 1000, 4)} for i in range(40)]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    lines = tmp_path / "log.jsonl"
    lines.write_text(text.replace("0.48,", "1\u0663,").replace("0.48}", "1\u0663}"), encoding="utf-8")
    array = tmp_path / "log.json"
    array.write_text(json.dumps(records[:20] + records[21:]), encoding="utf-8")
    a, b = History(64), History(64)
    sa, sb = read_jsonl(str(lines), a.add_point), read_json_array(str(array), b.add_point)
    assert_same_series(a, b)
    assert (sa.records, sa.points, sa.last_step) == (sb.records, sb.points, sb.last_step) == (39, 39, 39)


_NOT_JSON = ["01", "-01", ".5", "-.5", "5.", "1e", "1e+", "+1", "1.2.3", "--1", "1e5e5", "-", "0x1", "1_0"]
_ODD_JSON = [
    "-0",
    "-0.0",
    "0e5",
    "1E+05",
    "1.5e-07",
    "1234567890123456789",
    "0.1000000000000000055511151231257827",
]


@pytest.mark.parametrize("number", _NOT_JSON + _ODD_JSON)
def test_a_run_holding_an_unusual_number_reads_like_json_loads(tmp_path: Path, number: str) -> None:
    # the bulk path takes a run's values by their bytes and checks JSON's grammar after: a number
    # json.loads rejects makes its line not JSON, one it takes is read as json.loads reads it
    lines = [f'{{"step": {i}, "loss": 0.{i:03d}, "lr": 1e-05}}' for i in range(12)]
    lines[6] = lines[6].replace("0.006", number)
    (tmp_path / "log.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    kept = lines[:6] + lines[7:] if number in _NOT_JSON else lines
    (tmp_path / "log.json").write_text("[" + ",".join(kept) + "]", encoding="utf-8")
    a, b = History(64), History(64)
    sa = read_jsonl(str(tmp_path / "log.jsonl"), a.add_point)
    sb = read_json_array(str(tmp_path / "log.json"), b.add_point)
    assert_same_series(a, b)
    assert (sa.records, sa.points) == (sb.records, sb.points) == (len(kept), 2 * len(kept))


def _csv(seed: int, n: int, crlf: bool) -> str:
    """A CSV log: sparse train/val rows, a fixed-decimals column, percentages, per-part losses, two
    columns of one signal, padded cells, and now and then an impossible step, an overflowing or
    text cell, a row of another width."""
    rng = random.Random(seed)
    head = "step,epoch,train_loss,loss_total,acc,lr,train/box_loss,train/cls_loss,val_loss,val_acc"
    rows = [head]
    for i in range(n):
        loss = 0.3 + math.exp(-i / 300) + rng.gauss(0, 0.02)
        cells = [str(i), str(i // 100), repr(loss), f"{loss * 2:.4f}", f"{rng.uniform(1.5, 99):.2f}"]
        cells += [f"{1e-3 * 0.999**i:.6f}", f"{loss / 3:.5f}", f" {loss / 2:.5f} ", "", ""]
        if i % 50 == 49:  # a validation row: only the step, epoch and val columns
            cells = [
                str(i),
                str(i // 100),
                "",
                "",
                "",
                "",
                "",
                "",
                repr(loss + 0.1),
                str(rng.randint(0, 100)),
            ]
        r = rng.random()
        if r < 0.004:
            cells[0] = rng.choice(["1e30", "-1", "nan"])
        elif r < 0.008:
            cells[2] = rng.choice(["9" * 400, "abc", "nan", "inf", "1e-05"])
        elif r < 0.010:
            cells = cells[:4]
        rows.append(",".join(cells))
    end = "\r\n" if crlf else "\n"
    return end.join(rows) + end


def _csv_bulk_and_by_row(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[tuple[History, Any], ...]:
    """The CSV ``path`` read as audit reads it, then with every batch row by row: (history, stats) each."""
    from muvo_doctor.logs import csvlog

    bulk = History(64)
    sb = csvlog.read_csv(str(path), bulk.add_point)
    monkeypatch.setattr(csvlog, "_SMALL", 1 << 30)  # every batch row by row
    monkeypatch.setattr(csvlog._Columns, "text", lambda self, chunk, width: False)
    rows = History(64)
    return (bulk, sb), (rows, csvlog.read_csv(str(path), rows.add_point))


@pytest.mark.parametrize(("seed", "crlf"), [(0, False), (1, True), (2, False)])
def test_csv_read_column_by_column_matches_the_per_row_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int, crlf: bool
) -> None:
    path = tmp_path / "metrics.csv"
    path.write_bytes(_csv(seed, 6000, crlf).encode("utf-8"))
    (bulk, sb), (rows, sr) = _csv_bulk_and_by_row(path, monkeypatch)
    assert len(bulk.names()) >= 6
    assert_same_series(bulk, rows)
    assert (sb.records, sb.points, sb.last_step, sb.skipped, sb.first_reason) == (
        sr.records,
        sr.points,
        sr.last_step,
        sr.skipped,
        sr.first_reason,
    )
    assert sb.skipped > 0


@pytest.mark.parametrize(
    "late", [["9.98e-05", " 1E-5", "2.5e-07 ", "3.0e-2", "1e-450"], ["1e-05", "0e+450"], ["7.e+1", "1e400"]]
)
def test_a_fixed_decimals_column_that_turns_to_e_notation_reads_like_the_per_row_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, late: list[str]
) -> None:
    # lr shows 5 decimals in the first rows (a fixed-decimals column, digits kept), then e-notation
    rows = [f"{i},{0.5 - i / 1e4!r},{'0.00100' if i < 50 else late[i % len(late)]}" for i in range(3000)]
    path = tmp_path / "metrics.csv"
    path.write_text("step,train_loss,lr\n" + "\n".join(rows) + "\n", encoding="utf-8")
    (bulk, sb), (by_row, sr) = _csv_bulk_and_by_row(path, monkeypatch)
    assert_same_series(bulk, by_row)
    assert (sb.records, sb.points, sb.skipped) == (sr.records, sr.points, sr.skipped)
    assert "optim/lr" in bulk.names()


def test_a_csv_line_too_long_to_hold_is_skipped_as_it_streams_past(tmp_path: Path) -> None:
    from muvo_doctor.logs.csvlog import read_csv

    path = tmp_path / "metrics.csv"
    with open(path, "w", encoding="utf-8") as f:
        f.write("step,loss\n")
        f.writelines(f"{i},{1 / (i + 1):.4f}\n" for i in range(100))
        f.write("100," + "7" * (48 << 20) + "\n")  # one 48 MB cell: the csv module rejects its row
        f.writelines(f"{i},{1 / (i + 1):.4f}\n" for i in range(101, 200))
    h = History()
    tracemalloc.start()
    try:
        st = read_csv(str(path), h.add_point)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"{peak >> 20} MB held for a 48 MB line"
    assert st.skipped == 1 and "field larger than field limit" in st.first_reason
    assert h.series("train/loss").steps.tolist() == [i for i in range(200) if i != 100]


def test_a_json_line_too_long_to_hold_is_skipped_as_it_streams_past(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"step": i, "loss": 1 / (i + 1)}) + "\n" for i in range(100))
        f.write('{"step": 100, "note": "' + "x" * (48 << 20) + '"}\n')
        f.writelines(json.dumps({"step": i, "loss": 1 / (i + 1)}) + "\n" for i in range(101, 200))
    h = History()
    tracemalloc.start()
    try:
        st = read_jsonl(str(path), h.add_point)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"{peak >> 20} MB held for a 48 MB line"
    assert st.skipped == 1 and "KB line (line 101)" in st.first_reason
    assert h.series("train/loss").steps.tolist() == [i for i in range(200) if i != 100]

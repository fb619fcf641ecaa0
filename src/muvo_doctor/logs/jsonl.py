"""JSON lines (one dict per line: W&B/MLflow exports, custom loggers) and JSON arrays of dicts."""

from __future__ import annotations

import json

from muvo_doctor.logs.base import AddPoint, ReadStats, add_record, load_json


def read_jsonl(path: str, add: AddPoint) -> ReadStats:
    """Stream a JSON-lines file; each dict line is a record. Lines that are not JSON dicts are skipped.

    Floats are parsed as strings first so the digits they were written with are kept.
    """
    st = ReadStats()
    bad = 0
    index = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line, parse_float=str)
            except ValueError:
                bad += 1
                continue
            if isinstance(obj, dict):
                add_record(obj, index, add, st)
                index += 1
    if not st.records:
        st.note = (
            f"no JSON line held a number ({bad} lines were not JSON)" if bad else "no JSON line held a number"
        )
    return st


def read_json_array(path: str, add: AddPoint) -> ReadStats:
    """A JSON document that is a list of dicts (or ``{"log_history": [...]}``-like: any list of dicts)."""
    st = ReadStats()
    doc = load_json(path, st, "file")
    if doc is None:
        return st
    rows = doc if isinstance(doc, list) else _first_list_of_dicts(doc)
    for i, obj in enumerate(rows or []):
        if isinstance(obj, dict):
            add_record(obj, i, add, st)
    if not st.records:
        st.note = "no list of records with numbers in this JSON document"
    return st


def _first_list_of_dicts(doc: object) -> list[object] | None:
    if isinstance(doc, dict):
        for v in doc.values():
            if isinstance(v, list) and v and isinstance(v[0], dict):
                return v
    return None

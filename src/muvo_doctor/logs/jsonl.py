"""JSON lines (one dict per line: W&B/MLflow exports, custom loggers) and JSON arrays of dicts."""

from __future__ import annotations

import json

from muvo_doctor.logs.base import (
    AddPoint,
    ReadStats,
    add_record,
    classify,
    json_elements,
    load_json,
    sane_step,
)
from muvo_doctor.logs.names import key_of, split_of

_MAX_RECORD = 1 << 20  # a JSON line longer than this is not a metrics record: skipped, counted


def read_jsonl(path: str, add: AddPoint) -> ReadStats:
    """Stream a JSON-lines file; each dict line is a record. Lines that are not JSON are counted;
    a line that is JSON but cannot be a record (too long, too deep) is skipped and counted.

    Floats are parsed as strings first so the digits they were written with are kept.
    """
    st = ReadStats()
    bad = 0
    index = 0
    ctx = _Splits()
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            if len(line) > _MAX_RECORD:
                st.skip(f"a {len(line) >> 10} KB line (line {index + bad + 1})")
                continue
            try:
                obj = json.loads(line, parse_float=str)
            except ValueError:
                bad += 1
                continue
            except RecursionError:
                st.skip(f"JSON nested too deeply (line {index + bad + 1})")
                continue
            if isinstance(obj, dict):
                add_record(ctx.place(obj), index, add, st)
                index += 1
    if not st.records:
        st.unparsed = bad > index  # mostly not JSON: Python dicts, or text that starts with "{"
        st.note = (
            f"no JSON line held a number ({bad} lines were not JSON)" if bad else "no JSON line held a number"
        )
    return st


class _Splits:
    """Evaluation records among training records (MMEngine's ``vis_data/scalars.json``: training
    records hold ``loss``/``lr`` and ``step`` = the iteration; evaluation records hold only metrics
    and ``step`` = the epoch). An evaluation record's metrics without a split of their own are
    ``val``; a step that is the current epoch, below the last training step, is placed at that step."""

    def __init__(self) -> None:
        self.train_step = -1
        self.epoch: int | None = None

    def place(self, obj: dict[str, object]) -> dict[str, object]:
        names = [classify(k)[0] for k in obj]
        # a loss or a learning rate makes a training record (an accuracy alone does not)
        if any(n is not None and (n.startswith("train/loss") or n == "optim/lr") for n in names):
            step = sane_step(obj.get("step", obj.get("iter")))
            if step is not None:
                self.train_step = step
            epoch = sane_step(obj.get("epoch"))
            self.epoch = epoch if epoch is not None else self.epoch
            return obj
        if self.train_step < 0 or not any(n is not None for n in names):
            return obj
        out: dict[str, object] = {}
        for k, v in obj.items():
            kind = classify(k)
            if kind[0] is not None and split_of(key_of(k))[0] is None:
                k = f"val_{k}"
            elif kind[2] and sane_step(v) is not None:
                step = sane_step(v)
                if step is not None and step < self.train_step and step == self.epoch:
                    v = self.train_step  # "step": 3 in an evaluation after epoch 3 means that epoch's end
            out[k] = v
        return out


def read_json_array(path: str, add: AddPoint) -> ReadStats:
    """A JSON document that is a list of dicts (or ``{"log_history": [...]}``-like: any list of dicts)."""
    st = ReadStats()
    doc = load_json(path, st, "file")
    if doc is None:
        doc = _salvage(path, st)
        if doc is None:
            return st
    rows = doc if isinstance(doc, list) else _first_list_of_dicts(doc)
    for i, obj in enumerate(rows or []):
        if isinstance(obj, dict):
            add_record(obj, i, add, st)
    if not st.records:
        st.note = "no list of records with numbers in this JSON document"
    return st


def _salvage(path: str, st: ReadStats) -> list[object] | None:
    """The elements that parse of a top-level JSON array that does not parse whole (truncated, or
    one element nested too deeply)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    start = text.find("[")
    if start < 0 or text[:start].strip():
        return None
    rows = [r for r in json_elements(text, start + 1, st) if isinstance(r, dict)]
    if not rows:
        return None
    st.unparsed, st.note = False, ""
    return rows


def _first_list_of_dicts(doc: object) -> list[object] | None:
    if isinstance(doc, dict):
        for v in doc.values():
            if isinstance(v, list) and v and isinstance(v[0], dict):
                return v
    return None

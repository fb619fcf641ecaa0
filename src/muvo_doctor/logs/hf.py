"""Hugging Face ``trainer_state.json``: the ``log_history`` list (train and eval entries with ``step``)."""

from __future__ import annotations

import re

from muvo_doctor.logs.base import AddPoint, ReadStats, add_record, json_elements, load_json

_HISTORY_RE = re.compile(r'"log_history"\s*:\s*\[')


def read_trainer_state(path: str, add: AddPoint) -> ReadStats:
    """Each ``log_history`` entry is a record at its ``step``; ``eval_*`` keys become ``val/*``.

    The final summary entry (``train_runtime``, ``train_loss`` = the mean over the run) is skipped:
    it is not a point of the curve.
    """
    st = ReadStats()
    doc = load_json(path, st, "trainer_state.json")
    if doc is None:
        # entry by entry: a truncated file (a run killed while saving) or one entry nested too deeply
        # keeps the other entries
        history = _salvage(path, st)
        if not history:
            return st
        doc = {"log_history": history}
    history = doc.get("log_history") if isinstance(doc, dict) else None
    if not isinstance(history, list):
        st.note = "no 'log_history' list in this trainer_state.json"
        return st
    for i, entry in enumerate(history):
        if isinstance(entry, dict) and "train_runtime" not in entry:
            add_record(entry, i, add, st)
    if not st.records:
        st.note = "'log_history' is empty: the trainer logged nothing (logging_steps larger than the run?)"
    return st


def _salvage(path: str, st: ReadStats) -> list[object]:
    """The ``log_history`` entries that parse, in order, of a file that does not parse whole."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    m = _HISTORY_RE.search(text)
    if m is None:
        return []
    out = list(json_elements(text, m.end(), st))
    if out:
        st.unparsed = False
        st.note = ""
    return out

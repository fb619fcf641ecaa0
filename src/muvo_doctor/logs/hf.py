"""Hugging Face ``trainer_state.json``: the ``log_history`` list (train and eval entries with ``step``)."""

from __future__ import annotations

from muvo_doctor.logs.base import AddPoint, ReadStats, add_record, load_json


def read_trainer_state(path: str, add: AddPoint) -> ReadStats:
    """Each ``log_history`` entry is a record at its ``step``; ``eval_*`` keys become ``val/*``.

    The final summary entry (``train_runtime``, ``train_loss`` = the mean over the run) is skipped:
    it is not a point of the curve.
    """
    st = ReadStats()
    doc = load_json(path, st, "trainer_state.json")
    if doc is None:
        return st
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

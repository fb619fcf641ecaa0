"""Whitespace-column results files with no header: YOLOv5 / YOLOv7 ``results.txt``.

Both tools write one line per epoch (``train.py``: ``'%10s' * 2 + '%10.4g' * 6`` for the training
part, then ``'%10.4g' * 7`` for the validation results), 15 columns:

    epoch as 'i/N', gpu_mem, box, obj, cls, total, labels, img_size,
    P, R, mAP@.5, mAP@.5:.95, val box, val obj, val cls

The step of a line is its epoch ``i``.
"""

from __future__ import annotations

import math
import re

from muvo_doctor.logs.base import AddPoint, ReadStats

# column -> signal name (None: bookkeeping); fractions are already 0..1 in these files
YOLO_COLUMNS: tuple[str | None, ...] = (
    None,  # epoch i/N (the step)
    None,  # gpu_mem
    "train/box_loss",
    "train/obj_loss",
    "train/cls_loss",
    "train/loss",
    None,  # labels (targets in the last batch)
    None,  # img_size
    "val/precision",
    "val/recall",
    "val/map50",
    "val/map",
    "val/box_loss",
    "val/obj_loss",
    "val/cls_loss",
)
_LINE_RE = re.compile(r"^[ \t]*(\d+)/(\d+)[ \t]+\S+(?:[ \t]+[-+]?[\d.]+(?:[eE][-+]?\d+)?){13}[ \t]*$")


def looks_like_results(lines: list[str]) -> bool:
    """Most of the first lines are 15 blank-separated columns starting with an ``i/N`` epoch."""
    sample = [ln for ln in lines[:20] if ln.strip()]
    return bool(sample) and sum(1 for ln in sample if _LINE_RE.match(ln)) >= max(1, len(sample) - 1)


def read_results(path: str, add: AddPoint) -> ReadStats:
    """Each ``results.txt`` line is a record at its epoch; a malformed line is skipped and counted."""
    st = ReadStats()
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            m = _LINE_RE.match(line)
            if m is None:
                st.skip(f"line {n}: not 15 columns starting with an epoch 'i/N'")
                continue
            step = int(m.group(1))
            cells = line.split()
            points = 0
            for name, cell in zip(YOLO_COLUMNS, cells, strict=True):
                if name is None:
                    continue
                try:
                    val = float(cell)
                except ValueError:
                    continue
                if math.isinf(val):
                    continue
                add(name, step, val, None)  # '%10.4g' shows significant digits, not a fixed precision
                points += 1
            if points:
                st.records += 1
                st.points += points
                st.last_step = max(st.last_step, step)
    if not st.records:
        st.unparsed = True
        st.note = "no line of 15 columns starting with an epoch 'i/N' (YOLOv5/v7 results.txt)"
    return st

"""Our own telemetry stream (``muvo-doctor run --record PATH``): JSON lines of Observation dicts.

An optional header line ``{"schema": "muvo-doctor/telemetry/v1", ...}``, then one
``{"name", "step", "value", "digits", "rank"}`` object per line. Names are already signal names.
"""

from __future__ import annotations

import json

from muvo_doctor.logs.base import MAX_STEP, AddPoint, ReadStats

SCHEMA_PREFIX = "muvo-doctor/telemetry/"


def is_observation(obj: object) -> bool:
    """True for a dict shaped like an Observation (name, step, value)."""
    return isinstance(obj, dict) and "name" in obj and "step" in obj and "value" in obj


def read_telemetry(path: str, add: AddPoint) -> ReadStats:
    """Stream a telemetry file into ``add``; ranks other than 0 go to ``<name>@rank<r>`` (as History.add)."""
    st = ReadStats()
    steps: set[int] = set()
    bad = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                bad += 1  # a truncated last line when the run was killed
                continue
            if not is_observation(obj):
                continue
            name, step, value = obj["name"], obj["step"], obj["value"]
            if not isinstance(name, str) or not name or isinstance(step, bool) or not isinstance(step, int):
                bad += 1
                continue
            if not 0 <= step < MAX_STEP:
                st.skip(f"an observation at step {step} (not a step)")
                continue
            if isinstance(value, str):  # NaN/Infinity written as strings by strict JSON writers
                try:
                    value = float(value)
                except ValueError:
                    bad += 1
                    continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                bad += 1
                continue
            digits = obj.get("digits")
            rank = obj.get("rank")
            if rank:
                name = f"{name}@rank{rank}"
            add(name, step, float(value), digits if isinstance(digits, int) else None)
            st.points += 1
            if len(steps) < 1_000_000:
                steps.add(step)
            if step > st.last_step:
                st.last_step = step
    st.records = len(steps)
    if not st.points:
        st.note = "telemetry stream without observations" + (f" ({bad} malformed lines)" if bad else "")
    return st

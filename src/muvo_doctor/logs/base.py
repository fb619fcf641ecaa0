"""What every log reader shares: the point sink, the "no records" error, key filtering."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

# history.add_point(name, step, value, digits): the readers' only output.
AddPoint = Callable[[str, int, float, "int | None"], None]


class NoRecords(Exception):
    """A log that cannot be audited; the message is one line: what is wrong and what to do."""


# Keys that are an axis (they set the step, they are not a signal).
STEP_KEYS = frozenset(
    {
        "step",
        "steps",
        "global_step",
        "iter",
        "iters",
        "iteration",
        "_step",
        # "eval step 120 val_auroc=0.91": the training step an evaluation line belongs to
        "eval_step",
        "train_step",
        "val_step",
        "trainer/global_step",
        "num_updates",
    }
)
EPOCH_KEYS = frozenset({"epoch", "epochs", "train epoch", "train_epoch"})
# A bare split word as a key ("Train: 0 [100/1251]", timm) is a progress counter, not a signal.
_SPLIT_WORDS = frozenset({"train", "training", "val", "valid", "validation", "eval", "test", "testing"})
# Bookkeeping numbers that are not training signals (time, memory, throughput, sizes).
_NOISE = re.compile(
    r"(^|[/_ ])(time|data_time|eta|memory|mem|max_mem|gpu_mem|runtime|"
    r"samples_per_second|steps_per_second|total_flos|flos|batch|batch_size|bs|it|seed|num_.*|"
    r"n_.*|id|pid|rank|world_size|workers|year|day|hour|min|sec|seconds|ms|size|line|file|version|v_num|data|wps|ups|wpb|bsz|wall|train_wall|clip)$"
    r"|\.(py|cpp|cc|c|h|hpp|cu)$|per_second$|_time$",
)
# Accuracy-like signals are fractions; a value printed in 0..100 without "%" is a percentage.
_FRACTION = re.compile(r"(^|/)(acc|accuracy|auroc|auprc|map|fpr95|precision|recall|f1)$")

_kinds: dict[str, tuple[str | None, bool, bool]] = {}


def classify(key: str) -> tuple[str | None, bool, bool]:
    """``(signal name or None for axis/bookkeeping keys, is a fraction, is the step axis)``, cached."""
    got = _kinds.get(key)
    if got is not None:
        return got
    from muvo_doctor.logs.text import key_of, signal_name  # text imports this module

    k = key_of(key.strip().strip("'\""))
    if k in STEP_KEYS:
        got = (None, False, True)
    elif k in EPOCH_KEYS or k in _SPLIT_WORDS or _NOISE.search(k):
        got = (None, False, False)
    else:
        name = signal_name(key)
        got = (name, bool(_FRACTION.search(name)), False)
    if len(_kinds) < 10_000:
        _kinds[key] = got
    return got


def digits_of(num: str) -> int | None:
    """Decimal places a printed number shows: ``0.3331`` -> 4, ``5e-05`` -> 5, ``3`` -> 0, nan -> None."""
    s = num.strip().lstrip("+-").lower()
    if not s or s[0] in "ni":
        return None
    mant, _, exp = s.partition("e")
    dot = mant.find(".")
    d = len(mant) - dot - 1 if dot >= 0 else 0
    if exp:
        try:
            d -= int(exp)
        except ValueError:
            return None
    return max(d, 0)


def as_fraction(value: float, digits: int | None) -> tuple[float, int | None]:
    """A percentage printed without ``%`` (``acc: 90.0``) as a fraction with two more digits."""
    if 1.0 < value <= 100.0:
        d = None if digits is None else digits + 2
        return (round(value / 100.0, d) if d is not None else value / 100.0), d
    return value, digits


class ReadStats:
    """What a reader saw: records that carried numbers, points added, the largest step."""

    __slots__ = ("records", "points", "last_step", "note", "rewrites")

    def __init__(self) -> None:
        self.rewrites = 0  # carriage-return rewrites dropped (text logs)
        self.records = 0
        self.points = 0
        self.last_step = -1
        self.note = ""  # why nothing was found, when nothing was


def add_record(record: dict[str, object], index: int, add: AddPoint, st: ReadStats, prefix: str = "") -> None:
    """Add one dict record (a JSON line, a log_history entry): numbers become points at its step.

    The step is the record's ``step``/``global_step``/``iteration`` field, else ``index``. Nested
    dicts are flattened with ``/``. String values that parse as numbers count (``"nan"``, ``"0.5"``).
    Digits are None: a JSON number's decimals are its shortest repr, not a display precision.
    """
    flat: list[tuple[str, object]] = []
    _flatten(record, prefix, flat)
    step = index
    items: list[tuple[str, float, int | None, bool]] = []
    for key, raw in flat:
        if isinstance(raw, bool) or raw is None:
            continue
        if isinstance(raw, int):
            val, d = float(raw), 0
        elif isinstance(raw, float):
            val, d = raw, None
        elif isinstance(raw, str):
            try:
                val = float(raw)
            except ValueError:
                continue
            # JSON floats (read as str to keep them exact) are machine-written shortest reprs, so
            # their decimals say nothing about display rounding: no digits.
            d = None
        else:
            continue
        name, frac, is_step = classify(key)
        if is_step:
            if val == val and abs(val) < 2**62:
                step = int(val)
            continue
        if name is not None:
            items.append((name, val, d, frac))
    if not items:
        return
    for name, val, d, frac in items:
        if frac:
            val, d = as_fraction(val, d)
        add(name, step, val, d)
    st.records += 1
    st.points += len(items)
    if step > st.last_step:
        st.last_step = step


def _flatten(obj: dict[str, object], prefix: str, out: list[tuple[str, object]]) -> None:
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            _flatten(v, key + "/", out)
        else:
            out.append((key, v))


def load_json(path: str, st: ReadStats, what: str) -> object | None:
    """A whole JSON document, floats kept as strings; None (with ``st.note`` set) when it does not parse."""
    with open(path, encoding="utf-8", errors="replace") as f:
        try:
            return json.load(f, parse_float=str)
        except ValueError as exc:
            st.note = f"not valid JSON ({exc.args[0].split(':')[0]}); a truncated {what}?"
            return None

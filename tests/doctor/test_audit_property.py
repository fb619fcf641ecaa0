"""Property: whatever bytes a log holds, audit gives a report or a one-line "no records" reason."""

import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from muvo_doctor.commands.audit import audit_source
from muvo_doctor.config import DoctorConfig
from muvo_doctor.logs import LogSource, NoRecords
from muvo_doctor.logs.text import parse_line

KEYS = [
    "loss",
    "Loss",
    "val_loss",
    "acc",
    "accuracy",
    "lr",
    "step",
    "Epoch",
    "iter",
    "'loss'",
    '"acc"',
    "Train Loss",
    "x",
]
SEPS = ["=", ": ", " ", ":", " = ", "\t"]
NUMS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32).map(repr),
    st.integers(-(10**6), 10**6).map(str),
    st.sampled_from(
        ["nan", "NaN", "inf", "-inf", "Infinity", "1e-05", "5.", ".5", "89.93%", "0.0000", "1,000", "02:05"]
    ),
)
PIECE = st.one_of(
    st.builds(lambda k, s, n: f"{k}{s}{n}", st.sampled_from(KEYS), st.sampled_from(SEPS), NUMS),
    st.sampled_from(
        [
            "\n",
            "\r",
            "\r\n",
            " | ",
            ", ",
            " - ",
            "100%|████|",
            "{",
            "}",
            "[",
            "]",
            ",",
            "Traceback (most recent call last)",
        ]
    ),
    st.text(max_size=12),
)
TEXT = st.lists(PIECE, max_size=40).map("".join)
FIRST = st.sampled_from(
    ["", "{", "[", "epoch,step,loss\n", '{"schema": "muvo-doctor/telemetry/v1"}\n', "\x00"]
)
CONTENT = st.one_of(
    st.builds(lambda a, b: (a + b).encode("utf-8", "surrogatepass"), FIRST, TEXT),
    st.binary(max_size=300),
    st.builds(lambda t, enc: t.encode(enc, "replace"), TEXT, st.sampled_from(["latin-1", "utf-16", "gbk"])),
)

_DIR = Path(tempfile.mkdtemp(prefix="audit_prop_"))
_CONFIG = DoctorConfig()


@pytest.mark.slow  # ~4 s of CPU; more wall time on a loaded machine
@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(CONTENT)
def test_any_input_gives_a_report_or_a_reason(content):
    p = _DIR / "log"
    p.write_bytes(content)
    try:
        a = audit_source(LogSource(str(p), [p]), _CONFIG)
    except NoRecords as exc:
        msg = str(exc)
        assert "no records found: " in msg and "\n" not in msg and msg.split("no records found: ")[1]
        return
    assert a.stats.points > 0
    assert a.report.verdict in ("healthy", "warning", "dead", "inconclusive")
    assert a.report.steps >= 0
    a.report.to_json()  # serialisable, NaN evidence included


@settings(max_examples=300, deadline=None)
@given(TEXT)
def test_parse_line_shape(line):
    for key, value, digits in parse_line(line.replace("\n", " ").replace("\r", " ")):
        assert key == key.lower() and key[0].isalpha()
        assert isinstance(value, float)
        assert digits is None or digits >= 0
        if digits is None:
            assert not math.isfinite(value)  # only nan/inf lack digits

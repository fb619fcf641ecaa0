"""Property: whatever bytes a log holds, audit gives a report or a one-line "no records" reason."""

import math
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from muvo_doctor.commands.audit import audit_source
from muvo_doctor.core.config import DoctorConfig
from muvo_doctor.core.finding import verdict_of
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
LOGS = Path(__file__).parents[1] / "fixtures" / "logs"
# The first 4 KB of every fixture log (whole event files are about 4 KB): real formats to mutate.
FIXTURES = sorted(p.read_bytes()[:4096] for p in LOGS.rglob("*") if p.is_file() and p.suffix != ".py")
TOKENS = [b"nan", b"1e30", b"-1", b"\r", b"\n", b"\x00", b"\xff\xfe", b"{", b",", b"%", str(2**70).encode()]


@st.composite
def mutated_fixture(draw: st.DrawFn) -> bytes:
    """A fixture with 1-4 damages: bytes overwritten, a slice cut or repeated, a token inserted, a cut end."""
    data = bytearray(draw(st.sampled_from(FIXTURES)))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data)))
        j = min(len(data), i + draw(st.integers(0, 64)))
        how = draw(st.sampled_from(["overwrite", "cut", "repeat", "insert", "truncate"]))
        if how == "overwrite":
            data[i:j] = draw(st.binary(min_size=j - i, max_size=j - i))
        elif how == "cut":
            del data[i:j]
        elif how == "repeat":
            data[i:i] = data[i:j] * draw(st.integers(1, 8))
        elif how == "insert":
            data[i:i] = draw(st.sampled_from(TOKENS))
        else:
            del data[i:]
    return bytes(data)


CONTENT = st.one_of(
    st.builds(lambda a, b: (a + b).encode("utf-8", "surrogatepass"), FIRST, TEXT),
    st.binary(max_size=300),
    st.builds(lambda t, enc: t.encode(enc, "replace"), TEXT, st.sampled_from(["latin-1", "utf-16", "gbk"])),
    mutated_fixture(),
)

_DIR = Path(tempfile.mkdtemp(prefix="audit_prop_"))
_CONFIG = DoctorConfig()
# Measured: 10,000 examples in 89 s wall (36 s CPU) on this 2-core machine shared with other jobs.
EXAMPLES = 10_000
# A mutated event file keeps an event file's name, so its damage is read as TensorBoard's.
_TB_HEADS = {f[:8] for f in FIXTURES if b"brain.Event" in f[:64]}


@contextmanager
def _time_limit(seconds: float):
    """A hang fails the example (SIGALRM interrupts a Python loop or a blocking open) instead of the run."""

    def expire(signum, frame):
        raise TimeoutError(f"audit took more than {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.slow  # 10,000 inputs: see EXAMPLES
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(CONTENT)
def test_any_input_gives_a_report_or_a_reason(content):
    p = _DIR / "events.out.tfevents.1.host" if content[:8] in _TB_HEADS else _DIR / "log"
    p.write_bytes(content)
    try:
        with _time_limit(20.0):
            a = audit_source(LogSource(str(p), [p]), _CONFIG)
    except NoRecords as exc:
        msg = str(exc)
        assert "no records found: " in msg and "\n" not in msg and msg.split("no records found: ")[1]
        return
    # Any other exception is a traceback a user would see: it fails the example.
    assert a.stats.points > 0
    rep = a.report
    assert rep.steps >= 1  # values were read, so at least one step was
    assert all(f.step is None or 0 <= f.step < rep.steps for f in rep.findings), rep
    assert rep.verdict == verdict_of(rep.findings, rep.evidence_for_health)
    rep.to_json()  # serialisable, NaN evidence included


@settings(max_examples=300, deadline=None)
@given(TEXT)
def test_parse_line_shape(line):
    for key, value, digits in parse_line(line.replace("\n", " ").replace("\r", " ")):
        assert key == key.lower() and key[0].isalpha()
        assert isinstance(value, float)
        assert digits is None or digits >= 0
        if digits is None:
            assert not math.isfinite(value)  # only nan/inf lack digits

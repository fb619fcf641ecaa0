"""The telemetry stream of `run`: messages, the batched writer, the incremental reader, record files."""

from __future__ import annotations

import math
import os

import pytest

from muvo_doctor.core.observation import Observation
from muvo_doctor.run.lines import LineSplitter
from muvo_doctor.run.stream import (
    PIPE_BUF,
    BatchWriter,
    Header,
    Hello,
    LineReader,
    StepBeat,
    StreamError,
    encode,
    is_stream,
    parse_line,
    read_observations,
    read_stream,
)


def test_observation_line_has_exactly_the_contract_fields():
    line = encode(Observation(name="train/loss", step=3, value=0.5, digits=None, rank=1))
    assert line == '{"name":"train/loss","step":3,"value":0.5,"digits":null,"rank":1}\n'
    assert parse_line(line) == Observation(name="train/loss", step=3, value=0.5, rank=1)


def test_non_finite_values_survive_the_round_trip():
    for v in (math.nan, math.inf, -math.inf):
        back = parse_line(encode(Observation(name="train/loss", step=0, value=v)))
        assert isinstance(back, Observation)
        assert (math.isnan(back.value) and math.isnan(v)) or back.value == v


def test_every_message_kind_round_trips():
    for msg in (Header(source="python t.py"), Hello(stage="torch", rank=0, pid=7), StepBeat(step=9, rank=1)):
        assert parse_line(encode(msg)) == msg


@pytest.mark.parametrize(
    "line, why",
    [
        ("not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"name": "x", "step": "a", "value": 1}', "bad field 'step'"),
        ('{"name": "x", "step": 1, "value": 1, "extra": 2}', "bad field 'extra'"),
        ('{"schema": "other/v9"}', "unknown schema"),
        ('{"event": "party"}', "unknown message"),
    ],
)
def test_bad_lines_say_what_is_wrong(line, why):
    with pytest.raises(StreamError, match=why):
        parse_line(line)


def test_reader_reassembles_split_lines_and_skips_garbage():
    data = (
        encode(Observation(name="a", step=1, value=1.0)) + "garbage\n" + encode(StepBeat(step=4))
    ).encode()
    r = LineReader()
    got = []
    for i in range(0, len(data), 7):  # arbitrary chunk boundaries, as a pipe delivers them
        got += r.feed(data[i : i + 7])
    got += r.close()
    assert got == [Observation(name="a", step=1, value=1.0), StepBeat(step=4)]
    assert r.errors == 1 and r.first_error is not None and "not JSON" in r.first_error


def test_writer_writes_whole_lines_in_atomic_chunks():
    rfd, wfd = os.pipe()
    w = BatchWriter(wfd, max_lines=10_000)
    lines = [encode(Observation(name=f"grad/norm/layer{i}", step=i, value=i / 3)) for i in range(300)]
    w.add_many(lines)
    w.flush()
    os.close(wfd)
    chunks = []
    while chunk := os.read(rfd, 1 << 20):
        chunks.append(chunk)
    os.close(rfd)
    data = b"".join(chunks)
    assert data.decode() == "".join(lines)
    assert w.failure is None and w.dropped == 0


def _read_all(rfd: int) -> bytes:
    out = []
    while True:
        try:
            chunk = os.read(rfd, 1 << 20)
        except BlockingIOError:
            break
        if not chunk:
            break
        out.append(chunk)
    return b"".join(out)


def test_writer_keeps_what_a_full_pipe_refuses_and_sends_it_in_order_later():
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)
    os.set_blocking(rfd, False)
    w = BatchWriter(wfd)
    big = [encode(Observation(name="x" * 100, step=i, value=0.0)) for i in range(5000)]  # > pipe capacity
    w.add_many(big)
    w.flush()  # never blocks: what the pipe cannot take waits
    assert w.pending > 0 and w.dropped == 0 and w.failure is None
    got = b""
    while w.pending:
        got += _read_all(rfd)  # the reader catches up ...
        w.flush()  # ... and the next heartbeat sends more
    got += _read_all(rfd)
    assert got.decode() == "".join(big) and w.dropped == 0
    os.close(rfd)
    os.close(wfd)


def test_writer_drops_oldest_only_over_its_cap_and_fails_open_on_a_closed_pipe():
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)
    w = BatchWriter(wfd, max_backlog_bytes=100_000)
    big = [encode(Observation(name="x" * 100, step=i, value=0.0)) for i in range(5000)]  # ~650 kB
    w.add_many(big)
    w.flush()  # nobody reads: the pipe fills, the backlog stops at its cap
    assert w.dropped > 0 and w.failure is None and w.pending < 5000
    w.close(timeout=0.05)  # the reader never comes: what is left counts as dropped, no hang
    assert w.pending == 0
    os.close(rfd)
    w.add_many(big[:3])
    w.flush()  # EPIPE: disabled, no exception
    assert w.failure is not None and "BrokenPipe" in w.failure
    os.close(wfd)
    assert PIPE_BUF >= 512


def test_record_files_are_recognised_and_read(tmp_path):
    p = tmp_path / "run.jsonl"
    p.write_text(
        encode(Header(source="sh loop.sh"))
        + encode(Observation(name="printed/loss", step=0, value=0.6931, digits=4))
        + encode(Hello(stage="python", pid=1))
        + encode(Observation(name="train/loss", step=1, value=0.5, rank=0))
    )
    assert is_stream(p)
    assert [o.name for o in read_observations(p)] == ["printed/loss", "train/loss"]
    other = tmp_path / "log.jsonl"
    other.write_text('{"loss": 0.5}\n')
    assert not is_stream(other)
    with pytest.raises(StreamError, match="not a muvo-doctor telemetry record"):
        list(read_stream(other))


def test_line_splitter_handles_carriage_returns_escapes_and_split_utf8():
    s = LineSplitter()
    data = "\x1b[32mloss=0.5\x1b[0m\r\n10%|█ | loss=0.4\r20%|██| loss=0.3\rdone é\n".encode()
    lines = []
    for i in range(len(data)):  # one byte at a time: é and █ are split mid-character
        lines += s.feed(data[i : i + 1])
    lines += s.close()
    assert lines == ["loss=0.5", "10%|█ | loss=0.4", "20%|██| loss=0.3", "done é"]


def test_line_splitter_after_a_gap_restarts_at_the_next_line_break():
    # Bytes the parser had to drop: the cut line is forgotten, not glued to the next one.
    s = LineSplitter()
    assert s.feed(b"loss=0.5\nloss=0.") == ["loss=0.5"]
    s.gap()
    assert s.feed(b"41 acc=1\rloss=0.3\nloss=0.2\n") == ["loss=0.3", "loss=0.2"]
    s.gap()
    assert s.feed(b"no break here") == []
    assert s.feed(b"still\nloss=0.1\n") == ["loss=0.1"]

"""Bad records are skipped and counted, never fatal; folders open regular files only and give one
report per run; audit's exit codes."""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from muvo_doctor.cli import main
from muvo_doctor.commands.audit import audit_source
from muvo_doctor.core.config import DoctorConfig
from muvo_doctor.core.history import History
from muvo_doctor.logs import LogSource, find_sources, load

LOGS = Path(__file__).parents[1] / "fixtures" / "logs"
BIG = "1" * 400  # a 400-digit integer: too large for a float
DEEP = '{"a": ' * 5000 + "1" + "}" * 5000  # deeper than the JSON parser's recursion limit


def _read(p: Path):
    h = History()
    fmt, stats = load(LogSource(str(p), [p]), h.add_point)
    return h, fmt, stats


def _series(h: History) -> dict[str, tuple[list[int], list[float]]]:
    out = {}
    for n in h.names():
        s = h.series(n)
        out[n] = (s.steps.tolist(), [round(v, 12) for v in s.values.tolist()])
    return out


# -- one bad record, per format -------------------------------------------------------------------

CLEAN = {
    "text": lambda i, x: f"step {i} loss: {x:.4f} acc: {0.5 + x / 10:.4f}\n",
    "jsonl": lambda i, x: json.dumps({"step": i, "loss": round(x, 4), "acc": round(0.5 + x / 10, 4)}) + "\n",
    "csv": lambda i, x: f"{i},{x:.4f},{0.5 + x / 10:.4f}\n",
}
HEADER = {"text": "", "jsonl": "", "csv": "step,loss,acc\n"}
BAD = {
    "text": [
        f"step 7 loss: {BIG}\n",
        "step 1e30 loss: 0.5\n",
        f"step {2**63} loss: 0.5 acc: 0.1\n",
        "step nan loss: 0.5\n",
    ],
    "jsonl": [
        f'{{"step": 7, "loss": {BIG}}}\n',
        '{"step": 1e30, "loss": 0.5}\n',
        f'{{"step": {2**63}, "loss": 0.5}}\n',
        '{"step": NaN, "loss": 0.5}\n',
        DEEP + "\n",
    ],
    "csv": [
        "1e30,0.5,0.1\n",
        f"{2**63},0.5,0.1\n",
        "nan,0.5,0.1\n",
        f"7,{BIG},\n",
        '8,"' + "x" * ((128 << 10) + 10) + '",0.1\n',  # over the csv module's field limit
    ],
}


def _log(fmt: str, n: int, bad: list[tuple[int, str]]) -> str:
    lines = [CLEAN[fmt](i * 10, 2.0 / (i + 1)) for i in range(n)]
    for pos, line in sorted(bad, reverse=True):
        lines.insert(pos, line)
    return HEADER[fmt] + "".join(lines)


@pytest.mark.parametrize(
    ("fmt", "bad"), [(f, b) for f in BAD for b in BAD[f]], ids=lambda x: x[:24] if isinstance(x, str) else x
)
def test_one_bad_record_is_skipped_and_counted(tmp_path, fmt, bad):
    clean, dirty = tmp_path / f"clean.{fmt}", tmp_path / f"dirty.{fmt}"
    clean.write_text(_log(fmt, 30, []))
    dirty.write_text(_log(fmt, 30, [(15, bad)]))
    h0, fmt0, _ = _read(clean)
    h1, fmt1, stats = _read(dirty)
    assert fmt1 == fmt0
    assert _series(h1) == _series(h0)
    assert stats.skipped == 1 and stats.first_reason
    a0 = audit_source(LogSource(str(clean), [clean]), DoctorConfig())
    a1 = audit_source(LogSource(str(dirty), [dirty]), DoctorConfig())
    assert a1.report.verdict == a0.report.verdict
    assert a1.report.skipped_records is not None and a1.report.skipped_records.count == 1
    assert a0.report.skipped_records is None


def test_skipped_records_in_json_and_text_view(tmp_path, capsys):
    p = tmp_path / "m.csv"
    p.write_text(_log("csv", 30, [(10, "1e30,0.5,0.1\n")]))
    main(["audit", "--json", str(p)])
    rep = json.loads(capsys.readouterr().out)
    assert rep["skipped_records"]["count"] == 1 and "step" in rep["skipped_records"]["first_reason"]
    main(["audit", "--plain", str(p)])
    assert "skipped 1 bad record(s)" in capsys.readouterr().out


# -- Hypothesis: thousands of logs with injected bad records ----------------------------------------

_DIR = Path(os.environ.get("TMPDIR", "/tmp")) / f"muvo_readers_robust_{os.getpid()}"
_DIR.mkdir(parents=True, exist_ok=True)
_SEEN_CLEAN: dict[tuple[str, int], dict] = {}


@pytest.mark.slow  # ~2,000 logs read twice: ~15 s of CPU
@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    fmt=st.sampled_from(sorted(BAD)),
    n=st.integers(2, 40),
    data=st.data(),
)
def test_bad_records_never_blind_the_rest(fmt, n, data):
    bad = data.draw(
        st.lists(st.tuples(st.integers(0, n), st.sampled_from(BAD[fmt])), min_size=1, max_size=3), label="bad"
    )
    key = (fmt, n)
    if key not in _SEEN_CLEAN:
        p = _DIR / f"clean_{fmt}_{n}"
        p.write_text(_log(fmt, n, []))
        _SEEN_CLEAN[key] = _series(_read(p)[0])
    p = _DIR / f"dirty.{fmt}"
    p.write_text(_log(fmt, n, bad))
    h, _, stats = _read(p)  # no exception, no NoRecords: the clean records are there
    assert _series(h) == _SEEN_CLEAN[key]
    assert stats.skipped == len(bad)


# -- folders ---------------------------------------------------------------------------------------


def test_a_fifo_named_like_a_log_is_skipped_not_opened(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.log").write_text("".join(f"step {i} loss {1 / (i + 1):.4f}\n" for i in range(40)))
    os.mkfifo(run / "x.log")
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(main(["audit", "--json", str(run)])), daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "audit blocked on a FIFO"
    err = capsys.readouterr().err
    assert result and result[0] in (0, 1, 3) and "not regular files" in err
    sources, notes = find_sources(str(run))
    assert [Path(s.label).name for s in sources] == ["train.log"] and notes
    rc = main(["audit", str(run / "x.log")])  # named directly: one line, exit 2
    assert rc == 2 and "not a regular file" in capsys.readouterr().err


def test_a_folder_of_three_runs_gives_three_reports(tmp_path, capsys):
    runs = tmp_path / "runs"
    for name in ("exp1", "exp2", "exp3"):
        shutil.copytree(LOGS / "tb_keras", runs / name)  # train/ and validation/ event files each
    sources, _ = find_sources(str(runs))
    assert len(sources) == 3 and all(len(s.files) == 2 for s in sources)
    report = tmp_path / "r.json"
    main(["audit", "--json", "--report", str(report), str(runs)])
    out = json.loads(capsys.readouterr().out)
    assert isinstance(out, list) and len(out) == 3
    assert sorted(Path(r["source"].split(" (")[0]).name for r in out) == ["exp1", "exp2", "exp3"]
    assert len(json.loads(report.read_text())) == 3


# -- exit codes ------------------------------------------------------------------------------------


def test_exit_code_3_when_the_worst_verdict_is_inconclusive(tmp_path, capsys):
    p = tmp_path / "short.log"
    p.write_text("loss: 0.5\n")
    assert main(["audit", "--json", str(p)]) == 3
    assert json.loads(capsys.readouterr().out)["verdict"] == "inconclusive"


def test_exit_code_1_wins_over_inconclusive(tmp_path, capsys):
    short = tmp_path / "short.log"
    short.write_text("loss: 0.5\n")
    dead = tmp_path / "nan.log"
    dead.write_text("".join(f"step {i} loss: nan\n" for i in range(50)))
    assert main(["audit", "--json", str(short), str(dead)]) == 1
    verdicts = [r["verdict"] for r in json.loads(capsys.readouterr().out)]
    assert verdicts == ["inconclusive", "dead"]


def test_exit_code_logic():
    from muvo_doctor.commands.audit import exit_code
    from muvo_doctor.core.finding import Report

    def rep(v: str) -> Report:
        return Report(source="x", verdict=v, steps=1, findings=[])

    assert exit_code([rep("healthy")], 0) == 0
    assert exit_code([rep("healthy"), rep("inconclusive")], 0) == 3
    assert exit_code([rep("inconclusive"), rep("warning")], 0) == 1
    assert exit_code([rep("dead")], 1) == 2
    assert math.isfinite(0.0)


def test_telemetry_and_tensorboard_steps_that_cannot_be_steps(tmp_path):
    import importlib.util

    lines = [json.dumps({"name": "train/loss", "step": i, "value": 1 / (i + 1)}) for i in range(30)]
    lines.insert(10, json.dumps({"name": "train/loss", "step": 2**63, "value": 0.5}))
    p = tmp_path / "t.jsonl"
    p.write_text("\n".join(lines) + "\n")
    h, fmt, stats = _read(p)
    assert fmt == "telemetry" and len(h.series("train/loss")) == 30 and stats.skipped == 1

    spec = importlib.util.spec_from_file_location("make_fixtures", LOGS / "make_fixtures.py")
    mf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mf)
    data = mf._record(mf._version_event())
    for step in (0, 1, 2**62, 3):
        data += mf._record(mf._event(step, "loss", 0.5, tensor=False))
    ev = tmp_path / "events.out.tfevents.1.host"
    ev.write_bytes(data)
    h, fmt, stats = _read(ev)
    assert fmt == "tensorboard" and h.series("train/loss").steps.tolist() == [0, 1, 3] and stats.skipped == 1


@pytest.mark.parametrize("layout", ["trainer_state", "array"])
def test_whole_json_documents_keep_their_other_entries(tmp_path, layout):
    entries = [json.dumps({"loss": round(1 / (i + 1), 4), "step": i * 10}) for i in range(10)]
    entries.insert(5, DEEP)
    body = "[" + ",\n".join(entries) + "]"
    if layout == "trainer_state":
        p = tmp_path / "trainer_state.json"
        p.write_text('{"global_step": 90, "log_history": ' + body + "}")
    else:
        p = tmp_path / "history.json"
        p.write_text(body)
    h, _, stats = _read(p)
    assert h.series("train/loss").steps.tolist() == list(range(0, 100, 10))
    assert stats.skipped == 1 and "nested too deeply" in stats.first_reason

"""What a user sees from `muvo-doctor audit`: exit codes, JSON, the text view, bad input."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from muvo_doctor.cli import main
from muvo_doctor.core.finding import Report

LOGS = Path(__file__).parents[1] / "fixtures" / "logs"
ANSI = re.compile(r"\x1b\[")
HEALTHY = str(LOGS / "healthy_rounds_to_zero.log")
DEAD = str(LOGS / "correct_training.log")


def run(args, capsys):
    rc = main(["audit", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_one_log_prints_one_report_object(capsys):
    rc, out, _ = run(["--json", DEAD], capsys)
    assert rc == 1
    report = Report.model_validate(json.loads(out))
    assert report.verdict == "dead" and report.source == DEAD


def test_several_logs_print_a_list_and_the_worst_exit_code(capsys):
    rc, out, _ = run(["--json", HEALTHY, DEAD], capsys)
    data = json.loads(out)
    assert [d["verdict"] for d in data] == ["healthy", "dead"] and rc == 1
    rc, _, _ = run(["--json", HEALTHY, str(LOGS / "results.csv")], capsys)
    assert rc == 0


def test_report_file(tmp_path, capsys):
    path = tmp_path / "r.json"
    rc, out, _ = run(["--plain", "--report", str(path), DEAD], capsys)
    assert rc == 1
    assert Report.model_validate(json.loads(path.read_text())).verdict == "dead"
    assert "prior_baseline" in out


def test_text_view_plain_has_chart_findings_and_summary(capsys, monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")  # --plain wins over it
    rc, out, _ = run(["--plain", DEAD], capsys)
    assert not ANSI.search(out)
    lines = out.rstrip("\n").splitlines()
    assert lines[0].startswith(DEAD) and "(text, 63 records" in lines[0]
    assert any("prior_baseline: prior_entropy 0.33" in ln for ln in lines)  # the baseline in the legend
    assert any(ln.startswith("CRITICAL prior_baseline") for ln in lines)
    assert lines[-1].startswith(
        "dead: 1 critical in 15751 steps"
    )  # 30 epochs of 525 batches (the tqdm counter)


def test_no_color_env_and_color_terminal(monkeypatch, capsys):
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("FORCE_COLOR", "1")
    _, out, _ = run([DEAD], capsys)
    assert not ANSI.search(out)
    monkeypatch.delenv("NO_COLOR")
    _, out, _ = run([DEAD], capsys)
    assert ANSI.search(out)  # FORCE_COLOR stands in for a terminal
    summary = out.rstrip("\n").splitlines()[-1]
    assert "41m" in summary and "dead: 1 critical" in summary  # red background: the worst is critical


def test_healthy_summary_is_green(monkeypatch, capsys):
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    rc, out, _ = run([str(LOGS / "results.csv")], capsys)
    assert rc == 0
    assert "42m" in out.rstrip("\n").splitlines()[-1]


def test_folder_audits_each_log_and_skips_non_logs(tmp_path, capsys):
    (tmp_path / "train.log").write_text((LOGS / "overfitting_keras.log").read_text())
    (tmp_path / "README.txt").write_text("How to run this experiment.\n")
    (tmp_path / "model.pt").write_bytes(b"\x80\x02garbage\x00\x00")
    rc, out, err = run(["--json", str(tmp_path)], capsys)
    # one report, for the log (its verdict is test_audit_fixtures' business: overfitting_keras.log)
    assert rc == 1 and json.loads(out)["source"].endswith("train.log")
    assert "skipped" in err and "README.txt" in err


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "the file is empty"),
        (b"\n\n   \n", "the file is empty"),
        (bytes(range(256)) * 40, "binary file"),
        (b"PK\x03\x04" + b"\x00\x13\x99" * 1000, "binary file"),
        (b"starting\nloading data\ndone\n", "no 'key: number' pairs"),
        (
            b'Traceback (most recent call last):\n  File "train.py", line 3, in <module>\n'
            b"    main()\nRuntimeError: CUDA out of memory\n",
            "only a crash traceback",
        ),
        (b'{"log_history": [{"st', "not valid JSON"),
        (b"epoch,step,loss\n", "no numeric rows"),
        (b"a,b\nx,y\n", "no numeric rows under the header (a, b)"),
    ],
    ids=[
        "empty",
        "blank",
        "binary",
        "zip",
        "no-numbers",
        "traceback",
        "truncated-json",
        "csv-header",
        "csv-no-metrics",
    ],
)
def test_unreadable_inputs_exit_2_with_one_line(tmp_path, capsys, content, reason):
    p = tmp_path / "bad.log"
    p.write_bytes(content)
    rc, out, err = run([str(p)], capsys)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and "no records found" in err and reason in err, err
    assert str(p) in err


def test_missing_file_and_bad_config(tmp_path, capsys):
    rc, _, err = run([str(tmp_path / "nope.log")], capsys)
    assert rc == 2 and "no such file or folder" in err
    cfg = tmp_path / "c.toml"
    cfg.write_text("[thresholds]\nno_such_key = 1\n")
    rc, _, err = run(["--config", str(cfg), HEALTHY], capsys)
    assert rc == 2 and "no_such_key" in err and "--config" in err


def test_one_unreadable_log_among_good_ones_still_reports_the_good_ones(tmp_path, capsys):
    bad = tmp_path / "empty.log"
    bad.write_bytes(b"")
    rc, out, err = run(["--json", DEAD, str(bad)], capsys)
    assert rc == 2 and json.loads(out)["verdict"] == "dead" and "empty" in err


@pytest.mark.parametrize(
    ("text", "verdict_in"),
    [
        ("".join(f"step {i} loss: nan\n" for i in range(50)), {"dead"}),
        ("".join(f"step {i} loss: {1 / (i + 1):.4f}\n" for i in range(40)) + "step 40 loss: inf\n", {"dead"}),
        ("loss: 0.5\n", {"inconclusive"}),
    ],
)
def test_nan_inf_strings_give_a_report(tmp_path, capsys, text, verdict_in):
    p = tmp_path / "n.log"
    p.write_text(text)
    rc, out, _ = run(["--json", str(p)], capsys)
    report = json.loads(out)
    assert report["verdict"] in verdict_in
    if report["verdict"] == "dead":
        assert "nan_inf" in {f["check"] for f in report["findings"]}


def test_cli_subprocess_no_traceback_on_garbage(tmp_path):
    p = tmp_path / "g.bin"
    p.write_bytes(b"\x00\xff" * 5000)
    r = subprocess.run([sys.executable, "-m", "muvo_doctor", "audit", str(p)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "binary file" in r.stderr


@pytest.mark.slow
def test_audit_of_a_run_record_gives_the_runs_findings_and_first_steps(tmp_path: Path) -> None:
    """The record of `run --record` audited later: the same findings, first steps and resolutions."""
    script = Path(__file__).parents[1] / "fixtures" / "scripts" / "tiny_torch.py"
    cfg = tmp_path / "cfg.toml"
    cfg.write_text("sample_every = 5\n", encoding="utf-8")
    rec, live = tmp_path / "rec.jsonl", tmp_path / "live.json"
    cmd = [sys.executable, "-m", "muvo_doctor", "run", "--plain", "--config", str(cfg), "--record", str(rec)]
    cmd += ["--report", str(live), "--", sys.executable, str(script), "--mode", "random-labels"]
    subprocess.run(cmd, capture_output=True, timeout=300, check=True)
    got = subprocess.run(
        [sys.executable, "-m", "muvo_doctor", "audit", "--config", str(cfg), "--json", str(rec)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    a, b = json.loads(live.read_text()), json.loads(got.stdout)

    def key(r: dict) -> list:
        return [(f["check"], f["severity"], f["step"], f["resolved_step"]) for f in r["findings"]]

    assert (b["verdict"], key(b)) == (a["verdict"], key(a)) and a["verdict"] == "dead"


# -- TensorBoard files cut short or damaged: read up to the break, which is reported -------------


def _fixture_writer():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_fixtures", LOGS / "make_fixtures.py")
    mf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mf)
    return mf


def _healthy_events(steps=range(0, 300, 5), odd_step=None):
    """Records (bytes each) of a SummaryWriter file whose loss falls with noise; ``odd_step`` adds
    one more event at that step after the 10th."""
    import math
    import random

    mf = _fixture_writer()
    rng = random.Random(12)
    recs = [mf._record(mf._version_event())]
    for i, step in enumerate(steps):
        loss = 0.9 * math.exp(-step / 200) + 0.3 + 0.01 * rng.gauss(0, 1)
        recs.append(mf._record(mf._event(step, "Loss/train", loss, tensor=False)))
        if i == 10 and odd_step is not None:
            recs.append(mf._record(mf._event(odd_step, "Loss/train", 0.5, tensor=False)))
    return recs


def _break_of(report, path):
    (found,) = [f for f in report["findings"] if f["check"] == "corrupt_log"]
    assert found["severity"] == "warning" and str(path) in found["evidence"]["file"]
    return found


@pytest.mark.parametrize("damage", ["truncated", "50 corrupt bytes"])
def test_damaged_event_file_is_judged_up_to_the_break_and_warned(tmp_path, capsys, damage):
    recs = _healthy_events()
    data = b"".join(recs)
    k = 31  # the damage starts inside record k: records 0..k-1 (the version event and 30 scalars) are whole
    start = sum(len(r) for r in recs[:k])
    if damage == "truncated":
        data = data[: start + 20]
    else:
        import random

        rng = random.Random(5)
        data = data[: start + 5] + bytes(rng.getrandbits(8) for _ in range(50)) + data[start + 55 :]
    ev = tmp_path / "events.out.tfevents.1.host"
    ev.write_bytes(data)
    rc, out, err = run(["--json", str(ev)], capsys)
    rep = json.loads(out)
    found = _break_of(rep, ev)
    assert rc == 1 and rep["verdict"] == "warning" and err == ""
    assert found["evidence"]["records_read"] == k
    assert found["evidence"]["bytes_skipped"] == len(data) - start
    assert (
        f"{k} records read" in found["message"] and f"{len(data) - start:,} bytes skipped" in found["message"]
    )
    # The part before the break is judged: its falling loss is the evidence, its 30 steps are counted.
    assert rep["evidence_for_health"].startswith("train/loss fell") and rep["steps"] == 146


def test_event_file_cut_at_a_record_boundary_reads_as_a_shorter_run(tmp_path, capsys):
    ev = tmp_path / "events.out.tfevents.1.host"
    ev.write_bytes(b"".join(_healthy_events()[:31]))
    rc, out, _ = run(["--json", str(ev)], capsys)
    assert rc == 0 and json.loads(out)["verdict"] == "healthy"


def test_event_step_two_to_the_70_is_skipped_and_the_rest_judged(tmp_path, capsys):
    ev = tmp_path / "events.out.tfevents.1.host"
    ev.write_bytes(b"".join(_healthy_events(odd_step=2**70)))
    rc, out, err = run(["--json", str(ev)], capsys)
    rep = json.loads(out)
    assert rc == 0 and err == "" and rep["verdict"] == "healthy" and rep["findings"] == []
    assert rep["skipped_records"]["count"] == 1 and rep["steps"] == 296
    rc, out, err = run(["--plain", str(ev)], capsys)
    assert rc == 0 and "Traceback" not in out + err and "skipped 1 bad record" in out


def test_report_is_not_written_through_a_symlink(tmp_path, capsys):
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    link = tmp_path / "r.json"
    link.symlink_to(target)
    rc, _, err = run(["--json", "--report", str(link), DEAD], capsys)
    assert rc == 2 and target.read_text() == "keep me\n" and link.is_symlink()
    assert err.count("\n") == 1 and "--follow-symlinks" in err
    rc, _, _ = run(["--json", "--report", str(link), "--follow-symlinks", DEAD], capsys)
    assert rc == 1 and json.loads(target.read_text())["verdict"] == "dead"

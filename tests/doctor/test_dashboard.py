"""The dashboard as a user sees it: rendered into a StringIO console, or as plain lines."""

from __future__ import annotations

import io
import math
import time
from pathlib import Path

import pytest
from rich.console import Console

from muvo_doctor.core.doctor import Doctor
from muvo_doctor.core.finding import Finding
from muvo_doctor.core.observation import Observation
from muvo_doctor.face.chart import strip_ansi
from muvo_doctor.face.dashboard import (
    LiveView,
    PlainView,
    SnapshotError,
    check_snapshot_path,
    make_view,
    prior_loss,
)

PRIOR = Finding(
    check="prior_baseline",
    severity="critical",
    step=120,
    message="loss 0.3331 sits at the prior's entropy H(0.10)=0.325: the model learned only the prior",
    evidence={"prior_p": 0.1, "prior_entropy": 0.3251, "baseline_loss": 0.325},
    advice="check the labels",
)
FLAT = Finding(check="flat_loss", severity="warning", step=40, message="the loss does not change", advice="x")


def _fed_doctor(steps: int = 200, p: float = 0.1) -> Doctor:
    d = Doctor(checks=())
    for s in range(steps):
        d.observe(Observation(name="train/loss", step=s, value=0.33 + 0.3 * math.exp(-s / 20)))
        d.observe(Observation(name="label/positive_fraction", step=s, value=p))
        d.observe(Observation(name="grad/norm/total", step=s, value=1.0))
        d.observe(Observation(name="grad/norm/head.0", step=s, value=1e-3))
        d.observe(Observation(name="output/std", step=s, value=0.5))
        d.observe(Observation(name="output/saturated", step=s, value=0.0))
    return d


def _add(d: Doctor, f: Finding) -> None:
    # What Doctor.evaluate() does when a check returns f (the checks are someone else's module).
    d._findings[f.check] = f  # noqa: SLF001


def _live_console(width: int = 140, height: int = 50) -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=width, height=height, _environ={})


def test_prior_loss_is_the_binary_entropy_of_the_label_mean() -> None:
    d = _fed_doctor(p=0.2)
    assert prior_loss(d) == pytest.approx(0.5004, abs=1e-4)
    _add(d, PRIOR)
    assert prior_loss(d) == 0.325  # the finding's baseline wins: the line matches its message
    assert prior_loss(Doctor(checks=())) is None


def test_prior_loss_multiclass() -> None:
    d = Doctor(checks=())
    for k in range(4):
        d.observe(Observation(name=f"label/fraction/{k}", step=0, value=0.25))
    assert prior_loss(d) == pytest.approx(math.log(4))


def test_live_dashboard_shows_charts_baseline_finding_and_verdict() -> None:
    con = _live_console()
    d = _fed_doctor()
    view = make_view(d, title="demo: random-labels", plain=False, console=con)
    assert isinstance(view, LiveView)
    view.start()
    view.update()
    _add(d, PRIOR)
    view.finding(PRIOR)
    assert "\a" not in con.file.getvalue()  # an unconfirmed dead verdict rings no bell
    view.alert_banner(
        "\a\n!!!!\nmuvo-doctor: training DEAD (prior_baseline at step 120, dead for 500 steps)\n!!!!\n"
    )
    view.stop()
    raw = con.file.getvalue()
    assert "\x1b[" in raw  # colours in a colour terminal
    text = strip_ansi(raw)
    last = text[text.rindex("muvo-doctor ") :]  # the final frame
    for shown in ("loss", "train/loss", "prior baseline H(p)=0.325", "gradient norm per module", "head.0"):
        assert shown in last, shown
    assert "output spread and saturation" in last and "label balance" in last
    assert "CRITICAL" in last and "prior_baseline" in last and "step 120" in last
    assert "DEAD" in last
    assert "\a" in raw  # the terminal bell comes with the confirmed alert
    assert "DEAD RUN" in text  # the panel naming the headline finding
    # The alert, scrolled above the dashboard.
    assert "training DEAD (prior_baseline at step 120, dead for 500 steps)" in text


def test_live_header_says_no_evidence_yet_until_there_is_some() -> None:
    from muvo_doctor.face.dashboard import render_dashboard

    def header(d: Doctor, final: bool = False) -> str:
        con = Console(file=io.StringIO(), width=140, force_terminal=False)
        con.print(render_dashboard(d, title="t", width=140, height=40, color=False, final=final))
        return con.file.getvalue().splitlines()[0]

    d = Doctor(checks=())
    assert "NO EVIDENCE YET" in header(d)
    for s in range(10):  # too few points to tell (fewer than min_points): still no evidence
        d.observe(Observation(name="train/loss", step=s, value=2.3 - 0.05 * s))
    d.evaluate()
    assert d.verdict == "inconclusive" and "NO EVIDENCE YET" in header(d)
    assert "INCONCLUSIVE" in header(d, final=True)  # at the end it is named for what it is
    for s in range(10, 300):
        d.observe(Observation(name="train/loss", step=s, value=2.3 * math.exp(-s / 100) + 0.1))
    d.evaluate()
    top = header(d)
    assert d.verdict == "healthy" and "HEALTHY" in top and "NO EVIDENCE" not in top
    assert "train/loss fell" in top  # the evidence, with its numbers


def test_live_view_child_output_scrolls_above_with_progress_bars() -> None:
    con = _live_console()
    view = make_view(_fed_doctor(), title="t", plain=False, console=con)
    view.start()
    view.child_output(b"epoch 1 loss=0.5\r\n")
    for i in range(0, 101, 25):
        view.child_output(f"\rtraining {i:3d}%".encode())
    view.child_output(b"\r\nepoch 2 lo")
    view.child_output(b"ss=0.4 \xe2\x9c")  # a multi-byte character split across reads
    view.child_output(b"\x93\n")
    view.stop()
    text = strip_ansi(con.file.getvalue())
    assert "epoch 1 loss=0.5" in text
    assert "training 100%" in text
    assert "epoch 2 loss=0.4 ✓" in text
    # Printed above the dashboard: the last child line comes before the final frame's header.
    assert text.rindex("epoch 2 loss=0.4") < text.rindex("muvo-doctor ")
    # A finished progress bar is printed as its last state, not as one line per redraw.
    assert "training   0%training" not in text and "training  25%\n" not in text


def test_update_is_throttled_to_four_refreshes_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    import muvo_doctor.face.dashboard as dash

    calls: list[int] = []
    real = dash.render_dashboard
    monkeypatch.setattr(dash, "render_dashboard", lambda *a, **k: calls.append(1) or real(*a, **k))
    d = _fed_doctor()
    view = LiveView(d, title="t", console=_live_console())
    view.start()
    t0 = time.monotonic()
    step = 1000
    while time.monotonic() - t0 < 0.6:
        step += 1
        d.observe(Observation(name="train/loss", step=step, value=0.3))
        view.update()
    n = len(calls)
    view.stop()
    assert 2 <= n <= 4  # start + at most one rebuild per 0.25 s over 0.6 s


def test_nothing_new_nothing_redrawn(monkeypatch: pytest.MonkeyPatch) -> None:
    import muvo_doctor.face.dashboard as dash

    calls: list[int] = []
    real = dash.render_dashboard
    monkeypatch.setattr(dash, "render_dashboard", lambda *a, **k: calls.append(1) or real(*a, **k))
    view = LiveView(_fed_doctor(), title="t", console=_live_console())
    view.start()
    for _ in range(3):
        time.sleep(0.26)
        view.update()
    assert len(calls) == 1
    view.stop()
    # The final frame is drawn once more only because "no evidence yet" then reads "inconclusive".
    assert view.doctor.verdict == "inconclusive" and len(calls) == 2


def test_plain_view_one_line_per_finding_no_ansi(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    con = Console(file=io.StringIO(), force_terminal=True, width=100)
    err = io.StringIO()
    out = io.BytesIO()
    d = _fed_doctor()
    view = make_view(d, title="t", plain=False, console=con, out=out, err=err)
    assert isinstance(view, PlainView)  # NO_COLOR alone turns the live screen off
    view.start()
    _add(d, FLAT)
    view.finding(FLAT)
    view.finding(FLAT)  # the same finding again: no second line
    _add(d, PRIOR)
    view.update()  # a finding the caller did not pass still gets its line
    view.stop()
    lines = err.getvalue().splitlines()
    assert lines[0] == "muvo-doctor: WARNING flat_loss step 40: the loss does not change"
    assert lines[1].startswith("muvo-doctor: CRITICAL prior_baseline step 120: loss 0.3331")
    assert lines[2] == "muvo-doctor: verdict dead (2 findings, 200 steps)"
    assert len(lines) == 3
    assert "\x1b" not in err.getvalue() and con.file.getvalue() == ""


@pytest.mark.parametrize(
    ("kwargs", "env"),
    [
        ({"plain": True, "force_terminal": True}, {}),
        ({"plain": False, "force_terminal": False}, {}),
        ({"plain": False, "force_terminal": True}, {"TERM": "dumb"}),
    ],
)
def test_plain_when_asked_not_a_tty_or_dumb(kwargs: dict, env: dict) -> None:
    con = Console(file=io.StringIO(), force_terminal=kwargs["force_terminal"], _environ=env)
    assert isinstance(make_view(Doctor(checks=()), title="t", plain=kwargs["plain"], console=con), PlainView)


def test_plain_child_output_is_byte_exact() -> None:
    out = io.BytesIO()
    view = make_view(Doctor(checks=()), title="t", plain=True, out=out, err=io.StringIO())
    chunks = [b"\x1b[32mgreen\x1b[0m\r\n", b"tqdm 10%\rtqdm 20%\r", b"\xff\xfe not utf-8 \x00", b"no newline"]
    for c in chunks:
        view.child_output(c)
    assert out.getvalue() == b"".join(chunks)


@pytest.mark.parametrize("suffix", [".svg", ".html"])
def test_snapshot_writes_the_final_dashboard(tmp_path: Path, suffix: str) -> None:
    d = _fed_doctor()
    _add(d, PRIOR)
    for plain in (False, True):
        view = make_view(
            d, title="demo", plain=plain, console=_live_console(), out=io.BytesIO(), err=io.StringIO()
        )
        view.start()
        view.stop()
        path = tmp_path / f"dash{int(plain)}{suffix}"
        view.snapshot(path)
        body = path.read_text(encoding="utf-8")
        assert body.lstrip().startswith("<svg" if suffix == ".svg" else "<!DOCTYPE html>")
        assert "prior_baseline" in body and "label" in body


def test_snapshot_rejects_other_extensions(tmp_path: Path) -> None:
    with pytest.raises(
        SnapshotError, match=r"--snapshot .*dash\.png: unsupported file type '\.png'; use a \.svg or \.html"
    ):
        check_snapshot_path(tmp_path / "dash.png")
    with pytest.raises(SnapshotError, match="does not exist"):
        check_snapshot_path(tmp_path / "missing" / "dash.svg")


def test_narrow_terminal_still_shows_loss_and_findings() -> None:
    con = _live_console(width=80, height=24)
    d = _fed_doctor()
    _add(d, PRIOR)
    view = make_view(d, title="t", plain=False, console=con)
    view.start()
    view.stop()
    text = strip_ansi(con.file.getvalue())
    last = text[text.rindex("muvo-doctor ") :]
    assert "train/loss" in last and "prior_baseline" in last
    assert max(len(line) for line in last.splitlines()) <= 80


def test_live_stdout_writes_whole_frames_with_crlf_on_a_nonblocking_fd() -> None:
    # `run` makes the terminal non-blocking and raw: a frame must arrive whole, with CR LF.
    import os
    import threading

    from muvo_doctor.face.dashboard import _CRLFWriter

    r, w = os.pipe()
    os.set_blocking(w, False)
    stream = open(w, "w", encoding="utf-8", closefd=True)  # noqa: SIM115
    got = bytearray()

    def reader() -> None:
        while chunk := os.read(r, 4096):
            got.extend(chunk)
            time.sleep(0.0005)

    t = threading.Thread(target=reader)
    t.start()
    text = "".join(f"line {i} ✓\n" for i in range(20_000))  # ~200 KB, far over a pipe buffer
    writer = _CRLFWriter(stream)
    assert writer.write(text) == len(text)
    stream.close()
    t.join(timeout=10)
    os.close(r)
    assert bytes(got) == text.replace("\n", "\r\n").encode("utf-8")


def test_plain_default_streams_are_stdout_bytes_and_stderr_lines(
    capfdbinary: pytest.CaptureFixture[bytes],
) -> None:
    d = Doctor(checks=())
    view = make_view(d, title="t", plain=True)
    data = b"\x1b[1mbold\x1b[0m\r\nloss=0.3331\rloss=0.3330\n\xff"
    view.child_output(data)
    _add(d, PRIOR)
    view.update()
    captured = capfdbinary.readouterr()
    assert captured.out == data
    assert captured.err.decode().startswith("muvo-doctor: CRITICAL prior_baseline step 120: ")
    assert captured.err.endswith(b"\n") and b"\r" not in captured.err  # not a terminal: plain newlines


def test_live_panel_is_current_when_the_child_prints_between_refreshes():
    """Regression: child output printed above the live panel used to repaint a stale panel."""
    import io
    import time as _time

    from rich.console import Console

    from muvo_doctor.core.doctor import Doctor
    from muvo_doctor.core.observation import Observation
    from muvo_doctor.face.dashboard import make_view

    buf = io.StringIO()
    doctor = Doctor()
    view = make_view(
        doctor, title="t", plain=False, console=Console(file=buf, force_terminal=True, width=120, height=40)
    )
    view.start()
    try:
        for i in range(30):
            doctor.observe(Observation(name="train/loss", step=i, value=1.0 / (i + 1)))
        _time.sleep(0.3)
        view.update()
        view.child_output(b"a line from the child\n")
        _time.sleep(0.4)
        assert "step 29" in buf.getvalue()
    finally:
        view.stop()

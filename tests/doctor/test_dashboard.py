"""The dashboard as a user sees it: rendered into a StringIO console, or as plain lines."""

from __future__ import annotations

import io
import math
import re
import time
from pathlib import Path

import pytest
from rich.console import Console

from muvo_doctor.core.doctor import Doctor
from muvo_doctor.core.finding import Finding
from muvo_doctor.core.history import History
from muvo_doctor.core.observation import Observation
from muvo_doctor.face.dashboard import PlainView, make_view
from muvo_doctor.face.frame import SnapshotError, check_snapshot_path, render_dashboard
from muvo_doctor.face.live import LiveView, StdoutCRLF

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    """What a terminal shows as characters: colour codes and cursor moves taken out."""
    return _ANSI.sub("", text)


PRIOR = Finding(
    check="prior_baseline",
    severity="critical",
    step=120,
    message="loss 0.3331 sits at the prior's entropy H(0.10)=0.325: the model learned only the prior",
    evidence={"prior_p": 0.1, "prior_entropy": 0.3251, "baseline_loss": 0.325},
    advice="check the labels",
)
FLAT = Finding(check="flat_loss", severity="warning", step=40, message="the loss does not change", advice="x")


class Scripted:
    """A check (any object with ``ID`` and ``check``) that returns the findings a test gives it."""

    ID = "scripted"

    def __init__(self) -> None:
        self.found: list[Finding] = []

    def check(self, history: History, config: object) -> list[Finding]:
        return list(self.found)


def _fed_doctor(steps: int = 200, p: float = 0.1) -> Doctor:
    d = Doctor(checks=(Scripted(),))  # type: ignore[arg-type]
    for s in range(steps):
        d.observe(Observation(name="train/loss", step=s, value=0.33 + 0.3 * math.exp(-s / 20)))
        d.observe(Observation(name="label/positive_fraction", step=s, value=p))
        d.observe(Observation(name="grad/norm/total", step=s, value=1.0))
        d.observe(Observation(name="grad/norm/head.0", step=s, value=1e-3))
        d.observe(Observation(name="output/std", step=s, value=0.5))
        d.observe(Observation(name="output/saturated", step=s, value=0.0))
    return d


def _add(d: Doctor, f: Finding) -> None:
    """The doctor's check returns ``f`` from now on; the doctor evaluates."""
    d.checks[0].found.append(f)  # type: ignore[attr-defined]
    d.evaluate()


class Clock:
    """Seconds that pass only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _live_console(width: int = 140, height: int = 50) -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=width, height=height, _environ={})


def _shown(d: Doctor, width: int = 140) -> str:
    con = Console(file=io.StringIO(), width=width, force_terminal=False)
    con.print(render_dashboard(d, title="t", width=width, height=40, color=False))
    return con.file.getvalue()


def _steps_in_frames(con: Console) -> list[int]:
    """The step each frame painted so far shows in its header, in order."""
    text = strip_ansi(con.file.getvalue())  # type: ignore[attr-defined]
    return [int(m) for m in re.findall(r" muvo-doctor  t  ·  step (\d+)", text)]


def test_loss_chart_line_is_the_binary_entropy_of_the_label_mean() -> None:
    d = _fed_doctor(p=0.2)
    assert "prior baseline H(p)=0.500" in _shown(d)  # H(0.2) = 0.5004 nats
    _add(d, PRIOR)
    assert "prior baseline H(p)=0.325" in _shown(d)  # the finding's number wins: the line matches it
    assert "prior baseline" not in _shown(Doctor(checks=()))  # no labels, no line


def test_loss_chart_line_multiclass() -> None:
    d = Doctor(checks=())
    for k in range(4):
        d.observe(Observation(name=f"label/fraction/{k}", step=0, value=0.25))
        d.observe(Observation(name="train/loss", step=k, value=1.4))
    assert f"prior baseline H(p)={math.log(4):.3f}" in _shown(d)


def test_live_dashboard_shows_charts_baseline_finding_and_verdict() -> None:
    con = _live_console()
    d = _fed_doctor()
    view = make_view(d, title="demo: random-labels", plain=False, console=con)
    assert isinstance(view, LiveView)
    view.start()
    view.update()
    _add(d, PRIOR)
    view.finding(d.findings[0])
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


def test_update_is_throttled_to_four_refreshes_a_second() -> None:
    d = _fed_doctor()
    con = _live_console()
    clock = Clock()
    view = LiveView(d, title="t", console=con, clock=clock, ticker=False)
    view.start()
    for tick in range(1, 33):  # one second in steps of 1/32 s, a new step each time
        clock.now = tick / 32
        d.observe(Observation(name="train/loss", step=1000 + tick, value=0.3))
        view.update()
        view.repaint()
    # The first frame, then one each 0.25 s (8 ticks): the steps in between are never drawn.
    assert _steps_in_frames(con) == [199, 1008, 1016, 1024, 1032]
    view.stop()


def test_nothing_new_nothing_redrawn() -> None:
    con = _live_console()
    clock = Clock()
    view = LiveView(_fed_doctor(), title="t", console=con, clock=clock, ticker=False)
    view.start()
    for tick in range(1, 4):
        clock.now = tick * 0.26
        view.update()
        view.repaint()
    assert _steps_in_frames(con) == [199]  # the first frame only
    view.stop()
    # Drawn again at the end only because "no evidence yet" then reads "inconclusive".
    last = strip_ansi(con.file.getvalue())
    assert "NO EVIDENCE YET" not in last[last.rindex(" muvo-doctor ") :]
    assert "INCONCLUSIVE" in last[last.rindex(" muvo-doctor ") :]


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
    writer = StdoutCRLF(stream)
    assert writer.write(text) == len(text)
    stream.close()
    t.join(timeout=10)
    os.close(r)
    assert bytes(got) == text.replace("\n", "\r\n").encode("utf-8")


def test_plain_default_streams_are_stdout_bytes_and_stderr_lines(
    capfdbinary: pytest.CaptureFixture[bytes],
) -> None:
    d = Doctor(checks=(Scripted(),))  # type: ignore[arg-type]
    view = make_view(d, title="t", plain=True)
    data = b"\x1b[1mbold\x1b[0m\r\nloss=0.3331\rloss=0.3330\n\xff"
    view.child_output(data)
    _add(d, PRIOR)
    view.update()
    captured = capfdbinary.readouterr()
    assert captured.out == data
    assert captured.err.decode().startswith("muvo-doctor: CRITICAL prior_baseline step 120: ")
    assert captured.err.endswith(b"\n") and b"\r" not in captured.err  # not a terminal: plain newlines


def test_live_panel_is_current_when_the_child_prints_between_refreshes() -> None:
    """Regression: child output printed above the live panel used to repaint a stale panel."""
    con = _live_console(width=120, height=40)
    clock = Clock()
    doctor = Doctor()
    view = LiveView(doctor, title="t", console=con, clock=clock, ticker=False)
    view.start()
    try:
        for i in range(30):
            doctor.observe(Observation(name="train/loss", step=i, value=1.0 / (i + 1)))
        clock.now = 0.3
        view.update()
        view.child_output(b"a line from the child\n")
        view.repaint()
        text = strip_ansi(con.file.getvalue())  # type: ignore[attr-defined]
        assert "a line from the child" in text
        assert _steps_in_frames(con)[-1] == 29
    finally:
        view.stop()

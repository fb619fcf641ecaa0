"""Alerts: webhook JSON to a real HTTP server, unreachable URLs, --notify-cmd, fire-once."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from muvo_doctor.alerts import Alerts, post_json, webhook_payload
from muvo_doctor.finding import Finding

SCRIPTS = Path(__file__).resolve().parents[1] / "fixtures" / "scripts"
PY = sys.executable

DEAD = Finding(
    check="flat_loss",
    severity="critical",
    step=12,
    message="train/loss has stayed at 0.6931 for 60 points",
    evidence={"level": 0.6931},
    advice="check the loss",
)
WARN = DEAD.model_copy(update={"check": "loss_spike", "severity": "warning"})


class Hook:
    """An HTTP server on 127.0.0.1 recording POSTed JSON; answers `statuses` in turn, then 200."""

    def __init__(self, statuses: tuple[int, ...] = ()) -> None:
        self.bodies: list[dict] = []
        self.statuses = list(statuses)
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                n = int(self.headers.get("Content-Length", 0))
                hook.bodies.append(json.loads(self.rfile.read(n)))
                self.send_response(hook.statuses.pop(0) if hook.statuses else 200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.close()


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_payload_has_slack_and_discord_fields():
    body = webhook_payload(DEAD, "dead", "python train.py")
    assert body["text"] == body["content"]
    assert "DEAD" in body["text"] and "flat_loss" in body["text"] and "0.6931" in body["text"]
    assert body["verdict"] == "dead" and body["source"] == "python train.py"
    assert body["finding"]["check"] == "flat_loss" and body["finding"]["step"] == 12
    json.dumps(body)  # serialisable as is


def test_a_run_posts_the_first_critical_finding_to_the_webhook(hook):
    p = subprocess.run(
        [PY, "-m", "muvo_doctor", "run", "--notify", hook.url, "--", str(SCRIPTS / "flat_loss.sh"), "60"],
        capture_output=True,
        timeout=60,
    )
    assert p.returncode == 0
    assert len(hook.bodies) == 1  # once, on the first critical finding
    body = hook.bodies[0]
    assert body["verdict"] == "dead"
    assert body["finding"]["severity"] == "critical"
    assert body["finding"]["check"] in {"flat_loss", "prior_baseline"}
    assert body["source"].endswith("flat_loss.sh 60")
    assert body["text"].startswith("muvo-doctor: training DEAD")
    assert b"\a" in p.stderr  # the terminal bell with the banner


def test_retries_a_server_error_then_delivers():
    h = Hook(statuses=(500, 503))
    try:
        assert post_json(h.url, {"text": "x"}, backoff=(0.0,)) is None
        assert len(h.bodies) == 3
    finally:
        h.close()


def test_a_client_error_is_not_retried_and_is_reported():
    h = Hook(statuses=(404,))
    try:
        assert post_json(h.url, {"text": "x"}, backoff=(0.0,)) == "HTTP 404 Not Found"
        assert len(h.bodies) == 1
    finally:
        h.close()


@pytest.mark.parametrize("url", ["closed-port", "http://10.255.255.1:9/hook"])
def test_an_unreachable_webhook_does_not_slow_or_break_the_run(url):
    if url == "closed-port":
        url = f"http://127.0.0.1:{closed_port()}/hook"
    cmd = [str(SCRIPTS / "flat_loss.sh"), "40", "0.02"]
    t0 = time.monotonic()
    direct = subprocess.run(cmd, capture_output=True, timeout=60)
    t_direct = time.monotonic() - t0
    t0 = time.monotonic()
    p = subprocess.run(
        [PY, "-m", "muvo_doctor", "run", "--notify", url, "--", *cmd], capture_output=True, timeout=60
    )
    t_wrapped = time.monotonic() - t0
    assert p.returncode == 0
    assert p.stdout == direct.stdout
    # The run ends dead before its confirmation window, so the alert fires at exit, in the background,
    # and gets at most 2 s there before we give up: start-up (~0.5-1 s, more on a busy machine) + 2 s.
    assert t_wrapped - t_direct < 5.0
    assert b"alert" in p.stderr and b"Traceback" not in p.stderr


def test_notify_cmd_gets_the_message_in_its_environment(tmp_path):
    out = tmp_path / "alert.txt"
    cmd = f'printf "%s|%s|%s" "$MUVO_DOCTOR_CHECK" "$MUVO_DOCTOR_VERDICT" "$MUVO_DOCTOR_MESSAGE" > {out}'
    p = subprocess.run(
        [PY, "-m", "muvo_doctor", "run", "--notify-cmd", cmd, "--", str(SCRIPTS / "flat_loss.sh"), "60"],
        capture_output=True,
        timeout=60,
    )
    assert p.returncode == 0
    check, verdict, message = out.read_text().split("|", 2)
    assert check in {"flat_loss", "prior_baseline"}
    assert verdict == "dead"
    assert message.startswith("muvo-doctor: training DEAD") and check in message


def test_fires_once_per_confirmed_verdict_change_and_never_on_warnings(hook):
    err = io.StringIO()
    banners: list[str] = []
    a = Alerts(source="train.py", notify_url=hook.url, banner=banners.append, stream=err)
    assert a.update("warning", WARN, confirmed=True, held="warning for 900 steps") is False
    assert a.update("dead", DEAD, confirmed=False, held="dead for 100 steps (since step 25)") is False
    assert a.update("dead", DEAD, confirmed=True, held="dead for 500 steps (since step 25)") is True
    # Still dead, another headline: no second alert.
    assert a.update("dead", DEAD.model_copy(update={"check": "nan_inf"}), confirmed=True) is False
    # Recovered, not yet for its window: nothing; then confirmed: one alert saying so.
    assert a.update("healthy", None, confirmed=False) is False
    assert a.update("healthy", None, confirmed=True, held="healthy for 500 steps (since step 700)") is True
    a.close(timeout=5)
    assert len(banners) == 2 and banners[0].startswith("\a") and "flat_loss" in banners[0]
    assert "dead for 500 steps (since step 25)" in banners[0]  # the banner says how long it held
    assert not banners[1].startswith("\a") and "training HEALTHY" in banners[1]
    assert [b["verdict"] for b in hook.bodies] == ["dead", "healthy"]
    assert hook.bodies[0]["finding"]["check"] == "flat_loss" and hook.bodies[1]["finding"] is None
    assert err.getvalue() == ""


def test_a_dead_verdict_resolved_within_its_window_never_alerts(hook):
    banners: list[str] = []
    a = Alerts(source="train.py", notify_url=hook.url, banner=banners.append, stream=io.StringIO())
    for _ in range(5):
        a.update("dead", DEAD, confirmed=False)
    a.update("warning", WARN, confirmed=False)
    a.update("healthy", None, confirmed=True)
    a.update("healthy", None, confirmed=True, final=True)
    a.close(timeout=5)
    assert banners == [] and hook.bodies == []


def test_a_run_that_ends_dead_alerts_at_the_end(hook):
    banners: list[str] = []
    a = Alerts(source="train.py", notify_url=hook.url, banner=banners.append, stream=io.StringIO())
    assert a.update("dead", DEAD, confirmed=False) is False
    assert a.update("dead", DEAD, confirmed=False, held="dead for 40 steps, when the run ended", final=True)
    a.close(timeout=5)
    assert len(banners) == 1 and "when the run ended" in banners[0]
    assert [b["finding"]["check"] for b in hook.bodies] == ["flat_loss"]


def test_a_failing_notify_cmd_is_reported_once():
    err = io.StringIO()
    a = Alerts(source="train.py", notify_cmd="exit 5", banner=lambda t: None, stream=err)
    a.update("dead", DEAD, confirmed=True)
    a.close(timeout=10)
    assert err.getvalue() == "muvo-doctor: --notify-cmd exited with 5\n"

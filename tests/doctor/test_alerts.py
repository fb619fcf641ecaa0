"""Alerts: webhook bodies (json, Slack, Discord, Teams, ntfy) to a real HTTP server, redirects refused,
HTTPS verified, unreachable URLs, --notify-cmd, fire-once."""

from __future__ import annotations

import io
import json
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from muvo_doctor.core.finding import Finding
from muvo_doctor.run.alerts import Alerts, infer_format, post, webhook_payload, webhook_request

SCRIPTS = Path(__file__).resolve().parents[1] / "fixtures" / "scripts"
PY = sys.executable
JSON = {"Content-Type": "application/json"}

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

    def __init__(self, statuses: tuple[int, ...] = (), tls: ssl.SSLContext | None = None) -> None:
        self.bodies: list[dict] = []  # JSON bodies, parsed
        self.raw: list[bytes] = []  # every body as received
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.statuses = list(statuses)
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                n = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(n)
                hook.raw.append(raw)
                hook.headers.append(dict(self.headers.items()))
                hook.paths.append(self.path)
                if self.headers.get("Content-Type", "").startswith("application/json"):
                    hook.bodies.append(json.loads(raw))
                status = hook.statuses.pop(0) if hook.statuses else 200
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", f"http://elsewhere.example/{self.path}")
                self.end_headers()

            do_GET = do_POST  # noqa: N815 (a followed redirect would arrive as a GET)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}/hook"
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
        assert post(h.url, b'{"text": "x"}', JSON, backoff=(0.0,)) is None
        assert len(h.bodies) == 3
    finally:
        h.close()


def test_a_client_error_is_not_retried_and_is_reported():
    h = Hook(statuses=(404,))
    try:
        assert post(h.url, b'{"text": "x"}', JSON, backoff=(0.0,)) == "HTTP 404 Not Found"
        assert len(h.bodies) == 1
    finally:
        h.close()


@pytest.mark.parametrize("url", ["closed-port", "http://10.255.255.1:9/hook"])
def test_an_unreachable_webhook_does_not_break_the_run(url):
    if url == "closed-port":
        url = f"http://127.0.0.1:{closed_port()}/hook"
    cmd = [str(SCRIPTS / "flat_loss.sh"), "40", "0.02"]
    direct = subprocess.run(cmd, capture_output=True, timeout=60)
    p = subprocess.run(
        [PY, "-m", "muvo_doctor", "run", "--notify", url, "--", *cmd], capture_output=True, timeout=60
    )
    assert p.returncode == 0
    assert p.stdout == direct.stdout
    # The run ends dead before its confirmation window, so the alert fires at exit, in the background;
    # a delivery that cannot finish there is given up and said (the test below), never waited for.
    assert b"alert" in p.stderr and b"Traceback" not in p.stderr


def test_at_exit_a_delivery_still_pending_is_given_up_and_said():
    # A server that accepts the connection and never answers holds the delivery past close's grace.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    err = io.StringIO()
    url = f"http://127.0.0.1:{srv.getsockname()[1]}/hook"
    a = Alerts(source="train.py", notify_url=url, banner=lambda text: None, stream=err)
    try:
        a.update("dead", DEAD, confirmed=True)
        a.close(timeout=0.2)
    finally:
        srv.close()
    assert err.getvalue() == (
        "muvo-doctor: an alert was still being delivered after 0 s at exit; gave up on it\n"
    )


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


# ------------------------------------------------------------------ formats the receiving chat understands

PRIOR = Finding(
    check="prior_baseline",
    severity="critical",
    step=120,
    message="train/loss 0.3251 ≈ H(0.10)=0.3251: the model predicts the label prior <@everyone> & more",
    evidence={"prior_entropy": 0.3251},
    advice="judge against the prior: AUROC, a loss clearly below H(p)",
)
SOURCE = "python train.py --api-key ***"


def deliver(fmt: str | None, finding: Finding | None = PRIOR, verdict: str = "dead") -> Hook:
    """One alert of ``fmt`` (None: inferred) through Alerts to a loopback server; the server, closed."""
    h = Hook()
    try:
        a = Alerts(
            source=SOURCE, notify_url=h.url, notify_format=fmt, banner=lambda t: None, stream=io.StringIO()
        )
        a.update("dead", PRIOR, confirmed=True, held="dead for 600 steps (since step 120)")
        if verdict != "dead":
            a.update(verdict, finding, confirmed=True, held="healthy for 700 steps (since step 900)")
        a.close(timeout=10)
        assert a.errors == []
    finally:
        h.close()
    return h


def test_slack_gets_text_and_blocks_with_verdict_finding_step_advice_and_command():
    h = deliver("slack")
    (body,) = h.bodies
    assert h.headers[0]["Content-Type"] == "application/json"
    assert body["text"].startswith("muvo-doctor: training DEAD (prior_baseline at step 120")
    kinds = [b["type"] for b in body["blocks"]]
    assert kinds[0] == "header" and kinds[-1] == "context" and "section" in kinds
    assert body["blocks"][0]["text"] == {
        "type": "plain_text",
        "text": "muvo-doctor: training DEAD (prior_baseline)",
    }
    mrkdwn = " ".join(
        t["text"]
        for b in body["blocks"]
        for t in ([b["text"]] if "text" in b else b.get("fields", []))
        if t["type"] == "mrkdwn"
    )
    assert "prior_baseline at step 120" in mrkdwn and "0.3251" in mrkdwn
    assert "*Verdict*\ndead" in mrkdwn and "*Step*\n120" in mrkdwn
    assert "What to do: judge against the prior" in mrkdwn
    # Slack reads <...> as a link or mention and & as an entity: escaped, shown as written.
    assert "&lt;@everyone&gt; &amp; more" in mrkdwn and "<@everyone>" not in mrkdwn
    assert body["blocks"][-1]["elements"][0]["text"] == SOURCE
    assert all(len(b["text"]["text"]) <= 150 for b in body["blocks"] if b["type"] == "header")


def test_discord_gets_content_and_an_embed_that_pings_nobody():
    h = deliver("discord")
    (body,) = h.bodies
    assert body["content"].startswith("muvo-doctor: training DEAD") and len(body["content"]) <= 2000
    (embed,) = body["embeds"]
    assert embed["title"] == "muvo-doctor: training DEAD (prior_baseline)"
    assert embed["description"].startswith("prior_baseline at step 120 (dead for 600 steps")
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["Verdict"] == "dead" and fields["Step"] == "120"
    assert fields["What to do"] == PRIOR.advice
    assert embed["footer"]["text"] == SOURCE
    assert embed["color"] == 0xD70000
    assert body["allowed_mentions"] == {"parse": []}


def test_teams_gets_a_message_card_with_facts():
    h = deliver("teams")
    (card,) = h.bodies
    assert card["@type"] == "MessageCard" and card["@context"] == "https://schema.org/extensions"
    assert card["summary"] == card["title"] == "muvo-doctor: training DEAD (prior_baseline)"
    assert card["text"].startswith("prior_baseline at step 120")
    assert len(card["themeColor"]) == 6
    facts = {f["name"]: f["value"] for f in card["sections"][0]["facts"]}
    assert facts == {"Verdict": "dead", "Step": "120", "What to do": PRIOR.advice, "Command": SOURCE}


def test_ntfy_gets_a_plain_body_with_title_priority_and_tags_headers():
    h = deliver("ntfy", None, "healthy")
    assert h.bodies == []  # not JSON
    dead, healthy = h.headers
    assert dead["Title"] == "muvo-doctor: training DEAD (prior_baseline)"
    assert (dead["Priority"], dead["Tags"]) == ("5", "skull")
    assert (healthy["Title"], healthy["Priority"]) == ("muvo-doctor: training HEALTHY", "3")
    assert dead["Content-Type"].startswith("text/plain")
    text = h.raw[0].decode("utf-8")
    assert text.startswith(
        "prior_baseline at step 120 (dead for 600 steps (since step 120)): train/loss 0.3251"
    )
    assert f"What to do: {PRIOR.advice}" in text and f"Command: {SOURCE}" in text
    assert h.raw[1].decode().startswith("The run recovered: healthy for 700 steps")


def test_json_stays_the_default_for_unknown_hosts():
    h = deliver(None)
    (body,) = h.bodies  # 127.0.0.1: no service of its own
    assert body["verdict"] == "dead" and body["finding"]["check"] == "prior_baseline"
    assert body["source"] == SOURCE and body["text"] == body["content"]


@pytest.mark.parametrize(
    ("url", "fmt"),
    [
        ("https://hooks.slack.com/services/T0/B0/XYZ", "slack"),
        ("https://discord.com/api/webhooks/1/abc", "discord"),
        ("https://ptb.discord.com/api/webhooks/1/abc", "discord"),
        ("https://discordapp.com/api/webhooks/1/abc", "discord"),
        ("https://contoso.webhook.office.com/webhookb2/abc", "teams"),
        ("https://outlook.office.com/webhook/abc", "teams"),
        ("https://ntfy.sh/my-topic", "ntfy"),
        ("https://example.com/hook", "json"),
        ("https://hooks.slack.com.evil.example/services/x", "json"),
        ("https://notdiscord.com/api/webhooks/1", "json"),
    ],
)
def test_the_format_is_inferred_from_the_host(url, fmt):
    assert infer_format(url) == fmt


def test_every_format_names_the_recovery_without_a_finding():
    for fmt in ("json", "slack", "discord", "teams", "ntfy"):
        body, headers = webhook_request(fmt, None, "healthy", SOURCE, "healthy for 700 steps")
        shown = body + json.dumps(headers).encode()  # ntfy's title is a header
        assert b"HEALTHY" in shown and SOURCE.encode() in body and b"700 steps" in body, fmt


def test_an_unknown_format_is_refused_at_construction():
    with pytest.raises(ValueError, match="notify_format must be one of json, slack"):
        Alerts(source="x", notify_url="http://127.0.0.1/", notify_format="teams2")


# ------------------------------------------------------------------ delivery: redirects, TLS, secrets


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_not_followed_and_is_a_failed_delivery(status):
    h = Hook(statuses=(status,))
    try:
        why = post(h.url, b"{}", JSON, backoff=(0.0,))
        assert why is not None and why.startswith(f"HTTP {status}")
        assert "redirects are not followed" in why and "elsewhere.example" in why
        assert h.paths == ["/hook"]  # one POST, no second request of any kind
    finally:
        h.close()


def test_a_redirected_alert_is_reported_once_without_the_webhook_token():
    h = Hook(statuses=(302,))
    err = io.StringIO()
    try:
        url = h.url + "/T000/SECRET-TOKEN"
        a = Alerts(source="train.py", notify_url=url, banner=lambda t: None, stream=err)
        a.update("dead", DEAD, confirmed=True)
        a.close(timeout=10)
    finally:
        h.close()
    lines = err.getvalue().splitlines()
    assert len(lines) == 1 and "alert not delivered: HTTP 302" in lines[0]
    assert "SECRET-TOKEN" not in err.getvalue() and "http://127.0.0.1/..." in lines[0]


@pytest.fixture
def self_signed(tmp_path):
    """A server context with a fresh self-signed certificate for 127.0.0.1 (openssl CLI)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def test_an_https_webhook_with_an_untrusted_certificate_is_not_delivered(self_signed):
    h = Hook(tls=self_signed)
    try:
        why = post(h.url, b"{}", JSON, backoff=(0.0,))
    finally:
        h.close()
    assert why is not None and why.startswith("HTTPS certificate not trusted")
    assert h.raw == []  # nothing reached the server's handler


def test_a_webhook_that_never_answers_gives_up_at_its_socket_timeout(monkeypatch):
    # A server that accepts the connection and never answers: each attempt ends at the socket timeout
    # post() hands the connection (without one an attempt would wait for ever).
    timeouts = []
    connect = socket.create_connection

    def spy(address, *args, **kw):
        timeouts.append(args[0] if args else kw.get("timeout"))
        return connect(address, *args, **kw)

    monkeypatch.setattr(socket, "create_connection", spy)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    url = f"http://127.0.0.1:{srv.getsockname()[1]}/hook"
    result: list[str | None] = []
    t = threading.Thread(
        target=lambda: result.append(post(url, b"{}", {}, timeout=0.3, attempts=2, backoff=(0.0,))),
        daemon=True,
    )
    try:
        t.start()
        t.join(30)  # a deadline, so that a lost timeout fails this test instead of hanging it
    finally:
        srv.close()
    assert result, "post() still waiting after 30 s"
    (why,) = result
    assert why is not None and "after 2 attempts" in why
    assert timeouts == [0.3, 0.3]


def test_run_sends_the_format_named_by_notify_format(hook):
    p = subprocess.run(
        [PY, "-m", "muvo_doctor", "run", "--notify", hook.url, "--notify-format", "ntfy", "--",
         str(SCRIPTS / "flat_loss.sh"), "60"],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    (headers,) = hook.headers
    assert headers["Title"].startswith("muvo-doctor: training DEAD (") and headers["Priority"] == "5"
    text = hook.raw[0].decode()
    assert "What to do: " in text and text.rstrip().endswith("flat_loss.sh 60")

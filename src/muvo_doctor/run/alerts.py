"""Alerts for `muvo-doctor run`: a banner and bell, a webhook, a command; sent once per confirmed verdict change.

They fire when the run turns dead and that verdict has held for its confirmation window (see
``doctor.confirm_window``), or when the run ends dead; and once more if a confirmed dead run
recovers and that holds for the window too. A dead verdict whose findings resolve within the
window never alerts. Warnings do not alert.

Delivery never blocks or fails the training: webhooks and commands run on a daemon thread
with a timeout and bounded retries, and every failure is reported once on stderr.

Webhook bodies (POST), by ``--notify-format`` (default: inferred from the URL's host, see
:func:`infer_format`); each carries the run's command, the verdict, the headline finding, its step
and its advice:

- ``json``: ``text``, ``content`` (at most 2000 characters), ``verdict``, ``finding`` (the finding
  record of docs/contract.md, null on recovery) and ``source``.
- ``slack``: ``text`` (the notification's fallback) and ``blocks`` (header, sections, context).
- ``discord``: ``content`` and one entry of ``embeds`` (title, description, colour, fields, footer);
  mentions in the text never ping anyone.
- ``teams``: a MessageCard (``@type``, ``summary``, ``title``, ``text``, ``sections`` of facts).
- ``ntfy``: the message as a plain-text body, with ``Title``, ``Priority`` (5 when dead, 3 on
  recovery) and ``Tags`` headers.

Redirects are never followed (a 3xx is a failed delivery, reported: a webhook that moved should be
updated, and a redirect must not carry the alert to another host); HTTPS certificates are verified
against the system's trust store; each attempt has a socket timeout and the retries a bounded
backoff, so a delivery gives up within about ``WEBHOOK_ATTEMPTS * WEBHOOK_TIMEOUT_S + sum(BACKOFF_S)``.
The command gets the message in ``MUVO_DOCTOR_MESSAGE``, the check id in ``MUVO_DOCTOR_CHECK``
and the verdict in ``MUVO_DOCTOR_VERDICT``.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, Literal, TextIO, cast
from urllib.parse import urlsplit

from muvo_doctor.core.finding import Finding

WEBHOOK_TIMEOUT_S = 5.0
WEBHOOK_ATTEMPTS = 4  # the first try and 3 retries
BACKOFF_S = (0.5, 1.0, 2.0)
COMMAND_TIMEOUT_S = 30.0
DISCORD_LIMIT = 2000

NotifyFormat = Literal["json", "slack", "discord", "teams", "ntfy"]
FORMATS: tuple[NotifyFormat, ...] = ("json", "slack", "discord", "teams", "ntfy")
# Hosts whose webhooks expect a format of their own (a host or any subdomain of it).
_HOST_FORMATS: tuple[tuple[str, NotifyFormat], ...] = (
    ("hooks.slack.com", "slack"),
    ("discord.com", "discord"),
    ("discordapp.com", "discord"),
    ("webhook.office.com", "teams"),
    ("outlook.office.com", "teams"),
    ("ntfy.sh", "ntfy"),
)
_RED, _GREEN = 0xD70000, 0x2EA043


def alert_message(finding: Finding | None, verdict: str, source: str, held: str = "") -> str:
    """The one-line alert text: verdict, how long it held, the headline finding's check, step and sentence, the command."""
    how = f", {held}" if held else ""
    if finding is None:
        return f"muvo-doctor: training {verdict.upper()}{how} [{source}]"
    step = f" at step {finding.step}" if finding.step is not None else ""
    return (
        f"muvo-doctor: training {verdict.upper()} ({finding.check}{step}{how}): {finding.message} [{source}]"
    )


def webhook_payload(finding: Finding | None, verdict: str, source: str, held: str = "") -> dict[str, Any]:
    """The JSON body POSTed to ``--notify URL`` (``finding``: the headline finding, or null on recovery)."""
    text = alert_message(finding, verdict, source, held)
    return {
        "text": text,
        "content": text[:DISCORD_LIMIT],
        "verdict": verdict,
        "finding": finding.model_dump(mode="json") if finding is not None else None,
        "source": source,
    }


def infer_format(url: str) -> NotifyFormat:
    """The body a webhook URL expects, from its host (``hooks.slack.com`` -> slack); json otherwise."""
    host = (urlsplit(url).hostname or "").lower()
    for suffix, fmt in _HOST_FORMATS:
        if host == suffix or host.endswith("." + suffix):
            return fmt
    return "json"


def _title(finding: Finding | None, verdict: str) -> str:
    if finding is None:
        return f"muvo-doctor: training {verdict.upper()}"
    return f"muvo-doctor: training {verdict.upper()} ({finding.check})"


def _what(finding: Finding | None, held: str) -> str:
    """The sentence under the title: the finding (or the recovery) and how long the verdict held."""
    if finding is None:
        return f"The run recovered: {held}." if held else "The run recovered."
    step = f" at step {finding.step}" if finding.step is not None else ""
    how = f" ({held})" if held else ""
    return f"{finding.check}{step}{how}: {finding.message}"


def _slack_escape(text: str) -> str:
    # Slack's mrkdwn reads &, < and > as markup (links, mentions): these three must be escaped.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _slack(finding: Finding | None, verdict: str, source: str, held: str) -> dict[str, Any]:
    # Block Kit limits: header text 150 characters, section text 3000, context element 3000.
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(_title(finding, verdict), 150)}},
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": _cut(_slack_escape(_what(finding, held)), 3000)},
        },
    ]
    fields = [{"type": "mrkdwn", "text": f"*Verdict*\n{verdict}"}]
    if finding is not None and finding.step is not None:
        fields.append({"type": "mrkdwn", "text": f"*Step*\n{finding.step}"})
    blocks.append({"type": "section", "fields": fields})
    if finding is not None:
        advice = _cut(_slack_escape(f"What to do: {finding.advice}"), 3000)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": advice}})
    blocks.append(
        {"type": "context", "elements": [{"type": "plain_text", "text": _cut(source, 3000) or "-"}]}
    )
    return {"text": alert_message(finding, verdict, source, held), "blocks": blocks}


def _discord(finding: Finding | None, verdict: str, source: str, held: str) -> dict[str, Any]:
    # Discord limits: content 2000, title 256, description 4096, field value 1024, footer 2048.
    fields = [{"name": "Verdict", "value": verdict, "inline": True}]
    if finding is not None:
        if finding.step is not None:
            fields.append({"name": "Step", "value": str(finding.step), "inline": True})
        fields.append({"name": "What to do", "value": _cut(finding.advice, 1024), "inline": False})
    embed = {
        "title": _cut(_title(finding, verdict), 256),
        "description": _cut(_what(finding, held), 4096),
        "color": _RED if verdict == "dead" else _GREEN,
        "fields": fields,
        "footer": {"text": _cut(source, 2048)},
    }
    return {
        "content": alert_message(finding, verdict, source, held)[:DISCORD_LIMIT],
        "embeds": [embed],
        "allowed_mentions": {"parse": []},  # an "@everyone" in a log message pings no one
    }


def _teams(finding: Finding | None, verdict: str, source: str, held: str) -> dict[str, Any]:
    facts = [{"name": "Verdict", "value": verdict}]
    if finding is not None:
        if finding.step is not None:
            facts.append({"name": "Step", "value": str(finding.step)})
        facts.append({"name": "What to do", "value": finding.advice})
    facts.append({"name": "Command", "value": source})
    return {
        "@type": "MessageCard",
        "@context": "https://schema.org/extensions",
        "summary": _title(finding, verdict),
        "themeColor": f"{_RED if verdict == 'dead' else _GREEN:06X}",
        "title": _title(finding, verdict),
        "text": _what(finding, held),
        "sections": [{"facts": facts}],
    }


def _ntfy(finding: Finding | None, verdict: str, source: str, held: str) -> tuple[bytes, dict[str, str]]:
    lines = [_what(finding, held)]
    if finding is not None:
        lines.append(f"What to do: {finding.advice}")
    lines.append(f"Command: {source}")
    headers = {
        # HTTP headers are latin-1: the title is ASCII (non-ASCII characters become "?").
        "Title": _title(finding, verdict).encode("ascii", "replace").decode("ascii"),
        "Priority": "5" if verdict == "dead" else "3",
        "Tags": "skull" if verdict == "dead" else "white_check_mark",
        "Content-Type": "text/plain; charset=utf-8",
    }
    return "\n".join(lines).encode("utf-8"), headers


def webhook_request(
    fmt: NotifyFormat, finding: Finding | None, verdict: str, source: str, held: str = ""
) -> tuple[bytes, dict[str, str]]:
    """The body and headers POSTed to ``--notify URL`` in format ``fmt`` (see the module docstring)."""
    if fmt == "ntfy":
        return _ntfy(finding, verdict, source, held)
    build = {"json": webhook_payload, "slack": _slack, "discord": _discord, "teams": _teams}[fmt]
    body = json.dumps(build(finding, verdict, source, held)).encode("utf-8")
    return body, {"Content-Type": "application/json"}


def where(url: str) -> str:
    """The URL as it may be shown: scheme and host only (a webhook's path is its secret token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}/..." if parts.scheme else "(not a URL)"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse every redirect: urllib then raises the 3xx as an HTTPError (a failed delivery)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _opener() -> urllib.request.OpenerDirector:
    # Certificates and host names are checked against the system's trust store (the default context
    # does both); an explicit context so no environment or global default can turn that off.
    ctx = ssl.create_default_context()
    return urllib.request.build_opener(
        _NoRedirect(), urllib.request.HTTPSHandler(context=ctx), urllib.request.ProxyHandler()
    )


def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout: float = WEBHOOK_TIMEOUT_S,
    attempts: int = WEBHOOK_ATTEMPTS,
    backoff: tuple[float, ...] = BACKOFF_S,
    cancel: threading.Event | None = None,
) -> str | None:
    """POST ``body``, retrying on network errors and 5xx/429; None on success, else why not.

    A redirect is not followed and not retried; an HTTPS certificate that does not verify is a
    failure like any other network error.
    """
    opener = _opener()
    error = "not attempted"
    for i in range(attempts):
        if cancel is not None and cancel.is_set():
            return f"cancelled after {i} attempt(s): {error}"
        req = urllib.request.Request(
            url, data=body, method="POST", headers={**headers, "User-Agent": "muvo-doctor"}
        )
        try:
            # The answer's body is never read: a slow or endless one cannot hold the delivery.
            with opener.open(req, timeout=timeout):
                pass
            return None
        except urllib.error.HTTPError as exc:
            error = f"HTTP {exc.code} {exc.reason}"
            if 300 <= exc.code < 400:
                moved = urlsplit(exc.headers.get("Location", "") if exc.headers else "").hostname
                to = f" to {moved}" if moved else ""
                return f"{error}: the webhook redirects{to}; redirects are not followed, update the URL"
            if exc.code < 500 and exc.code != 429:
                return error  # a client error does not get better by retrying
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            error = str(reason)
            if isinstance(exc, ValueError):
                return f"bad URL: {error}"
            if isinstance(reason, ssl.SSLCertVerificationError):
                return f"HTTPS certificate not trusted ({reason.verify_message})"
        if i + 1 < attempts:
            delay = backoff[min(i, len(backoff) - 1)] if backoff else 0.0
            if cancel is not None:
                if cancel.wait(delay):
                    return f"cancelled after {i + 1} attempt(s): {error}"
            else:
                time.sleep(delay)
    return f"{error} (after {attempts} attempts)"


class Alerts:
    """Fires once per confirmed change into or out of "dead": banner and bell, then webhook and command in the background.

    Args:
        source: the wrapped command line, named in every message.
        notify_url: ``--notify`` URL, or None.
        notify_cmd: ``--notify-cmd`` shell command, or None.
        notify_format: ``--notify-format`` (json, slack, discord, teams, ntfy), or None to infer it.
        banner: writes the banner (the live view, or stderr); gets the full text incl. the bell.
        stream: where delivery failures are reported (stderr).
    """

    def __init__(
        self,
        *,
        source: str,
        notify_url: str | None = None,
        notify_cmd: str | None = None,
        notify_format: str | None = None,
        banner: Callable[[str], None] | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.source = source
        self.notify_url = notify_url
        self.notify_cmd = notify_cmd
        self.notify_format = notify_format  # None: inferred from notify_url's host
        if notify_format is not None and notify_format not in FORMATS:
            raise ValueError(f"notify_format must be one of {', '.join(FORMATS)}, got {notify_format!r}")
        self.stream = stream
        self.banner = banner or self._stderr_banner
        self.fired: Finding | None = None  # the headline of the last dead alert
        self.alerted: str | None = None  # the verdict last alerted ("dead", or what it recovered to)
        self.sent: list[str] = []  # every alert text, in order
        self.errors: list[str] = []
        self._threads: list[threading.Thread] = []
        self._cancel = threading.Event()

    def _err(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stderr

    def _stderr_banner(self, text: str) -> None:
        out = self._err()
        out.write(text)
        out.flush()

    def _report(self, msg: str) -> None:
        self.errors.append(msg)
        try:
            self._err().write(f"muvo-doctor: {msg}\n")
            self._err().flush()
        except Exception:
            pass

    def update(
        self,
        verdict: str,
        headline: Finding | None,
        *,
        confirmed: bool,
        held: str = "",
        final: bool = False,
    ) -> bool:
        """Call after each evaluation; returns True when this call fired an alert.

        Args:
            verdict: the current verdict.
            headline: the finding the report leads with (the most causal one that holds).
            confirmed: the verdict has held for its confirmation window.
            held: how long it held, for the text ("dead for 520 steps (since step 60)").
            final: the run is over: nothing can resolve any more, so the verdict counts as confirmed.
        """
        if not (confirmed or final):
            return False
        if verdict == "dead" and self.alerted != "dead":
            self.alerted = "dead"
            self.fired = headline
            self._fire(headline, verdict, held, bell=True)
            return True
        if verdict != "dead" and self.alerted == "dead":
            self.alerted = verdict
            self._fire(None, verdict, held or "recovered", bell=False)
            return True
        return False

    def _fire(self, finding: Finding | None, verdict: str, held: str, *, bell: bool) -> None:
        text = alert_message(finding, verdict, self.source, held)
        self.sent.append(text)
        rule = "!" * min(max(len(text), 20), 100)
        advice = f"advice: {finding.advice}\n" if finding is not None else ""
        try:
            self.banner(f"{chr(7) if bell else ''}\n{rule}\n{text}\n{advice}{rule}\n")
        except Exception as exc:
            self._report(f"could not show the alert banner ({exc!r})")
        if self.notify_url:
            fmt = (
                cast(NotifyFormat, self.notify_format)
                if self.notify_format
                else infer_format(self.notify_url)
            )
            body, headers = webhook_request(fmt, finding, verdict, self.source, held)
            self._start(self._deliver_webhook, self.notify_url, body, headers)
        if self.notify_cmd:
            check = finding.check if finding is not None else ""
            self._start(self._run_command, self.notify_cmd, text, check, verdict)

    def _start(self, fn: Callable[..., None], *args: Any) -> None:
        # One delivery after the other, in the order they fired: a recovery never overtakes its dead alert.
        prev = self._threads[-1] if self._threads else None

        def deliver() -> None:
            if prev is not None:
                prev.join()
            fn(*args)

        t = threading.Thread(target=deliver, name="muvo-doctor-alert", daemon=True)
        t.start()
        self._threads.append(t)

    def _deliver_webhook(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        why = post(url, body, headers, cancel=self._cancel)
        if why is not None:
            self._report(f"--notify {where(url)}: alert not delivered: {why}")

    def _run_command(self, cmd: str, text: str, check: str, verdict: str) -> None:
        env = dict(os.environ)
        env.update(MUVO_DOCTOR_MESSAGE=text, MUVO_DOCTOR_CHECK=check, MUVO_DOCTOR_VERDICT=verdict)
        try:
            # Its output goes to our stderr, never into the training's stdout stream.
            p = subprocess.run(
                cmd,
                shell=True,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=sys.stderr.fileno() if _has_fileno(sys.stderr) else subprocess.DEVNULL,
                timeout=COMMAND_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            self._report(f"--notify-cmd did not finish within {COMMAND_TIMEOUT_S:.0f} s; left it")
            return
        except OSError as exc:
            self._report(f"--notify-cmd could not start: {exc}")
            return
        if p.returncode != 0:
            self._report(f"--notify-cmd exited with {p.returncode}")

    def close(self, timeout: float = 2.0) -> None:
        """At the end of the run: give pending deliveries up to ``timeout`` seconds, then stop retrying."""
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self._threads):
            self._cancel.set()
            self._report(f"an alert was still being delivered after {timeout:.0f} s at exit; gave up on it")


def _has_fileno(stream: Any) -> bool:
    try:
        stream.fileno()
        return True
    except Exception:
        return False

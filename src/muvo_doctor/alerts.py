"""Alerts for `muvo-doctor run`: a banner and bell, a webhook, a command; sent once per confirmed verdict change.

They fire when the run turns dead and that verdict has held for its confirmation window (see
``doctor.confirm_window``), or when the run ends dead; and once more if a confirmed dead run
recovers and that holds for the window too. A dead verdict whose findings resolve within the
window never alerts. Warnings do not alert.

Delivery never blocks or fails the training: webhooks and commands run on a daemon thread
with a timeout and bounded retries, and every failure is reported once on stderr.

Webhook body (JSON, POST): ``text`` (Slack, Mattermost, Teams), ``content`` (Discord, at most
2000 characters), ``verdict``, ``finding`` (the finding record of docs/contract.md) and ``source``.
The command gets the message in ``MUVO_DOCTOR_MESSAGE``, the check id in ``MUVO_DOCTOR_CHECK``
and the verdict in ``MUVO_DOCTOR_VERDICT``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, TextIO

from muvo_doctor.finding import Finding

WEBHOOK_TIMEOUT_S = 5.0
WEBHOOK_ATTEMPTS = 4  # the first try and 3 retries
BACKOFF_S = (0.5, 1.0, 2.0)
COMMAND_TIMEOUT_S = 30.0
DISCORD_LIMIT = 2000


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


def post_json(
    url: str,
    payload: dict[str, Any],
    *,
    timeout: float = WEBHOOK_TIMEOUT_S,
    attempts: int = WEBHOOK_ATTEMPTS,
    backoff: tuple[float, ...] = BACKOFF_S,
    cancel: threading.Event | None = None,
) -> str | None:
    """POST ``payload`` as JSON, retrying on network errors and 5xx/429; None on success, else why not."""
    body = json.dumps(payload).encode("utf-8")
    error = "not attempted"
    for i in range(attempts):
        if cancel is not None and cancel.is_set():
            return f"cancelled after {i} attempt(s): {error}"
        req = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "muvo-doctor"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                resp.read(65536)
            return None
        except urllib.error.HTTPError as exc:
            error = f"HTTP {exc.code} {exc.reason}"
            if exc.code < 500 and exc.code != 429:
                return error  # a client error does not get better by retrying
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            error = str(reason)
            if isinstance(exc, ValueError):
                return f"bad URL: {error}"
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
            payload = webhook_payload(finding, verdict, self.source, held)
            self._start(self._deliver_webhook, self.notify_url, payload)
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

    def _deliver_webhook(self, url: str, payload: dict[str, Any]) -> None:
        why = post_json(url, payload, cancel=self._cancel)
        if why is not None:
            self._report(f"--notify {url}: alert not delivered: {why}")

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

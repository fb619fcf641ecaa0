"""The session with the Doctor: printed numbers and telemetry in; findings to the view, alerts, --stop-on."""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from muvo_doctor.run.redact import redact_text

if TYPE_CHECKING:
    from muvo_doctor.core.finding import Finding, HelperProcess
    from muvo_doctor.core.observation import Observation

# The signals the recorder measures itself.
RECORDER_SIGNALS = frozenset({"train/loss", "train/acc", "optim/lr", "grad/norm/total"})


class Session:
    """The part of the Runner that feeds the Doctor and acts on what it finds."""

    def _setup(self) -> None:
        from muvo_doctor.core.config import DoctorConfig
        from muvo_doctor.core.doctor import Doctor
        from muvo_doctor.face.dashboard import PlainView, make_view
        from muvo_doctor.run.alerts import Alerts
        from muvo_doctor.run.stream import LineReader

        self.reader = LineReader()
        self.doctor = Doctor(self.opts.config or DoctorConfig(), source=self.source)
        self.doctor.on_evaluated.append(self._on_evaluated)
        self.view = make_view(self.doctor, title=self.source, plain=self.opts.plain)
        self.alerts = Alerts(
            source=self.source,
            notify_url=self.opts.notify_url,
            notify_cmd=self.opts.notify_cmd,
            notify_format=self.opts.notify_format,
            # The confirmed alert's banner and bell: above the live dashboard, or on stderr in plain mode.
            banner=self._banner if isinstance(self.view, PlainView) else self.view.alert_banner,
        )
        self._open_record()

    def _parse_lines(self, lines: list[str]) -> None:
        """The child's output lines through the one text reader (``logs.text.TextParser``, as
        ``audit`` reads files): the same lines give the same series, steps, splits and digits."""
        from muvo_doctor.core.observation import Observation
        from muvo_doctor.logs.text import TextParser

        parser = getattr(self, "_text_parser", None)  # made on the first output, lives with the run
        if parser is None:
            parser = self._text_parser = TextParser(keep_rewrites=True)  # each \r rewrite is a line here
        got = parser.lines(lines)
        self.printed_lines = parser.st.records
        for name, key, step, value, digits, own in zip(
            got.names, got.keys, got.steps, got.values, got.digits, got.own_step, strict=True
        ):
            if own:
                self.printed_step = step
            if self.instrumented:
                # Telemetry arrives in batches (heartbeats at most 20 a second), so a fast loop's lines
                # can run ahead of it: a step number printed on the line itself is the better clock.
                step = max(self.telemetry_step, step) if own else self.telemetry_step
            step = max(step, 0)
            self._observe(Observation(name=f"printed/{key}", step=step, value=value, digits=digits))
            # Without tensors (not Python, or no torch) the printed numbers are the evidence,
            # judged like a log. With tensors, the printed numbers still bring what the
            # recorder cannot see (validation metrics); its own signals come from the tensors.
            if not self.instrumented or name not in RECORDER_SIGNALS:
                self._observe(Observation(name=name, step=step, value=value, digits=digits))

    def _read_fifo(self) -> None:
        from muvo_doctor.core.observation import Observation
        from muvo_doctor.run.stream import Hello, Notice, StepBeat

        while True:
            try:
                data = os.read(self.fifo_r, 1 << 16)
            except BlockingIOError:
                return
            except OSError as exc:
                self.say_once(
                    "fifo", f"telemetry channel failed ({exc.strerror}); watching printed output only"
                )
                return
            if not data:
                return
            for msg in self.reader.feed(data):
                if isinstance(msg, Observation):
                    self._observe(msg, telemetry=True)
                    if not msg.rank and msg.step > self.telemetry_step:
                        self.telemetry_step = msg.step
                elif isinstance(msg, StepBeat):
                    if msg.pid is not None:
                        self._helper_trains(msg.pid)
                    elif not msg.rank and msg.step > self.telemetry_step:
                        self.telemetry_step = msg.step
                elif isinstance(msg, Hello):
                    if msg.role == "helper":
                        if msg.command is not None or msg.pid not in self.helpers:
                            self.helpers[msg.pid] = msg.command
                        continue
                    self.helpers.pop(msg.pid, None)  # a spawn worker that became a rank
                    if msg.rank is not None:
                        self.ranks.add(msg.rank)
                    if msg.stage == "torch":
                        self.instrumented = True
                elif isinstance(msg, Notice):
                    self.say_once(f"notice:{msg.message}", f"rank {msg.rank}: {msg.message}")
            if self.reader.errors:
                self.say_once("stream", f"skipped bad telemetry lines ({self.reader.first_error})")

    def _helper_trains(self, pid: int) -> None:
        if pid not in self.training_helpers:
            self.training_helpers.append(pid)
        shown = self._helper_command(pid) or "a helper process"
        self.say_once(
            f"helper:{pid}",
            f"process {pid} ({shown}) steps an optimizer of its own; it is not a rank of this run, "
            "so its numbers are not part of this verdict",
        )

    def _helper_command(self, pid: int) -> str | None:
        command = self.helpers.get(pid)
        return (redact_text(command) if self.opts.redact else command) if command else None

    def _helper_processes(self) -> list[HelperProcess]:
        """The helpers that trained, for the report: named there as on stderr, never judged."""
        from muvo_doctor.core.finding import HelperProcess

        return [HelperProcess(pid=pid, command=self._helper_command(pid)) for pid in self.training_helpers]

    def _observe(self, obs: Observation, telemetry: bool = False) -> None:
        from muvo_doctor.run.stream import encode_observation

        # The step clock: rank 0's telemetry once it reports steps (printed lines can run ahead of it), the
        # printed numbers otherwise: not Python, no torch, or torch imported but no optimizer step seen
        # (a script that uses torch for data only would otherwise wait for the end to be judged).
        clock = (telemetry and not obs.rank) or not self.instrumented or self.telemetry_step < 0
        self.doctor.observe(obs, clock=clock)
        self._dirty = True
        if self.record is not None:
            self._record_line(encode_observation(obs.name, obs.step, obs.value, obs.digits, obs.rank))

    def _stop_dead(self, f: Finding | None, held: str) -> None:
        if self._stop_state is not None:
            return
        self.stopped_dead = f
        self._stop_state = "int"
        self._stop_deadline = time.monotonic() + self.opts.grace_s
        why = f"{f.check}, " if f is not None else ""
        self.say_once(
            "stop", f"--stop-on dead: the run is dead ({why}{held}); sent SIGINT so it can save and stop"
        )
        self._signal_child(signal.SIGINT)

    def _on_evaluated(self, doctor: Any, changed: list[Finding], final: bool = False) -> None:
        """After each evaluation (a grid step, or the end): the view, then alerts and --stop-on dead,
        which act on a dead verdict only once it has held for its confirmation window."""
        from muvo_doctor.core.doctor import confirm_window

        for f in changed:
            self._speak(lambda f=f: self.view.finding(f))
        verdict, since, step = doctor.verdict, doctor.verdict_since, doctor.step or 0
        held_steps = step - since if since is not None else 0
        confirmed = since is not None and held_steps >= confirm_window(since, doctor.config)
        held = f"{verdict} for {held_steps} steps (since step {since})" if since is not None else ""
        if final and held and not confirmed:
            held += ", when the run ended"
        if self.alerts is not None:
            self.alerts.update(verdict, doctor.headline, confirmed=confirmed, held=held, final=final)
        if self.opts.stop_on == "dead" and verdict == "dead" and confirmed and not final:
            self._stop_dead(doctor.headline, held)
        self._dirty = True

    def _banner(self, text: str) -> None:
        def write() -> None:
            sys.stderr.write(text)
            sys.stderr.flush()

        self._speak(write)

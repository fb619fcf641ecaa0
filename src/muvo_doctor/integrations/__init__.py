"""The doctor inside a framework's own training loop: Lightning and Hugging Face callbacks.

    from muvo_doctor.integrations.lightning import DoctorCallback   # pip install 'muvo-doctor[lightning]'
    trainer = lightning.Trainer(callbacks=[DoctorCallback(stop_on="dead")])

    from muvo_doctor.integrations.hf import DoctorCallback          # pip install 'muvo-doctor[hf]'
    trainer = transformers.Trainer(..., callbacks=[DoctorCallback(stop_on="dead")])

Both do what ``muvo_doctor.watch`` does, fed by the framework instead of by hand: a
:class:`~muvo_doctor.recorder.Recorder` on the framework's model and optimizer records the training
loss, the model outputs and the labels of every step (device tensors, no host sync), and the
metrics the framework has already brought to the host (what it logs) join them. This module holds
what the two share (:class:`Session`); each framework module only adapts its hooks.

What the framework's loggers get (TensorBoard, CSV, W&B, MLflow, ... whatever the trainer has):

- ``doctor/verdict``, a scalar: 0 healthy, 1 inconclusive, 2 warning, 3 dead (higher is worse), at
  each log after the doctor's verdict or findings changed;
- ``doctor/finding/<check>``, a scalar: 1 info, 2 warning, 3 critical, 0 once resolved;
- ``doctor/<check>``, the finding as text (severity, step, message, what to do), where the logger
  takes text.

``stop_on="dead"`` stops the run through the framework (``trainer.should_stop``,
``control.should_training_stop``) once the dead verdict has held for its confirmation window
(``confirm_dead_steps``, ``confirm_dead_fraction``: the same rule as ``muvo-doctor run --stop-on
dead``), so the framework ends the run its own way and saves its checkpoint. The report is printed
at the end of training.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, TextIO

import torch

from muvo_doctor.core.config import DoctorConfig
from muvo_doctor.core.doctor import Doctor, confirmed_dead
from muvo_doctor.core.finding import Finding, Report
from muvo_doctor.core.names import classify
from muvo_doctor.core.observation import Observation
from muvo_doctor.recorder import Recorder

StopOn = Literal["dead"]
VERDICT_CODE = {"healthy": 0, "inconclusive": 1, "warning": 2, "dead": 3}
SEVERITY_CODE = {"info": 1, "warning": 2, "critical": 3}
# Label keys looked up in a batch that is a dict (Hugging Face style, and common in Lightning).
LABEL_KEYS = ("labels", "label", "targets", "target", "y")
# Series the recorder measures itself: a framework's value under the same name means something else
# (the Trainer's grad_norm is taken before clipping, the recorder's after), so it is not mixed in.
RECORDED = (
    "train/loss",
    "grad/",
    "update/",
    "param/",
    "optim/",
    "nonfinite/",
    "output/",
    "label/",
    "loss_input/",
)


def finding_text(f: Finding) -> str:
    """One finding as the text a logger shows: severity, check, step, message, what to do."""
    if f.resolved_step is not None:
        return f"RESOLVED at step {f.resolved_step} (was {f.severity} from step {f.step}): {f.message}"
    step = f" at step {f.step}" if f.step is not None else ""
    return f"{f.severity.upper()}{step}: {f.message} What to do: {f.advice}"


def unwrap_optimizer(opt: Any) -> torch.optim.Optimizer | None:
    """The torch optimizer inside a framework's wrapper (Accelerate's, Lightning's), whose step hooks fire."""
    for _ in range(4):
        inner = getattr(opt, "optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer):
            inner = getattr(opt, "_optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer):
            break
        opt = inner
    return opt if isinstance(opt, torch.optim.Optimizer) else None


def labels_of(batch: Any) -> torch.Tensor | None:
    """The labels of a batch when they can be told without guessing wrong: a dict's ``labels`` (or
    ``label``, ``targets``, ``target``, ``y``), or the last item of a tuple/list batch when it is a
    1-D integer or bool tensor (class ids; a float last item may be a regression target, so it is not
    taken). None otherwise: the doctor then judges without a label prior."""
    if isinstance(batch, Mapping):
        for key in LABEL_KEYS:
            y = batch.get(key)
            if isinstance(y, torch.Tensor):
                return y
        return None
    if isinstance(batch, list | tuple) and len(batch) >= 2:
        y = batch[-1]
        if isinstance(y, torch.Tensor) and y.dim() == 1 and not y.is_floating_point():
            return y
    return None


class Session:
    """What both callbacks share: the Recorder and Doctor, the updates to log, the stop decision, the report.

    Args:
        stop_on: ``"dead"`` to stop the run once dead and confirmed; None to only watch.
        config: thresholds and cadence (``DoctorConfig``); the defaults of ``muvo-doctor run``.
        source: what the report names as watched (e.g. ``lightning: MyModule``).
        print_report: print the report at the end of training.
        stream: where the report goes (stdout by default).
    """

    def __init__(
        self,
        *,
        stop_on: StopOn | None,
        config: DoctorConfig | None,
        source: str,
        print_report: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        if stop_on not in (None, "dead"):
            raise ValueError(f"stop_on must be 'dead' or None, got {stop_on!r}")
        self.stop_on = stop_on
        self.config = config or DoctorConfig()
        self.doctor = Doctor(self.config, source=source)
        self.recorder: Recorder | None = None
        self.print_report = print_report
        self.stream = stream
        self.stopped: str | None = None  # why stop_on stopped the run
        self.report: Report | None = None  # set by finish()
        self._changed: dict[str, Finding] = {}  # findings changed since the last log
        self._logged_verdict: str | None = None
        self.doctor.on_finding.append(self._on_finding)

    def _on_finding(self, f: Finding) -> None:
        self._changed[f.check] = f

    @property
    def started(self) -> bool:
        return self.recorder is not None

    def attach(self, model: torch.nn.Module, optimizer: Any) -> None:
        """Hook the recorder on the model and the (unwrapped) optimizer; once."""
        if self.recorder is None:
            self.recorder = Recorder(model, unwrap_optimizer(optimizer), doctor=self.doctor)

    def metrics(self, step: int, values: Mapping[str, Any]) -> None:
        """Metrics the framework logged at ``step``: host numbers only (a tensor would cost a sync).

        Keys are named the way ``audit`` names them (``eval_loss`` -> ``val/loss``, ``train_acc`` ->
        ``train/acc``); series the recorder measures itself (the training loss of every step, gradient
        norms, the learning rate, ...) are skipped.
        """
        for key, v in values.items():
            if isinstance(v, bool) or not isinstance(v, int | float):
                continue
            name, _, is_step = classify(str(key))  # our own doctor/* keys classify as no signal
            if name is None or is_step or name.startswith(RECORDED):
                continue
            # Held until the doctor's grid passes `step`: the recorder's flushes may lag behind the logger.
            self.doctor.observe(Observation(name=name, step=step, value=float(v)), clock=False)

    def updates(self) -> tuple[dict[str, float], dict[str, str]]:
        """The scalars and texts to log now: empty when nothing changed since the last call."""
        changed, self._changed = self._changed, {}
        if self.doctor.evaluations == 0:
            return {}, {}
        verdict = self.doctor.verdict
        if not changed and verdict == self._logged_verdict:
            return {}, {}
        self._logged_verdict = verdict
        scalars: dict[str, float] = {"doctor/verdict": float(VERDICT_CODE[verdict])}
        texts: dict[str, str] = {}
        for check, f in changed.items():
            held = f.resolved_step is None
            scalars[f"doctor/finding/{check}"] = float(SEVERITY_CODE[f.severity] if held else 0)
            texts[f"doctor/{check}"] = finding_text(f)
        return scalars, texts

    def should_stop(self) -> str | None:
        """The sentence to say when ``stop_on`` asks to stop now (once); None otherwise."""
        if self.stop_on != "dead" or self.stopped is not None:
            return None
        d = self.doctor
        confirmed, held = confirmed_dead(d.verdict, d.verdict_since, d.step or 0, self.config)
        if not confirmed:
            return None
        head = d.headline
        why = f"{head.check}, " if head is not None else ""
        self.stopped = f"muvo-doctor: stop_on='dead': the run is dead ({why}{held}); stopping the training"
        return self.stopped

    def finish(self) -> Report:
        """Flush, run the final evaluation and remove the hooks; the report. Safe to call twice."""
        if self.report is None:
            if self.recorder is not None:
                self.recorder.close()
            self.report = self.doctor.report()
        return self.report

    def show(self) -> None:
        """Print the report (colour only on a terminal; never wrapped when not one)."""
        if not self.print_report or self.report is None:
            return
        from muvo_doctor.face.report import render_report
        from muvo_doctor.face.style import use_color

        out = self.stream or sys.stdout
        color = use_color(out)
        width = min(shutil.get_terminal_size((100, 24)).columns, 120) if color else 100
        out.write(render_report(self.report, self.doctor.history, color=color, width=width))
        out.flush()


class Watching:
    """The callbacks' common face: their keyword arguments, and what they show after training (their report
    and their Doctor). Both callbacks inherit it first, so this ``__init__`` is theirs."""

    source: ClassVar[str]  # the framework, as the report names it until the model is known

    def __init__(
        self,
        *,
        stop_on: StopOn | None = None,
        config: DoctorConfig | None = None,
        print_report: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        super().__init__()
        self.session = Session(
            stop_on=stop_on, config=config, source=self.source, print_report=print_report, stream=stream
        )

    @property
    def doctor(self) -> Doctor:
        return self.session.doctor

    @property
    def report(self) -> Report | None:
        """The report of docs/contract.md, once training ended (None before)."""
        return self.session.report


__all__ = ["Session", "Watching", "finding_text", "labels_of", "unwrap_optimizer"]

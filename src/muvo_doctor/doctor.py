"""The Doctor: observations in, de-duplicated findings and a verdict out."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType

from muvo_doctor.checks import ALL_CHECKS
from muvo_doctor.config import DoctorConfig
from muvo_doctor.finding import SEVERITY_RANK, Finding, Report, verdict_of
from muvo_doctor.history import History
from muvo_doctor.observation import Observation


class Doctor:
    """Feeds observations into a bounded history and runs the checks over it.

    One finding per check id is kept: the first step it held, the worst severity it reached,
    and the latest message and evidence. Checks that set ``RETRACTABLE = True`` judge the whole
    run so far (a trend, or a severity that depends on whether the run learns): for them the
    latest evaluation rules, so a loss that sat at ln 2 for 250 steps and then learned is not
    "dead" at the end; when such a check stops holding, its finding stays as info saying it no
    longer holds. ``on_finding`` callbacks get each new or escalated finding (alerts, the
    dashboard). A check that crashes is reported once on stderr and skipped afterwards: the
    doctor fails open.
    """

    def __init__(
        self,
        config: DoctorConfig | None = None,
        checks: Sequence[ModuleType] | None = None,
        source: str = "",
    ) -> None:
        self.config = config or DoctorConfig()
        self.checks = tuple(ALL_CHECKS if checks is None else checks)
        self.source = source
        self.history = History(self.config.history_points)
        self._findings: dict[str, Finding] = {}
        self._broken: set[str] = set()
        self._worst: dict[str, str] = {}  # worst severity each check ever reached (retracted ones say it)
        self.on_finding: list[Callable[[Finding], None]] = []

    def observe(self, obs: Observation) -> None:
        self.history.add(obs)

    def observe_many(self, observations: Iterable[Observation]) -> None:
        self.history.extend(observations)

    def evaluate(self) -> list[Finding]:
        """Run every check over the history; return the findings that are new or escalated."""
        changed: list[Finding] = []
        for mod in self.checks:
            if mod.ID in self._broken:
                continue
            try:
                found: list[Finding] = mod.check(self.history, self.config)
            except Exception as exc:  # fail open: a doctor bug must not stop the training
                self._broken.add(mod.ID)
                print(f"muvo-doctor: check {mod.ID} failed and is disabled: {exc!r}", file=sys.stderr)
                continue
            retractable = bool(getattr(mod, "RETRACTABLE", False))
            for f in found:
                if self._merge(f, retractable):
                    changed.append(self._findings[f.check])
            if retractable and not any(f.check == mod.ID for f in found):
                self._retract(mod.ID)
        for f in changed:
            for cb in self.on_finding:
                try:
                    cb(f)
                except Exception as exc:  # a broken alert sink must not stop the doctor
                    print(f"muvo-doctor: finding callback failed: {exc!r}", file=sys.stderr)
        return changed

    def _merge(self, f: Finding, retractable: bool = False) -> bool:
        worst = self._worst.get(f.check, "info")
        if SEVERITY_RANK[f.severity] >= SEVERITY_RANK[worst]:
            self._worst[f.check] = f.severity
        old = self._findings.get(f.check)
        if old is None:
            self._findings[f.check] = f
            return True
        escalated = SEVERITY_RANK[f.severity] > SEVERITY_RANK[old.severity]
        severity = f.severity if escalated or retractable else old.severity
        step = old.step if old.step is not None else f.step
        self._findings[f.check] = f.model_copy(update={"severity": severity, "step": step})
        return escalated

    def _retract(self, check: str) -> None:
        """A retractable check no longer holds: keep what it said, as info."""
        old = self._findings.get(check)
        if old is None or old.evidence.get("no_longer_holds") is True:
            return
        was = self._worst.get(check, old.severity)
        self._findings[check] = old.model_copy(
            update={
                "severity": "info",
                "message": f"No longer holds (was {was} from step {old.step}): {old.message}",
                "evidence": {**old.evidence, "no_longer_holds": True, "was": was},
            }
        )

    @property
    def findings(self) -> list[Finding]:
        return list(self._findings.values())

    @property
    def verdict(self) -> str:
        return verdict_of(self._findings.values())

    def report(self, source: str | None = None, steps: int | None = None) -> Report:
        fs = sorted(self._findings.values(), key=lambda f: (-SEVERITY_RANK[f.severity], f.step or 0))
        return Report(
            source=self.source if source is None else source,
            verdict=verdict_of(fs),
            steps=max(self.history.last_step + 1, 0) if steps is None else steps,
            findings=fs,
        )

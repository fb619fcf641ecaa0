"""Findings, verdicts and the JSON report of docs/contract.md."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Severity = Literal["info", "warning", "critical"]
Verdict = Literal["healthy", "warning", "dead", "inconclusive"]
EvidenceValue = float | int | str | bool | None | list[float] | list[int] | list[str]

SCHEMA = "muvo-doctor/report/v1"
SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "critical": 2}
# Evidence keys that hold the loss of predicting the label prior (checks/prior_baseline.py): the chart
# draws its line there, and a loss resting on it is no evidence of learning.
BASELINE_KEYS = ("baseline_loss", "prior_entropy")


class Finding(BaseModel):
    """What a check concluded, with the numbers behind it and what to do."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    check: str
    severity: Severity
    step: int | None
    message: str
    evidence: dict[str, EvidenceValue] = Field(default_factory=dict)
    advice: str
    # The step from which the evidence no longer held (the Doctor's evaluation there did not return
    # it); None while it holds. A resolved finding keeps the severity it had, for the record.
    resolved_step: int | None = None

    @property
    def holds(self) -> bool:
        return self.resolved_step is None


class SkippedRecords(BaseModel):
    """Records a log reader skipped as impossible (a step of 1e30, a 400-digit number): how many, and why the first."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    count: int
    first_reason: str


class HelperProcess(BaseModel):
    """A process of a wrapped command that stepped an optimizer of its own but is not a rank of the
    run (docs/run.md, Which processes are watched): named, its numbers not part of the verdict."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pid: int
    command: str | None  # its command line, secrets masked unless --no-redact; None when it never said


class Report(BaseModel):
    """The final report: ``schema: muvo-doctor/report/v1``."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_: Literal["muvo-doctor/report/v1"] = Field(default=SCHEMA, alias="schema")
    source: str
    verdict: Verdict
    steps: int
    evidence_for_health: str | None = None  # what shows learning; None when nothing does (yet)
    skipped_records: SkippedRecords | None = None  # audit: bad records skipped by the reader
    findings: list[Finding]
    helper_processes: list[HelperProcess] = Field(default_factory=list)  # run: they trained, not judged

    def to_json(self, indent: int | None = 2) -> str:
        return self.model_dump_json(by_alias=True, indent=indent)


def verdict_of(findings: Iterable[Finding], evidence_for_health: str | None = None) -> Verdict:
    """Fold the findings that still hold into a verdict (docs/contract.md, Verdicts).

    Any critical is dead, any warning is warning; otherwise healthy only with positive evidence of
    learning, else inconclusive. Resolved findings do not count.
    """
    worst = max((SEVERITY_RANK[f.severity] for f in findings if f.resolved_step is None), default=0)
    if worst == 2:
        return "dead"
    if worst == 1:
        return "warning"
    return "healthy" if evidence_for_health else "inconclusive"

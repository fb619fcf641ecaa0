"""Findings, verdicts and the JSON report of CONTRACT.md."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Severity = Literal["info", "warning", "critical"]
Verdict = Literal["healthy", "warning", "dead"]
EvidenceValue = float | int | str | bool | None | list[float] | list[int] | list[str]

SCHEMA = "muvo-doctor/report/v1"
SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "critical": 2}


class Finding(BaseModel):
    """What a check concluded, with the numbers behind it and what to do."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    check: str
    severity: Severity
    step: int | None
    message: str
    evidence: dict[str, EvidenceValue] = Field(default_factory=dict)
    advice: str


class Report(BaseModel):
    """The final report: ``schema: muvo-doctor/report/v1``."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_: Literal["muvo-doctor/report/v1"] = Field(default=SCHEMA, alias="schema")
    source: str
    verdict: Verdict
    steps: int
    findings: list[Finding]

    def to_json(self, indent: int | None = 2) -> str:
        return self.model_dump_json(by_alias=True, indent=indent)


def verdict_of(findings: Iterable[Finding]) -> Verdict:
    """Fold findings into a verdict: any critical is dead, any warning is warning."""
    worst = max((SEVERITY_RANK[f.severity] for f in findings), default=0)
    return "dead" if worst == 2 else "warning" if worst == 1 else "healthy"

"""`muvo-doctor explain [CHECK]`: print what a check does, why it matters and what to do."""

from __future__ import annotations

import argparse
import inspect
import sys

from muvo_doctor.core.checks import ALL_CHECKS, by_id

HELP = "explain a check: what it does, why it matters, what to do"

# Findings that the readers raise rather than a check over the history (audit only).
READER_FINDINGS = {
    "corrupt_log": """(audit) A log file is truncated or corrupt: judged only up to the break.

What it does:
    The readers verify what a format lets them verify (a TensorBoard record's length and data carry
    CRC-32C checksums); the first record that is cut off or fails its checksum ends the file. What came
    before is judged as usual; the finding names the file, the byte offset of the break, the records
    read and the bytes skipped. A file cut exactly between two records cannot be told from a shorter run.

Why it matters:
    The unread part may hold the run's end, where it died: a verdict of the part before the break
    alone could call a dead run healthy. So the verdict is at least a warning.

What to do:
    Copy the file again from the machine that wrote it (an interrupted copy or sync, or a full disk,
    cuts event files) and audit it again; a run still writing it ends in a partial record.""",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("check", nargs="?", help="a check id; without it, list every check")


def main(args: argparse.Namespace) -> int:
    checks = by_id()
    if args.check is None:
        for mod in ALL_CHECKS:
            first = (inspect.getdoc(mod) or "").splitlines()[0] if mod.__doc__ else ""
            print(f"{mod.ID:22s} {first}")
        for fid, doc in READER_FINDINGS.items():
            print(f"{fid:22s} {doc.splitlines()[0]}")
        return 0
    if args.check in READER_FINDINGS:
        print(f"{args.check}\n\n{READER_FINDINGS[args.check]}")
        return 0
    mod = checks.get(args.check)
    if mod is None:
        valid = ", ".join(sorted([*checks, *READER_FINDINGS]))
        print(f"muvo-doctor explain: unknown check '{args.check}'; valid ids: {valid}", file=sys.stderr)
        return 2
    doc = inspect.getdoc(mod) or ""
    print(f"{mod.ID}\n\n{doc}")
    used = thresholds_in(doc)
    if used:
        print("\nThresholds (defaults; override them in the [thresholds] table of a TOML config):")
        for name, value in used:
            print(f"    {name} = {value!r}")
    return 0


def thresholds_in(doc: str) -> list[tuple[str, object]]:
    """The ``Thresholds`` fields a check's docstring names (as ``name``), with their defaults."""
    from muvo_doctor.core.config import Thresholds

    defaults = Thresholds()
    names = [n for n in Thresholds.model_fields if f"``{n}``" in doc]
    return [(n, getattr(defaults, n)) for n in names]

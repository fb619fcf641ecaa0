"""`muvo-doctor explain [CHECK]`: print what a check does, why it matters and what to do."""

from __future__ import annotations

import argparse
import inspect
import sys

from muvo_doctor.checks import ALL_CHECKS, by_id

HELP = "explain a check: what it does, why it matters, what to do"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("check", nargs="?", help="a check id; without it, list every check")


def main(args: argparse.Namespace) -> int:
    checks = by_id()
    if args.check is None:
        for mod in ALL_CHECKS:
            first = (inspect.getdoc(mod) or "").splitlines()[0] if mod.__doc__ else ""
            print(f"{mod.ID:22s} {first}")
        return 0
    mod = checks.get(args.check)
    if mod is None:
        valid = ", ".join(sorted(checks))
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
    from muvo_doctor.config import Thresholds

    defaults = Thresholds()
    names = [n for n in Thresholds.model_fields if f"``{n}``" in doc]
    return [(n, getattr(defaults, n)) for n in names]

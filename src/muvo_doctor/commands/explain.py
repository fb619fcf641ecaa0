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
    print(f"{mod.ID}\n\n{inspect.getdoc(mod)}")
    return 0

"""`muvo-doctor audit` (not written yet)."""

from __future__ import annotations

import argparse
import sys

HELP = "audit (not available yet)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rest", nargs=argparse.REMAINDER)


def main(args: argparse.Namespace) -> int:
    print("muvo-doctor audit: not available in this build", file=sys.stderr)
    return 2

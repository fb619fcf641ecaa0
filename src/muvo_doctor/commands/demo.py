"""`muvo-doctor demo` (not written yet)."""

from __future__ import annotations

import argparse
import sys

HELP = "demo (not available yet)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rest", nargs=argparse.REMAINDER)


def main(args: argparse.Namespace) -> int:
    print("muvo-doctor demo: not available in this build", file=sys.stderr)
    return 2

"""How the face shows things: whether to colour, severity order and colours, verdict colours, and
the finding evidence that is a chart's horizontal baseline.

Colour follows rich's ``Console`` rules (``NO_COLOR``, ``FORCE_COLOR``, ``TTY_COMPATIBLE``,
``TERM=dumb``, a TTY or not) plus our ``--plain``, so the text report and the dashboard always agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TextIO

from rich.console import Console

from muvo_doctor.core.finding import BASELINE_KEYS, Finding

SEVERITY_ORDER = ("critical", "warning", "info")  # worst first, as summaries count them
SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
VERDICT_STYLE = {
    "dead": "bold white on red",
    "warning": "bold black on yellow",
    "healthy": "bold black on green",
    "inconclusive": "bold black on white",
}


def wants_plain(plain: bool, console: Console) -> bool:
    """Plain output when asked (``--plain``), when not a terminal, or NO_COLOR / TERM=dumb is set."""
    return bool(plain or not console.is_terminal or console.is_dumb_terminal or console.no_color)


def use_color(stream: TextIO, plain: bool = False) -> bool:
    """Colour for what is written to ``stream``: the opposite of :func:`wants_plain`."""
    return not wants_plain(plain, Console(file=stream))


def baseline_of(findings: Sequence[Finding]) -> tuple[Finding, str, float] | None:
    """The first finding whose evidence holds a prior's loss, with the key and the value."""
    for f in findings:
        for key in BASELINE_KEYS:
            v = f.evidence.get(key)
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                return f, key, float(v)
    return None

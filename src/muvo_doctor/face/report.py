"""The text view of a Report: a chart of the main series (with any baseline a finding computed),
the findings (the headline first; resolved ones last, dimmed, with the step they resolved at), the
evidence of learning, and a summary line coloured by the verdict.

``render_report`` returns a string, so commands, tests and snapshots all use the same code.
Whether to colour is decided in ``face/style.py`` (``use_color``), as for the dashboard.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from rich.text import Text

from muvo_doctor.core.doctor import order_findings
from muvo_doctor.core.finding import Finding, Report
from muvo_doctor.core.history import History
from muvo_doctor.face.style import SEVERITY_ORDER, SEVERITY_STYLE, VERDICT_STYLE, baseline_of

# Signals charted, in order of preference; the first present is the main one, its partner joins it.
_MAIN = ("train/loss", "val/loss", "train/acc", "val/acc", "val/auroc", "val/map")
_PARTNER = {"train/loss": "val/loss", "train/acc": "val/acc", "val/loss": "train/loss"}


def main_series(history: History) -> list[str]:
    """The series worth a chart: the main loss (or accuracy/metric) and its train/val partner."""
    names = set(history.names())
    main = next((n for n in _MAIN if n in names), None)
    if main is None:
        main = next((n for n in sorted(names) if "loss" in n), None)
    if main is None:
        return []
    partner = _PARTNER.get(main)
    return [main] + ([partner] if partner in names else [])


def _baseline(findings: Sequence[Finding]) -> tuple[float, str] | None:
    """A loss baseline from a finding's evidence (the prior's entropy), with its legend label."""
    got = baseline_of(findings)
    if got is None:
        return None
    f, key, v = got
    return v, f"{f.check}: {key} {f.evidence[key]:.4g}"


def chart_text(report: Report, history: History, *, width: int, color: bool) -> Text | None:
    """The chart of the main series, or None when there is nothing to draw or no chart module."""
    names = main_series(history)
    if not names:
        return None
    try:
        from muvo_doctor.face.chart import line_chart
    except ImportError:  # the chart module is optional for the report
        return None
    series = {}
    for n in names:
        s = history.series(n)
        if s is not None:
            series[n] = (s.steps.tolist(), s.values.tolist())
    base = _baseline(report.findings) if "loss" in names[0] else None
    return line_chart(
        series,
        title=", ".join(names),
        baseline=base[0] if base else None,
        baseline_label=base[1] if base else "",
        width=width,
        height=15,
        color=color,
    )


def summary_line(report: Report) -> str:
    """``dead: 2 critical, 1 warning, 1 resolved in 30 steps`` (the words the colour repeats).

    Counts are of the findings that hold; an inconclusive verdict says why in a few words.
    """
    holding = [f for f in report.findings if f.resolved_step is None]
    counts = {s: sum(1 for f in holding if f.severity == s) for s in SEVERITY_ORDER}
    parts = [f"{n} {s}" for s, n in counts.items() if n]
    resolved = len(report.findings) - len(holding)
    if resolved:
        parts.append(f"{resolved} resolved")
    detail = ", ".join(parts) if parts else "no findings"
    verdict = report.verdict
    if verdict == "inconclusive":
        verdict = "inconclusive (too little to judge: no sign of learning yet)"
    return f"{verdict}: {detail} in {report.steps} steps ({report.source})"


def _evidence_text(f: Finding, limit: int = 6) -> str:
    items = []
    for k, v in list(f.evidence.items())[:limit]:
        if isinstance(v, float):
            items.append(f"{k}={v:.4g}")
        elif isinstance(v, list):
            items.append(f"{k}=[{len(v)} values]")
        else:
            items.append(f"{k}={v}")
    return " ".join(items)


def render_report(
    report: Report,
    history: History | None = None,
    *,
    color: bool = False,
    width: int = 100,
    chart: bool = True,
    header: str = "",
) -> str:
    """The report as text: header, chart, findings (worst first), then the coloured summary line.

    Args:
        report: what the Doctor concluded.
        history: the series behind it (for the chart); None skips the chart.
        color: ANSI colours (see ``use_color``); False gives plain text.
        width: columns.
        chart: draw the chart when possible.
        header: a first line (e.g. the file and its format).
    """
    from rich.console import Console

    buf = io.StringIO()
    console = Console(
        file=buf,
        width=width,
        force_terminal=color,
        no_color=not color,
        color_system="standard" if color else None,
        highlight=False,
        emoji=False,
        # Plain text (a pipe, a file, NO_COLOR) is never wrapped: a line cut at the width breaks grep.
        soft_wrap=not color,
    )
    if header:
        console.print(Text(header, style="bold"))
    if chart and history is not None:
        text = chart_text(report, history, width=width, color=color)
        if text:
            console.print(text)
    for f in order_findings(report.findings):
        line = Text()
        if f.resolved_step is not None:
            since = f" from step {f.step}" if f.step is not None else ""
            line.append(f"{'RESOLVED':8s} ", style="dim")
            line.append(f"{f.check}", style="bold dim")
            line.append(f" (was {f.severity}{since}, resolved at step {f.resolved_step})", style="dim")
            line.append(f": {f.message}", style="dim")
        else:
            line.append(f"{f.severity.upper():8s} ", style=SEVERITY_STYLE[f.severity])
            line.append(f"{f.check}", style="bold")
            line.append(f" (step {f.step})" if f.step is not None else "")
            line.append(f": {f.message}")
        console.print(line)
        if f.resolved_step is not None:
            continue  # no longer holds: what it said is enough, nothing to do now
        ev = _evidence_text(f)
        if ev:
            console.print(Text(f"         evidence: {ev}", style="dim"))
        console.print(Text(f"         what to do: {f.advice}", style="dim"))
    for h in report.helper_processes:
        named = f" ({h.command})" if h.command else ""
        console.print(
            Text(f"helper process {h.pid}{named} trained on its own; not part of this verdict", style="dim")
        )
    if report.evidence_for_health:
        console.print(Text(f"evidence of learning: {report.evidence_for_health}", style="green"))
    console.print(Text(summary_line(report), style=VERDICT_STYLE[report.verdict]))
    return buf.getvalue()

"""One frame of the dashboard: the header, the charts, the findings, laid out for a terminal size,
and the frame saved as a picture (``--snapshot``)."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import numpy as np
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from muvo_doctor.core.checks._common import label_prior
from muvo_doctor.core.doctor import Doctor, headline, order_findings
from muvo_doctor.core.finding import Finding
from muvo_doctor.face.chart import line_chart
from muvo_doctor.face.style import SEVERITY_STYLE, VERDICT_STYLE, baseline_of

SNAPSHOT_SUFFIXES = (".svg", ".html", ".htm")
NO_EVIDENCE = "no evidence yet"  # what the live header says while the verdict is inconclusive


class SnapshotError(ValueError):
    """A ``--snapshot`` path that cannot be written; the message names the fix."""


def check_snapshot_path(path: str | Path) -> Path:
    """Validate a ``--snapshot`` path before the run starts.

    Raises:
        SnapshotError: the extension is not .svg/.html, or the folder does not exist.
    """
    p = Path(path)
    if p.suffix.lower() not in SNAPSHOT_SUFFIXES:
        raise SnapshotError(
            f"--snapshot {p}: unsupported file type '{p.suffix or '(none)'}'; use a .svg or .html path"
        )
    if not p.parent.exists():
        raise SnapshotError(
            f"--snapshot {p}: folder {p.parent} does not exist; create it or pick another path"
        )
    return p


def prior_loss(doctor: Doctor) -> float | None:
    """The loss of predicting the label prior alone, or None when it is unknown.

    The number a ``prior_baseline`` finding compared the loss with, when there is one (the
    line then matches the finding's message); else the entropy of the labels seen so far
    (``label/positive_fraction`` or ``label/fraction/<k>``), as the checks compute it.
    """
    got = baseline_of(doctor.findings)
    if got is not None:
        return got[2]
    prior = label_prior(doctor.history)
    return None if prior is None else prior.entropy


def _series(doctor: Doctor, names: list[str], strip: str = "") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in names:
        s = doctor.history.series(name)
        if s is not None and len(s):
            out[name.removeprefix(strip) or name] = (s.steps, s.values)
    return out


def _grad_names(doctor: Doctor, limit: int = 4) -> list[str]:
    """grad/norm/total plus the modules with the largest and the smallest recent norms."""
    h = doctor.history
    modules = [n for n in h.names("grad/norm/") if n != "grad/norm/total" and "@rank" not in n]
    recent: list[tuple[float, str]] = []
    for n in modules:
        s = h.series(n)
        if s is not None and len(s):
            v = s.values[-20:]
            v = v[np.isfinite(v)]
            if len(v):
                recent.append((float(np.median(v)), n))
    recent.sort()
    if len(recent) > limit:
        half = limit // 2
        recent = recent[:half] + recent[-(limit - half) :]
    names = ["grad/norm/total"] if "grad/norm/total" in h else []
    return names + [n for _, n in reversed(recent)]


def _findings_table(findings: list[Finding], rows: int) -> RenderableType:
    if not findings:
        return Text("no findings yet", style="dim")
    fs = order_findings(findings)  # what holds first, cause before symptom, outcome before mechanism
    table = Table.grid(padding=(0, 1), expand=True)
    table.add_column(no_wrap=True)
    table.add_column(no_wrap=True)
    table.add_column(no_wrap=True, justify="right")
    table.add_column(ratio=1, overflow="ellipsis", no_wrap=True)
    for f in fs[:rows]:
        step = "" if f.step is None else f"step {f.step}"
        if f.resolved_step is not None:
            table.add_row(
                Text("RESOLVED", style="dim"),
                Text(f.check, style="dim"),
                Text(f"{step}-{f.resolved_step}", style="dim"),
                Text(f"(was {f.severity}) {f.message}", style="dim"),
            )
            continue
        style = SEVERITY_STYLE.get(f.severity, "")
        table.add_row(Text(f.severity.upper(), style=style), Text(f.check, style="bold"), step, f.message)
    if len(fs) > rows:
        table.add_row("", Text(f"+{len(fs) - rows} more", style="dim"), "", "")
    return table


def _header(doctor: Doctor, title: str, final: bool) -> Text:
    verdict = doctor.verdict
    evidence = getattr(doctor, "evidence", None)
    head = Text()
    head.append(" muvo-doctor ", style="bold reverse")
    head.append(f" {title}  ·  step {max(doctor.history.last_step, 0)}  ·  ")
    shown = NO_EVIDENCE if verdict == "inconclusive" and not final else verdict
    head.append(f" {shown.upper()} ", style=VERDICT_STYLE.get(verdict, "bold"))
    if evidence:
        head.append(f"  {evidence}", style="green")
    return head


def _dead_panel(findings: list[Finding], critical: list[Finding]) -> Panel:
    first = headline(findings) or critical[0]
    return Panel(
        Text(f"{first.check}: {first.message}", style="bold", no_wrap=True, overflow="ellipsis"),
        title="DEAD RUN",
        border_style="bold red",
        style="red",
    )


def _chart_panels(doctor: Doctor, width: int, height: int, color: bool) -> list[Panel]:
    """Loss (with the prior's line), gradient norms, output spread, label balance: in that order."""

    def panel(title: str, series: dict[str, tuple[np.ndarray, np.ndarray]], **kw: object) -> Panel:
        chart = line_chart(series, width=width, height=height, color=color, **kw)  # type: ignore[arg-type]
        return Panel(chart, title=title, title_align="left", padding=0, border_style="blue")

    base = prior_loss(doctor)
    labels = ["label/positive_fraction", *doctor.history.names("label/fraction/")[:6]]
    return [
        panel(
            "loss",
            _series(doctor, ["train/loss", "printed/loss", "val/loss"]),
            baseline=base,
            baseline_label=f"prior baseline H(p)={base:.3f}" if base is not None else "",
        ),
        panel(
            "gradient norm per module (log)",
            _series(doctor, _grad_names(doctor), strip="grad/norm/"),
            log_y=True,
        ),
        panel(
            "output spread and saturation",
            _series(doctor, ["output/std", "output/saturated"], strip="output/"),
        ),
        panel("label balance", _series(doctor, labels, strip="label/")),
    ]


def _findings_panel(findings: list[Finding], rows: int, critical: bool) -> Panel:
    holding = any(f.resolved_step is None for f in findings)
    return Panel(
        _findings_table(findings, rows),
        title=f"findings ({len(findings)})",
        title_align="left",
        border_style="red" if critical else "yellow" if holding else "green",
    )


def render_dashboard(
    doctor: Doctor,
    *,
    title: str,
    width: int,
    height: int,
    color: bool = True,
    final: bool = False,
) -> RenderableType:
    """The dashboard as one rich renderable, laid out for a ``width`` x ``height`` area.

    Reads only ``doctor.history``, ``doctor.findings``, ``doctor.verdict`` and ``doctor.evidence``.
    ``final``: the run is over, so an inconclusive verdict is named as such, not "no evidence yet".
    """
    width = max(width, 40)
    height = max(height, 16)
    findings = doctor.findings
    parts: list[RenderableType] = [_header(doctor, title, final)]
    critical = [f for f in findings if f.severity == "critical" and f.resolved_step is None]
    if critical:
        parts.append(_dead_panel(findings, critical))
    n_find = min(max(len(findings), 1), 6) + 2
    used = sum(3 if isinstance(p, Panel) else 1 for p in parts) + n_find
    avail = height - used
    two_cols = width >= 100
    rows = 2 if two_cols else (4 if avail >= 40 else 2 if avail >= 20 else 1)
    chart_h = max(avail // rows - 2, 6)  # -2: the panel border
    col_w = (width // 2 if two_cols else width) - 2
    charts = _chart_panels(doctor, col_w, chart_h, color)
    if two_cols:
        grid = Table.grid(expand=True)
        grid.add_column(ratio=1)
        grid.add_column(ratio=1)
        grid.add_row(charts[0], charts[1])
        grid.add_row(charts[2], charts[3])
        parts.append(grid)
    else:
        parts.extend(charts[:rows])
    parts.append(_findings_panel(findings, n_find - 2, bool(critical)))
    return Group(*parts)


def export_snapshot(renderable: RenderableType, path: str | Path, *, width: int, title: str) -> Path:
    """Write ``renderable`` as an SVG or HTML picture (rich's export); returns the path."""
    p = check_snapshot_path(path)
    rec = Console(record=True, file=StringIO(), width=width, force_terminal=True, color_system="truecolor")
    rec.print(renderable)
    if p.suffix.lower() == ".svg":
        p.write_text(rec.export_svg(title=title), encoding="utf-8")
    else:
        p.write_text(rec.export_html(inline_styles=True), encoding="utf-8")
    return p


def snapshot_dashboard(doctor: Doctor, path: str | Path, *, title: str, width: int) -> Path:
    """The final dashboard (48 rows) saved as a picture at ``path``."""
    r = render_dashboard(doctor, title=title, width=width, height=48, final=True)
    return export_snapshot(r, path, width=width, title=f"muvo-doctor: {title}")

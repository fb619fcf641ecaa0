"""`muvo-doctor audit [--json] [--report PATH [--follow-symlinks]] [--config TOML] [--plain] LOG...`: judge logs.

Each run (a log file, or the event files of one run folder; a folder of several runs gives one
report per run) is read into its own Doctor, the checks run once, and one report per run is shown
(or printed as JSON). Records a reader skipped as impossible are counted in the report
(``skipped_records``); a file read only up to a break (a truncated or corrupt TensorBoard file) adds a
``corrupt_log`` warning. ``--report`` is written atomically and never through a symbolic link unless
``--follow-symlinks``. Exit codes (docs/contract.md): 0 every log healthy, 1 any warning or critical
finding, 2 an input could not be read or the usage is wrong, 3 the worst verdict is inconclusive.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from muvo_doctor.core.config import ConfigError, DoctorConfig, load_config
from muvo_doctor.core.doctor import Doctor
from muvo_doctor.core.finding import Finding, Report, SkippedRecords, verdict_of
from muvo_doctor.fdio import SymlinkRefused, write_atomic
from muvo_doctor.logs import LogSource, NoRecords, ReadStats, find_sources, load

HELP = "judge finished training logs (text, tqdm, Keras, CSV, JSON lines, trainer_state.json, TensorBoard)"
# Fewer records than this from a log with carriage-return rewrites: it was one long progress bar,
# so read it again keeping every rewrite.
_MIN_RECORDS = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("logs", nargs="+", metavar="LOG", help="log files or run folders")
    parser.add_argument(
        "--json", action="store_true", help="print the report(s) as JSON instead of the text view"
    )
    parser.add_argument("--report", metavar="PATH", help="also write the report(s) as JSON to PATH")
    parser.add_argument("--config", metavar="TOML", help="thresholds and settings (see the README)")
    parser.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="write --report through a symbolic link (default: refuse, so its target is safe)",
    )
    parser.add_argument(
        "--plain", action="store_true", help="plain text: no colour (also when stdout is not a TTY)"
    )


@dataclass
class Audited:
    """One audited log: its report and what was read."""

    source: LogSource
    fmt: str
    stats: ReadStats
    doctor: Doctor
    report: Report


def audit_source(source: LogSource, config: DoctorConfig) -> Audited:
    """Read one source into a fresh Doctor, run the checks once, and build its report.

    Raises:
        NoRecords: nothing in it could be read as a metric.
    """
    doctor = Doctor(config, source=source.label)
    fmt, stats = load(source, doctor.history.add_point)
    if stats.rewrites and stats.records < _MIN_RECORDS:
        again = Doctor(config, source=source.label)
        fmt2, stats2 = load(source, again.history.add_point, keep_rewrites=True)
        if stats2.records > stats.records:
            doctor, fmt, stats = again, fmt2, stats2
    if fmt == "telemetry":
        # A record written by `run --record`: judged through the same grid of steps as the live run, so
        # its findings, first steps and resolutions are the ones the run reported (docs/contract.md).
        doctor.replay()
    else:
        doctor.evaluate()
    steps = max(stats.last_step + 1, stats.records, 0)
    report = doctor.report(source=source.label, steps=steps)
    if stats.skipped:
        skipped = SkippedRecords(count=stats.skipped, first_reason=stats.first_reason or "unreadable record")
        report = report.model_copy(update={"skipped_records": skipped})
    if stats.breaks:
        report = with_breaks(report, stats)
    return Audited(source, fmt, stats, doctor, report)


def with_breaks(report: Report, stats: ReadStats) -> Report:
    """The report with a ``corrupt_log`` warning per file read only up to a break: what followed the
    break (maybe the run's end, where it died) was not judged, so the verdict cannot be healthy."""
    step = stats.last_step if stats.last_step >= 0 else None
    found = [
        Finding(
            check="corrupt_log",
            severity="warning",
            step=step,
            message=(
                f"{Path(b.path).name} is read only up to byte {b.offset:,}: {b.reason}; "
                f"{b.records:,} records read, the last {b.bytes_skipped:,} bytes skipped and not judged"
            ),
            evidence={
                "file": b.path,
                "break_offset": b.offset,
                "records_read": b.records,
                "bytes_skipped": b.bytes_skipped,
                "reason": b.reason,
            },
            advice=(
                "Copy the file again from the machine that wrote it (an interrupted copy or sync, or a full "
                "disk, cuts event files) and audit it again; a run still writing it ends in a partial record."
            ),
        )
        for b in stats.breaks
    ]
    holding = [f for f in report.findings if f.holds]
    findings = [*holding, *found, *(f for f in report.findings if not f.holds)]
    return report.model_copy(
        update={"findings": findings, "verdict": verdict_of(findings, report.evidence_for_health)}
    )


def exit_code(reports: list[Report], unreadable: int) -> int:
    """docs/contract.md: 2 unreadable input, 1 any warning/dead verdict, 3 the worst is inconclusive, else 0."""
    if unreadable:
        return 2
    if any(r.verdict in ("warning", "dead") for r in reports):
        return 1
    if any(r.verdict == "inconclusive" for r in reports):
        return 3
    return 0


def _err(msg: str) -> None:
    print(f"muvo-doctor audit: {msg}", file=sys.stderr)


def _write_report(path: Path, payload: object, follow_symlinks: bool) -> bool:
    """Write ``--report`` whole or not at all; False (said on stderr) when it could not be written."""
    data = (json.dumps(payload, indent=2) + "\n").encode("utf-8")
    try:  # all or nothing: a full disk leaves the previous report whole, never a part
        write_atomic(path, data, follow_symlinks=follow_symlinks)
    except SymlinkRefused:
        _err(
            f"--report {path}: a symbolic link; its target is left untouched. Pass "
            "--follow-symlinks to write through it, or pick another path"
        )
        return False
    except OSError as exc:
        _err(f"--report {path}: cannot write ({exc.strerror or exc}); pass a writable path")
        return False
    return True


def main(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        _err(f"--config {exc}")
        return 2
    unreadable = 0
    done: list[Audited] = []
    for arg in args.logs:
        try:
            sources, notes = find_sources(arg)
        except NoRecords as exc:
            _err(str(exc))
            unreadable += 1
            continue
        for note in notes:
            _err(note)
        in_folder = Path(arg).is_dir()
        found = 0
        skipped: list[str] = []
        for source in sources:
            try:
                done.append(audit_source(source, config))
                found += 1
            except NoRecords as exc:
                if in_folder:
                    skipped.append(str(exc))  # a README.txt in a run folder is not an error
                else:
                    _err(str(exc))
                    unreadable += 1
            except Exception as exc:  # a reader bug must give one line, not a traceback
                _err(f"{source.label}: could not be read ({type(exc).__name__}: {exc}); please report this")
                unreadable += 1
        if in_folder:
            if found == 0:
                _err(f"{arg}: no records found in any log of this folder")
                for s in skipped:
                    _err(f"  {s}")
                unreadable += 1
            else:
                for s in skipped:
                    _err(f"skipped {s}")
    reports = [a.report for a in done]
    payload = (
        reports[0].model_dump(by_alias=True)
        if len(reports) == 1
        else [r.model_dump(by_alias=True) for r in reports]
    )
    if args.report and reports and not _write_report(args.report, payload, args.follow_symlinks):
        return 2
    if args.json:
        if reports:
            print(json.dumps(payload, indent=2))
    else:
        from muvo_doctor.face.report import render_report
        from muvo_doctor.face.style import use_color

        color = use_color(sys.stdout, args.plain)
        width = min(shutil.get_terminal_size((100, 24)).columns, 120)
        for i, a in enumerate(done):
            if i:
                print()
            header = f"{a.source.label}  ({a.fmt}, {a.stats.records} records, {a.stats.points} values)"
            if a.stats.skipped:
                header += f"\n  skipped {a.stats.skipped} bad record(s), the first: {a.stats.first_reason}"
            sys.stdout.write(
                render_report(a.report, a.doctor.history, color=color, width=width, header=header)
            )
        sys.stdout.flush()
    return exit_code(reports, unreadable)

"""Log readers for `muvo-doctor audit`: one module per format, all producing points
``add(signal name, step, value, digits)`` into a History.

``find_sources(path)`` turns a command-line argument (a file or a folder of runs) into log sources,
one per run; ``sniff(path)`` names a file's format from its content; ``load(source, add)`` reads a
source, falling back to the text reader when the sniffed reader finds nothing.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from muvo_doctor.logs.base import AddPoint, NoRecords, ReadStats, Sink, as_sink
from muvo_doctor.logs.columns import looks_like_results, read_results
from muvo_doctor.logs.csvlog import looks_like_csv, read_csv
from muvo_doctor.logs.hf import read_trainer_state
from muvo_doctor.logs.jsonl import read_json_array, read_jsonl
from muvo_doctor.logs.telemetry import SCHEMA_PREFIX, is_observation, read_telemetry
from muvo_doctor.logs.tensorboard import looks_like_tfrecord, read_events
from muvo_doctor.logs.text import read_text

__all__ = ["LogSource", "NoRecords", "ReadStats", "find_sources", "load", "sniff", "FORMATS"]

_SNIFF_BYTES = 64 << 10
_LOG_SUFFIXES = {".log", ".txt", ".out", ".err", ".csv", ".jsonl", ".ndjson", ".tsv", ".json"}
_SKIP_DIRS = {".git", "__pycache__", ".ipynb_checkpoints", "wandb-media", "media", "node_modules", ".venv"}
_MAX_DEPTH = 4
_MAX_FILES = 200


def _read_text_source(path: str, add: AddPoint | Sink, keep_rewrites: bool = False) -> ReadStats:
    st = read_text(path, add, keep_rewrites=keep_rewrites)
    out = ReadStats()
    out.records, out.points, out.last_step, out.rewrites = st.records, st.points, st.last_step, st.rewrites
    out.skipped, out.first_reason = st.skipped, st.first_reason
    if not st.points:
        if st.traceback:
            out.note = "only a crash traceback, no 'key: number' lines (e.g. loss=0.42) before it"
        elif st.lines <= 1 and st.bytes > 1_000_000:
            out.note = f"one {st.bytes / 1e6:.0f} MB line without 'key: number' pairs"
        else:
            out.note = f"no 'key: number' pairs (e.g. loss=0.42, Loss: 0.42) in {max(st.lines, 1)} lines"
    return out


# format name -> reader
FORMATS: dict[str, Callable[[str, AddPoint | Sink], ReadStats]] = {
    "text": _read_text_source,
    "jsonl": read_jsonl,
    "json": read_json_array,
    "csv": read_csv,
    "trainer_state": read_trainer_state,
    "telemetry": read_telemetry,
    "tensorboard": read_events,
    "results_txt": read_results,
}


def sniff(path: Path) -> str:
    """The format of a file from its first 64 KB (names only break ties).

    Returns one of ``FORMATS`` or ``"empty"`` / ``"binary"``.
    """
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if not head.strip():
        return "empty"
    if "tfevents" in path.name or looks_like_tfrecord(head):
        return "tensorboard" if looks_like_tfrecord(head) or "tfevents" in path.name else "binary"
    if _binary(head):
        return "binary"
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(head) == _SNIFF_BYTES and len(lines) > 1:
        lines.pop()  # cut by the sniff window: judging it would judge a fragment
    if not lines:
        return "empty"
    first = lines[0].strip()
    if first.startswith("{"):
        return _sniff_brace(lines, text)
    if first == "[" or first.startswith("[{"):
        return "json"
    if looks_like_csv(first, lines[1] if len(lines) > 1 else None):
        return "csv"
    if looks_like_results(lines):
        return "results_txt"
    return "text"


def _sniff_brace(lines: list[str], text: str) -> str:
    """A file starting with ``{``: JSON lines, a one-line (compact) or pretty trainer_state.json,
    our telemetry, or Python-dict lines printed by a trainer (``{'loss': 0.3}``: text). The first
    line that parses decides: one bad line (truncated, nested too deep) does not."""
    for line in lines[:5]:
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(obj, dict):
            if str(obj.get("schema", "")).startswith(SCHEMA_PREFIX) or is_observation(obj):
                return "telemetry"
            return "trainer_state" if "log_history" in obj else "jsonl"
        break
    first = lines[0].strip()
    if first.startswith("{'") or first.startswith("{ '"):
        return "text"  # Python reprs: single quotes are not JSON
    if '"log_history"' in text:
        return "trainer_state"
    # '{"' but nothing parsed in the sniff window (lines too deep or too long): JSON lines, read
    # line by line so one bad line is skipped; "{" alone opens one pretty-printed document.
    return "jsonl" if first.startswith('{"') else "json"


def _binary(head: bytes) -> bool:
    sample = head[:8192]
    if b"\x00" in sample:
        return True
    # Control bytes other than tab/newline/CR/escape/form-feed: text logs have almost none.
    ctrl = sum(1 for b in sample if b < 32 and b not in (9, 10, 12, 13, 27))
    return ctrl > len(sample) // 20


@dataclass
class LogSource:
    """One report's worth of input: a log file, or all event files of one TensorBoard run folder."""

    label: str
    files: list[Path] = field(default_factory=list)


def find_sources(arg: str) -> tuple[list[LogSource], list[str]]:
    """Sources for one command-line argument, one per run, and notes about what a folder scan skipped.

    A file is one source. In a folder (searched ``_MAX_DEPTH`` deep, hidden folders skipped), every
    text/CSV/JSON log is a source; the TensorBoard event files of one run folder form one source
    (a run folder: the event files' folder, or its parent when that folder is a split, ``train/``,
    ``validation/``, as Keras writes them), so ``runs/exp1`` and ``runs/exp2`` give two reports; of
    the ``trainer_state.json`` copies of one run (one per HF checkpoint folder, each cumulative)
    only the largest is kept. Only regular files are opened: a FIFO, socket or device named
    ``x.log`` is skipped (and noted), never read.

    Raises:
        NoRecords: the path does not exist, is not a regular file or folder, or a folder holds no log.
    """
    p = Path(arg)
    if not p.exists():
        raise NoRecords(f"{arg}: no such file or folder")
    if p.is_file():
        return [LogSource(str(p), [p])], []
    if not p.is_dir():
        raise NoRecords(
            f"{arg}: not a regular file or folder (a FIFO or a device?); pass the log file itself"
        )
    logs: list[Path] = []
    events: dict[Path, list[Path]] = {}
    states: dict[Path, list[Path]] = {}
    notes: list[str] = []
    special = 0
    base_depth = len(p.parts)
    for root, dirs, files in os.walk(p):
        depth = len(Path(root).parts) - base_depth
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS and depth < _MAX_DEPTH
        )
        for name in sorted(files):
            fp = Path(root) / name
            wanted = (
                "tfevents" in name
                or name == "trainer_state.json"
                or (fp.suffix.lower() in _LOG_SUFFIXES and not name.startswith("."))
            )
            if not wanted:
                continue
            if not _regular(fp):
                special += 1
                continue
            if "tfevents" in name:
                events.setdefault(_run_of(fp), []).append(fp)
            elif name == "trainer_state.json":
                states.setdefault(_run_of(fp), []).append(fp)
            else:
                if fp.suffix.lower() == ".json" and not _json_log(fp):
                    continue  # config.json, tokenizer.json ...
                logs.append(fp)
    if special:
        notes.append(f"{arg}: skipped {special} file(s) that are not regular files (FIFOs, sockets, devices)")
    for copies in states.values():
        logs.append(max(copies, key=lambda s: s.stat().st_size))
    sources = [LogSource(str(f), [f]) for f in logs[:_MAX_FILES]]
    if len(logs) > _MAX_FILES:
        notes.append(f"{arg}: {len(logs)} log files, auditing the first {_MAX_FILES}")
    for run, files in sorted(events.items()):
        sources.append(LogSource(f"{run} (TensorBoard, {len(files)} event files)", files))
    if not sources:
        raise NoRecords(
            f"{arg}: no logs in this folder (looked for *.log, *.txt, *.csv, *.jsonl, trainer_state.json, "
            "events.out.tfevents.*); pass the log file itself"
        )
    return sources, notes


_SPLIT_DIRS = {"train", "training", "validation", "val", "valid", "eval", "test"}


def _run_of(fp: Path) -> Path:
    """The run folder a log belongs to: its folder, less a split folder (``train/``, Keras) or an
    HF ``checkpoint-N/`` folder (copies of the run's own state)."""
    d = fp.parent
    while d.name.lower() in _SPLIT_DIRS or d.name.startswith("checkpoint-"):
        d = d.parent
    return d


def _regular(fp: Path) -> bool:
    """A regular file (through symlinks): opening a FIFO would block, a device would never end."""
    try:
        return stat.S_ISREG(os.stat(fp).st_mode)
    except OSError:
        return False


def _json_log(fp: Path) -> bool:
    try:
        with open(fp, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return (
        b'"log_history"' in head
        or head.lstrip().startswith(b"[")
        or b'"schema": "muvo-doctor/telemetry' in head
    )


def load(source: LogSource, add: AddPoint | Sink, *, keep_rewrites: bool = False) -> tuple[str, ReadStats]:
    """Read every file of ``source`` into ``add``; returns (format, counters).

    When the sniffed reader finds nothing (or fails on the content), the text reader tries the
    file: a log whose first line fooled the sniffer is still read. ``keep_rewrites`` makes the text
    reader keep every carriage-return rewrite (for a log that is one long progress bar: the default
    keeps what a terminal shows, which is then too little).

    Raises:
        NoRecords: nothing in the source could be read as a metric (the message says why).
    """
    total = ReadStats()
    formats: list[str] = []
    notes: list[str] = []
    for path in source.files:
        if not _regular(path):
            notes.append("not a regular file (a FIFO, socket or device)")
            continue
        try:
            kind = sniff(path)
        except OSError as exc:
            raise NoRecords(f"{path}: cannot read ({exc.strerror or exc})") from None
        if kind == "empty":
            notes.append("the file is empty")
            continue
        if kind == "binary":
            notes.append("a binary file, not a log (a checkpoint or an archive?)")
            continue
        try:
            kind, st = _read_file(path, kind, add, keep_rewrites)
        except OSError as exc:
            raise NoRecords(f"{path}: cannot read ({exc.strerror or exc})") from None
        formats.append(kind)
        total.records += st.records
        total.points += st.points
        total.last_step = max(total.last_step, st.last_step)
        total.rewrites += st.rewrites
        if st.skipped:
            total.skip(st.first_reason, st.skipped)
        total.breaks += st.breaks
        if not st.points and st.note:
            notes.append(f"{st.note} ({kind})")
    if not total.points:
        why = "; ".join(dict.fromkeys(notes)) or "nothing readable"
        raise NoRecords(f"{source.label}: no records found: {why}")
    return (formats[0] if len(set(formats)) == 1 else "+".join(sorted(set(formats)))), total


def _read_file(path: Path, kind: str, add: AddPoint | Sink, keep_rewrites: bool) -> tuple[str, ReadStats]:
    """One file through its sniffed reader, then through the text reader if that found nothing."""
    if kind == "text":
        return kind, _read_text_source(str(path), add, keep_rewrites)
    if kind == "tensorboard":
        return kind, read_events(str(path), add)  # binary: the text reader has nothing to try
    sink = as_sink(add)
    before = sink.count
    try:
        st = FORMATS[kind](str(path), sink)
    except (ValueError, UnicodeError, RecursionError, MemoryError) as exc:
        st = ReadStats()
        st.points = sink.count - before  # what it added before failing stays; the text reader would repeat it
        st.note = f"the {kind} reader failed ({type(exc).__name__})"
        st.unparsed = True
    if st.points or not st.unparsed:
        return kind, st
    text = _read_text_source(str(path), add, keep_rewrites)
    if text.points:
        return "text", text
    return kind, st

"""The --record and --report files: written as the run goes and at its end; a failure means exit 2."""

from __future__ import annotations

import contextlib
from pathlib import Path

from muvo_doctor.fdio import SymlinkRefused, create_replacing, write_atomic

RECORD_FLUSH_S = 0.5  # the --record file is flushed this often: a SIGKILL loses at most ~0.75 s of it


class RunFiles:
    """The part of the Runner that writes --record and --report."""

    def _open_record(self) -> None:
        path = self.opts.record
        if path is None:
            return
        from muvo_doctor.run.stream import Header, encode

        try:
            head = encode(Header(source=self.source)).encode("utf-8")
            self.record = create_replacing(path, head, follow_symlinks=self.opts.follow_symlinks)
        except OSError as exc:
            self.record = None
            self._file_error("record", path, exc, "the run goes on without it")

    def _file_error(self, flag: str, path: Path, exc: OSError, then: str) -> None:
        self.file_failed = True
        if isinstance(exc, SymlinkRefused):
            why = "a symbolic link, left untouched; pass --follow-symlinks to write to its target"
        else:
            why = f"cannot write ({exc.strerror or exc})"
        self.say_once(flag, f"--{flag} {path}: {why}; {then}")

    def _record_failed(self, exc: OSError) -> None:
        if self.record is not None:
            with contextlib.suppress(OSError):
                self.record.close()
        self.record = None
        assert self.opts.record is not None
        self._file_error("record", self.opts.record, exc, "the run goes on without it")

    def _record_line(self, line: str) -> None:
        assert self.record is not None
        try:
            self.record.write(line.encode("utf-8"))
        except OSError as exc:
            self._record_failed(exc)

    def _flush_record(self, now: float) -> None:
        if self.record is not None and now >= self._record_flush_at:
            self._record_flush_at = now + RECORD_FLUSH_S
            try:
                self.record.flush()
            except OSError as exc:
                self._record_failed(exc)

    def _close_record(self) -> None:
        if self.record is not None:
            try:
                self.record.close()
            except OSError as exc:
                self._record_failed(exc)

    def _write_report(self) -> None:
        if self.opts.report is not None:
            try:
                report = self.doctor.report(source=self.source)
                report = report.model_copy(update={"helper_processes": self._helper_processes()})
                data = (report.to_json() + "\n").encode("utf-8")
                write_atomic(self.opts.report, data, follow_symlinks=self.opts.follow_symlinks)
            except OSError as exc:
                self._file_error("report", self.opts.report, exc, "the previous file, if any, is unchanged")

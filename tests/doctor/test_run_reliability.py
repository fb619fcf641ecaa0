"""`muvo-doctor run` under faults and hostile files: the files it writes, secrets, its process tree."""

from __future__ import annotations

import errno
import os

import pytest

from muvo_doctor import fdio
from muvo_doctor.fdio import SymlinkRefused, create_replacing, write_atomic


# -- files ----------------------------------------------------------------------------------------
def test_write_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("old")
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["report.json"]


def test_write_atomic_refuses_a_symlink_and_leaves_its_target_untouched(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    link = tmp_path / "report.json"
    link.symlink_to(target)
    with pytest.raises(SymlinkRefused):
        write_atomic(link, b"{}")
    assert target.read_text() == "keep me" and link.is_symlink()
    write_atomic(link, b"{}", follow_symlinks=True)
    assert target.read_text() == "{}" and link.is_symlink()


def test_a_failed_write_keeps_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "report.json"
    path.write_text('{"old": true}')

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fdio.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_atomic(path, b"x" * 10_000)
    assert path.read_text() == '{"old": true}'
    assert os.listdir(tmp_path) == ["report.json"]


def test_create_replacing_replaces_a_symlink_only_when_asked(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    link = tmp_path / "run.jsonl"
    link.symlink_to(target)
    with pytest.raises(SymlinkRefused):
        create_replacing(link, b"head\n")
    with create_replacing(tmp_path / "new.jsonl", b"head\n") as fh:
        fh.write(b"line\n")
        fh.flush()
        assert (tmp_path / "new.jsonl").read_bytes() == b"head\nline\n"
    assert target.read_text() == "keep me"


def test_a_device_is_written_in_place_never_replaced():
    # Renaming a temporary file over /dev/null would replace the device for everyone.
    write_atomic("/dev/null", b"{}")
    create_replacing("/dev/null", b"head\n").close()
    assert not os.path.isfile("/dev/null") and os.path.exists("/dev/null")

"""`muvo-doctor run` under faults and hostile files: the files it writes, secrets, its process tree."""

from __future__ import annotations

import contextlib
import errno
import http.server
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from muvo_doctor import fdio
from muvo_doctor.fdio import SymlinkRefused, create_replacing, write_atomic
from muvo_doctor.run.stream import StreamError, read_observations

SCRIPTS = Path(__file__).resolve().parents[1] / "fixtures" / "scripts"
PY = sys.executable


# -- files ----------------------------------------------------------------------------------------
def test_write_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("old")
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["report.json"]


@pytest.mark.parametrize("write", [write_atomic, create_replacing], ids=["write_atomic", "create_replacing"])
def test_a_symlink_is_refused_its_target_untouched_and_followed_only_when_asked(tmp_path, write):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    link = tmp_path / "out.json"
    link.symlink_to(target)
    with pytest.raises(SymlinkRefused):
        write(link, b"{}")
    assert target.read_text() == "keep me" and link.is_symlink()
    done = write(link, b"{}", follow_symlinks=True)
    if done is not None:
        done.close()
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


def test_create_replacing_leaves_a_file_that_grows_as_it_is_flushed(tmp_path):
    with create_replacing(tmp_path / "new.jsonl", b"head\n") as fh:
        assert (tmp_path / "new.jsonl").read_bytes() == b"head\n"
        fh.write(b"line\n")
        fh.flush()
        assert (tmp_path / "new.jsonl").read_bytes() == b"head\nline\n"
    assert os.listdir(tmp_path) == ["new.jsonl"]


def test_a_device_is_written_in_place_never_replaced():
    # Renaming a temporary file over /dev/null would replace the device for everyone.
    write_atomic("/dev/null", b"{}")
    create_replacing("/dev/null", b"head\n").close()
    assert not os.path.isfile("/dev/null") and os.path.exists("/dev/null")


# -- through the CLI ------------------------------------------------------------------------------
def test_a_symlinked_report_or_record_target_is_left_untouched(doctor_run, tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    for flag in ("--report", "--record"):
        link = tmp_path / f"link{flag}"
        link.symlink_to(precious)
        p = doctor_run(flag, str(link), "--", "sh", "-c", "echo loss=0.5")
        assert p.returncode == 2 and b"--follow-symlinks" in p.stderr and b"Traceback" not in p.stderr
        assert p.stdout == b""  # refused before the command ran
        assert precious.read_text() == "keep me" and link.is_symlink()
    p = doctor_run(
        "--follow-symlinks", "--report", str(tmp_path / "link--report"), "--", "sh", "-c", "echo loss=0.5"
    )
    assert p.returncode == 0
    assert json.loads(precious.read_text())["schema"] == "muvo-doctor/report/v1"


def test_a_report_that_cannot_be_written_is_an_error_exit_2(doctor_run, tmp_path):
    (tmp_path / "report.json").mkdir()  # a folder where the file should go
    p = doctor_run("--report", str(tmp_path / "report.json"), "--", "sh", "-c", "echo loss=0.5")
    assert p.returncode == 2
    assert b"--report" in p.stderr and b"cannot write" in p.stderr and b"Traceback" not in p.stderr
    # ... but the command's own failure comes first.
    p = doctor_run("--report", str(tmp_path / "report.json"), "--", "sh", "-c", "exit 3")
    assert p.returncode == 3


SECRETS = ("s3cr3t-flag", "s3cr3t-env", "s3cr3t-url", "s3cr3t-joined")


def _secret_command() -> list[str]:
    # A dead run (the same loss 30 times) so every alert fires; each secret in another form.
    script = 'i=0; while [ $i -lt 30 ]; do echo "iter $i loss=0.6931"; i=$((i+1)); done'
    return [
        "env", "HF_TOKEN=s3cr3t-env", "sh", "-c", script, "train",
        "--api-key", "s3cr3t-flag", "--db", "https://bob:s3cr3t-url@db.example", "--auth-token=s3cr3t-joined",
    ]  # fmt: skip


class _Hook(http.server.BaseHTTPRequestHandler):
    bodies: list[bytes] = []

    def do_POST(self) -> None:
        _Hook.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_a_secret_in_the_command_line_is_absent_from_every_output(doctor_run, tmp_path):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/hook"
    files = {name: tmp_path / name for name in ("report.json", "run.jsonl", "dash.svg", "env.txt")}
    try:
        p = doctor_run(
            "--plain", "--report", str(files["report.json"]), "--record", str(files["run.jsonl"]),
            "--snapshot", str(files["dash.svg"]), "--notify", url,
            "--notify-cmd", f"env > {files['env.txt']}", "--", *_secret_command(),
        )  # fmt: skip
    finally:
        server.shutdown()
    assert p.returncode == 0, p.stderr
    assert json.loads(files["report.json"].read_text())["verdict"] == "dead"  # the alerts fired
    assert _Hook.bodies and "MUVO_DOCTOR_MESSAGE" in files["env.txt"].read_text()
    outputs = {"stdout": p.stdout, "stderr": p.stderr, "webhook": b"".join(_Hook.bodies)}
    outputs |= {name: path.read_bytes() for name, path in files.items()}
    for name, data in outputs.items():
        for secret in SECRETS:
            assert secret.encode() not in data, f"{secret} in {name}"
    source = json.loads(files["report.json"].read_text())["source"]
    assert "--api-key REDACTED" in source and "HF_TOKEN=REDACTED" in source and "bob:REDACTED@" in source
    # --no-redact: the user asked for the command as it was.
    p = doctor_run("--no-redact", "--report", str(files["report.json"]), "--", *_secret_command())
    assert all(s in json.loads(files["report.json"].read_text())["source"] for s in SECRETS)


def test_a_background_grandchild_is_drained_until_it_closes_the_output(doctor_run):
    p = doctor_run(
        "--", "sh", "-c", "(for i in 1 2 3 4; do sleep 0.2; echo grandchild $i; done) & echo main done"
    )
    assert p.returncode == 0
    assert p.stdout.count(b"grandchild") == 4, p.stdout


def _in_a_terminal(doctor_run, *args: str) -> tuple[int, subprocess.Popen[bytes]]:
    """`muvo-doctor run ARGS` with a terminal as stdin, stdout and stderr: (the terminal's master, it)."""
    master, slave = pty.openpty()
    wrapper = subprocess.Popen(
        [*doctor_run.argv, *args], stdin=slave, stdout=slave, stderr=slave,
        env=dict(os.environ, NO_COLOR="1"), start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    return master, wrapper


def _read_to_end(master: int, until: bytes | None = None, timeout: float = 60) -> bytes:
    """What the terminal shows until ``until`` appears, or until every holder of it closed it."""
    out = b""
    while (until is None or until not in out) and select.select([master], [], [], timeout)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the wrapper and everything it left have closed the terminal
            break
        if not chunk:
            break
        out += chunk
    return out


def _under_a_terminal(doctor_run, *args: str, timeout: float = 60) -> tuple[int, bytes]:
    master, wrapper = _in_a_terminal(doctor_run, *args)
    out = _read_to_end(master, timeout=timeout)
    os.close(master)
    return wrapper.wait(timeout=timeout), out


def test_under_a_terminal_a_background_grandchild_outlives_the_command_and_is_drained(doctor_run):
    # Under a terminal the command no longer leads the inner terminal's session: its exit does not
    # hang up (SIGHUP) the background job its shell left, as in a terminal without the wrapper.
    code, out = _under_a_terminal(
        doctor_run,
        "--",
        "sh",
        "-c",
        "(for i in 1 2 3 4; do sleep 0.2; echo grandchild $i; done) & echo main done",
    )
    assert code == 0
    assert out.count(b"grandchild") == 4, out


_TTY_CHILD = (
    "import os\n"
    "fd = os.open('/dev/tty', os.O_WRONLY)\n"  # a controlling terminal, not just a terminal on stdout
    "os.write(fd, b'via /dev/tty\\n')\n"
    "print('isatty', os.isatty(0), os.isatty(1), os.isatty(2), flush=True)\n"
)


@pytest.mark.parametrize(
    ("command", "code", "shown"),
    [
        (["sh", "-c", "exit 3"], 3, b""),
        (["sh", "-c", "kill -TERM $$"], 128 + signal.SIGTERM, b""),
        ([PY, "-c", _TTY_CHILD], 0, b"via /dev/tty\r\nisatty True True True\r\n"),
        (["no-such-command-muvo"], 127, b"cannot start 'no-such-command-muvo'"),
    ],
)
def test_under_a_terminal_the_command_keeps_its_exit_code_and_its_terminal(doctor_run, command, code, shown):
    got, out = _under_a_terminal(doctor_run, "--", *command)
    assert got == code, out
    assert shown in out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_under_a_terminal_a_signal_to_the_wrapper_reaches_the_command_once(doctor_run, sig):
    code = (
        "import signal, sys, time\n"
        "def on(s, f): print('got', signal.Signals(s).name, flush=True); sys.exit(40 + s)\n"
        "for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP): signal.signal(s, on)\n"
        "print('ready', flush=True); time.sleep(30)\n"
    )
    master, wrapper = _in_a_terminal(doctor_run, "--", PY, "-c", code)
    out = _read_to_end(master, until=b"ready")
    wrapper.send_signal(sig)
    out += _read_to_end(master)
    os.close(master)
    assert wrapper.wait(timeout=30) == 40 + sig, out
    assert out.count(b"got ") == 1 and f"got {sig.name}".encode() in out, out


def test_the_doctors_lines_never_split_a_childs_line(doctor_run):
    # The child writes half a line, makes the doctor speak (a bad telemetry line), then ends its line.
    # The first pause lets the wrapper pass the half line on before it reads the bad telemetry.
    script = "printf 'half '; sleep 0.3; echo garbage > \"$MUVO_DOCTOR_FIFO\"; sleep 0.5; echo line"
    p = doctor_run(
        "--", "sh", "-c", script, stderr=subprocess.STDOUT, stdout=subprocess.PIPE, capture_output=False
    )
    assert b"half line\n" in p.stdout, p.stdout
    assert b"muvo-doctor: skipped bad telemetry" in p.stdout


def test_the_bootstrap_is_quiet_in_a_process_that_outlives_the_wrapper(tmp_path):
    from muvo_doctor.run.inject import PYTHONPATH_DIR

    fifo = tmp_path / "telemetry"
    os.mkfifo(fifo)  # no reader: the wrapper is gone
    for path in (fifo, tmp_path / "gone"):
        env = dict(os.environ, PYTHONPATH=PYTHONPATH_DIR, MUVO_DOCTOR_FIFO=str(path))
        p = subprocess.run([PY, "-c", "print('ok')"], capture_output=True, env=env, timeout=30)
        assert (p.returncode, p.stdout, p.stderr) == (0, b"ok\n", b"")


def _tmp_folders(root: Path) -> list[str]:
    return [n for n in os.listdir(root) if n.startswith("muvo-doctor-")]


def _wait_for(cond, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (reaped later by init) is gone for the user.
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    return True


@pytest.mark.slow
def test_kill_9_of_the_wrapper_ends_the_child_and_cleans_up(doctor_run, tmp_path):
    pid_file, record = tmp_path / "child.pid", tmp_path / "run.jsonl"
    env = dict(os.environ, TMPDIR=str(tmp_path))
    wrapper = subprocess.Popen(
        [*doctor_run.argv, "--record", str(record), "--",
         PY, str(SCRIPTS / "prints_then_waits.py"), str(pid_file), "20"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    assert _wait_for(pid_file.exists, 30)
    child = int(pid_file.read_text())
    assert _tmp_folders(tmp_path)

    def recorded() -> int:
        # A run that prints nothing more: only the record's periodic flush brings these to the file.
        try:
            return len({o.step for o in read_observations(record) if o.name == "printed/loss"})
        except (OSError, StreamError):
            return 0

    assert _wait_for(lambda: recorded() == 20, 10.0), recorded()
    wrapper.kill()
    wrapper.wait()
    assert _wait_for(lambda: not _alive(child), 5.0), "the child outlived its wrapper by 5 s"
    assert _wait_for(lambda: not _tmp_folders(tmp_path), 2.0)
    assert recorded() == 20


@pytest.mark.slow
def test_kill_9_under_a_terminal_restores_the_terminal_and_cursor(doctor_run, tmp_path):
    pid_file = tmp_path / "child.pid"
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM")} | {"TERM": "xterm-256color"}
    wrapper = subprocess.Popen(
        [*doctor_run.argv, "--", PY, str(SCRIPTS / "prints_then_waits.py"), str(pid_file), "5"],
        stdin=slave, stdout=slave, stderr=slave, env=env | {"TMPDIR": str(tmp_path)}, start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    out = b""
    end = time.monotonic() + 30
    while not pid_file.exists() and time.monotonic() < end:
        out += _read_some(master, 0.1)
    child = int(pid_file.read_text())
    out += _read_some(master, 1.0)  # the live view draws (and hides the cursor)
    assert termios.tcgetattr(master)[3] != before[3]  # raw mode, while the wrapper runs
    wrapper.kill()
    wrapper.wait()
    assert _wait_for(lambda: not _alive(child), 5.0)
    out += _read_some(master, 10.0)  # until the watchdog, the last holder of the terminal, exits
    assert b"\x1b[?25l" in out and out.rindex(b"\x1b[?25h") > out.rindex(b"\x1b[?25l")
    assert termios.tcgetattr(master)[3] == before[3]  # echo and line editing are back
    assert _wait_for(lambda: not _tmp_folders(tmp_path), 2.0)
    os.close(master)


def _read_some(fd: int, seconds: float) -> bytes:
    out = b""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            break
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return out


@pytest.mark.slow
def test_a_helper_process_that_trains_with_lr_0_is_not_merged_into_the_verdict(doctor_run, tmp_path):
    report, record = tmp_path / "report.json", tmp_path / "run.jsonl"
    p = doctor_run(
        "--report", str(report), "--record", str(record), "--",
        PY, str(SCRIPTS / "trains_with_a_helper.py"), "--api-key", "hunter2-helper-secret",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    verdict = json.loads(report.read_text())
    assert verdict["verdict"] != "dead", verdict["findings"]
    assert "frozen_parameters" not in {f["check"] for f in verdict["findings"]}
    losses = [o for o in read_observations(record) if o.name == "train/loss"]
    assert len(losses) == 150  # the parent's 150 steps; none of the helper's 150
    shown = rb"process (\d+) \((\S*python\S* \S*functional_losses.py --lr 0 --steps 150 --api-key REDACTED)\)"
    said = re.search(shown + rb" steps an optimizer", p.stderr)
    assert said, p.stderr
    # The report names it too, by pid and command (secret masked), apart from the verdict.
    assert verdict["helper_processes"] == [{"pid": int(said[1]), "command": said[2].decode()}]
    assert b"hunter2" not in p.stderr + report.read_bytes() + record.read_bytes()


def test_the_text_report_names_the_helper_processes():
    from muvo_doctor.core.finding import HelperProcess, Report
    from muvo_doctor.face.report import render_report

    helpers = [HelperProcess(pid=4242, command="python eval.py --lr 0"), HelperProcess(pid=7, command=None)]
    report = Report(source="python train.py", verdict="inconclusive", steps=3, findings=[])
    assert "helper process" not in render_report(report)
    text = render_report(report.model_copy(update={"helper_processes": helpers}))
    assert "helper process 4242 (python eval.py --lr 0) trained on its own; not part of this verdict" in text
    assert "helper process 7 trained on its own" in text
    # A report written before the field existed still reads.
    old = json.loads(report.to_json())
    del old["helper_processes"]
    assert Report.model_validate(old).helper_processes == []


@pytest.mark.slow
def test_mp_spawn_workers_without_rank_are_each_their_own_rank(doctor_run, tmp_path):
    report, record = tmp_path / "report.json", tmp_path / "run.jsonl"
    p = doctor_run(
        "--report", str(report), "--record", str(record), "--", PY, str(SCRIPTS / "spawn_train.py")
    )
    assert p.returncode == 0, p.stderr
    losses = [o for o in read_observations(record) if o.name == "train/loss"]
    assert sorted(o.rank for o in losses) == [0] * 30 + [1] * 30


@pytest.mark.parametrize(
    ("env", "argv", "hello"),
    [
        ({}, [], {"rank": 0}),  # the first Python process: the training
        ({"RANK": "1"}, [], {"rank": 1}),
        ({"MUVO_DOCTOR_SCOPE": "7:"}, [], {"rank": None, "role": "helper"}),  # a helper script
        ({"MUVO_DOCTOR_SCOPE": "7:", "RANK": "1"}, [], {"rank": 1}),  # torchrun's worker
        ({"MUVO_DOCTOR_SCOPE": "7:", "LOCAL_RANK": "1"}, [], {"rank": 1}),
        ({"MUVO_DOCTOR_SCOPE": "7:1", "RANK": "1"}, [], {"rank": None, "role": "helper"}),  # a rank's helper
        ({"MUVO_DOCTOR_SCOPE": "7:"}, ["--multiprocessing-fork"], {"rank": None, "role": "helper"}),
    ],
)
def test_which_process_is_a_rank_and_which_a_helper(tmp_path, env, argv, hello):
    from muvo_doctor.run.inject import PYTHONPATH_DIR

    fifo = tmp_path / "telemetry"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "MUVO_DOCTOR_SCOPE")}
    code = "import sys; sys.argv[1:] = []"  # a spawn worker's flag is in argv when sitecustomize runs
    p = subprocess.run(
        [PY, "-c", code, *argv],
        env=base | env | {"PYTHONPATH": PYTHONPATH_DIR, "MUVO_DOCTOR_FIFO": str(fifo)},
        capture_output=True,
        timeout=30,
    )
    got = json.loads(os.read(reader, 4096))
    os.close(reader)
    assert p.returncode == 0 and p.stderr == b""
    assert {k: got.get(k) for k in hello} == hello


def test_a_flood_of_output_passes_through_whole_and_what_was_not_parsed_is_counted(doctor_run):
    code = "import sys\nfor i in range(200_000): sys.stdout.write(f'step {i} loss={1 / (i + 1):.6f}\\n')"
    direct = subprocess.run([PY, "-c", code], capture_output=True, timeout=60)
    p = doctor_run("--", PY, "-c", code)
    assert p.returncode == 0 and p.stdout == direct.stdout  # 5.3 MB, byte for byte
    counted = re.search(rb"muvo-doctor: (\d+) output lines \([\d.]+ MB\) were not read for numbers", p.stderr)
    assert counted and 0 < int(counted[1]) < 200_000, p.stderr


def test_the_child_is_not_kept_waiting_while_the_doctor_sets_up(monkeypatch, capfd, tmp_path):
    from muvo_doctor.run import runner

    # The set-up goes on only once the child has written 4 MB and said so: more than a pipe or a
    # pty holds, so it can only happen if its output is passed on meanwhile.
    written = tmp_path / "written"
    set_up = runner.Runner._setup
    waited: list[bool] = []

    def setup_after_the_child_wrote(self) -> None:
        end = time.monotonic() + 30
        while not written.exists() and time.monotonic() < end:
            time.sleep(0.01)
        waited.append(written.exists())
        set_up(self)

    monkeypatch.setattr(runner.Runner, "_setup", setup_after_the_child_wrote)
    code = (
        "import sys\n"
        "for i in range(40_000): sys.stdout.write(f'step {i} loss={1 / (i + 1):.6f} ' + 'x' * 70 + '\\n')\n"
        "sys.stdout.write('an open line at the end of the set-up'); sys.stdout.flush()\n"
        f"open({str(written)!r}, 'w').close()\n"
    )
    assert runner.Runner(runner.RunOptions(command=[PY, "-c", code])).run() == 0
    out, err = capfd.readouterr()
    direct = subprocess.run([PY, "-c", code], capture_output=True, timeout=60)
    assert waited == [True]
    assert out.encode() == direct.stdout, out[-200:]  # whole, in order, the open line included

"""Does `muvo-doctor run` slow a child that prints a lot? Direct vs wrapped, pipe and pty, side by side.

    python bench/passthrough.py                  # 50 MB of numeric log lines, 3 rounds
    python bench/passthrough.py --mb 10 --rounds 1
    git worktree add /tmp/before main~3 && python bench/passthrough.py --compare /tmp/before/src

The child is one Python process printing ``--mb`` MB of training-log lines (``step 12 loss=0.6931
lr=3.000e-04 grad_norm=1.2345 acc=0.5012``) as fast as it can. Each mode runs it directly and under
``muvo-doctor run --plain``, in alternation, ``--rounds`` times:

- pipe: stdout a pipe this script drains (stderr apart), as under CI or ``| tee``;
- pty: stdout and stderr one pseudo-terminal this script drains, as in a terminal.

A run's time is from its start to the end of its output. The ratio is direct time / wrapped time
(1.0: no slowdown), from the fastest round of each (the machine's other load only ever adds time).
"wrapper CPU s" is the CPU time of the wrapped run less the direct one's (each the least over the
rounds): what the wrapper itself costs, which slows the child only where every CPU is busy.
"child blocked s" is the time the child waited for its output to be taken (its time less its time on
a CPU and waiting for one, from /proc/self/schedstat; median of the rounds, direct / wrapped): what
the wrapper's slowness to read costs the child, apart from the machine's load.
The wrapped output of the last round must equal the direct one byte for byte (checked with ``cmp``),
after removing the doctor's own lines (``muvo-doctor: ...`` and the alert banner, on stderr: in pty
mode it shares the terminal; they must be whole lines between the child's for the rest to match).
Exit 1 when a ratio is under ``--target`` or the bytes differ. ``--compare SRC`` adds a wrapped run by
the package in SRC (another checkout's ``src``), alternated with the others in the same rounds: a
before/after on a busy machine, where runs apart in time are not comparable.
"""

from __future__ import annotations

import argparse
import math
import os
import pty
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import os, sys, time
def cpu_and_queue():  # seconds on a CPU and waiting for one, so far (Linux); None elsewhere
    try:
        with open("/proc/self/schedstat") as f:
            run, queued, _ = f.read().split()
        return int(run) / 1e9, int(queued) / 1e9
    except (OSError, ValueError):
        return None
n = int(sys.argv[1])
t0, s0 = time.monotonic(), cpu_and_queue()
out = sys.stdout
written = 0
i = 0
while written < n:
    loss, norm = 1.0 / (1 + i * 1e-4), 1.0 + (i % 97) / 100
    line = f"step {i} loss={loss:.4f} lr=3.000e-04 grad_norm={norm:.4f} acc=0.{i % 10000:04d}\\n"
    out.write(line)
    written += len(line)
    i += 1
out.flush()
s1 = cpu_and_queue()
if s0 and s1:  # the rest of its time it was blocked: its output was full
    with open(os.environ["BENCH_BLOCKED"], "w") as f:
        f.write(str(max(time.monotonic() - t0 - (s1[0] - s0[0]) - (s1[1] - s0[1]), 0.0)))
"""


def drain(fd: int) -> bytes:
    chunks = []
    while True:
        select.select([fd], [], [])
        try:
            chunk = os.read(fd, 1 << 16)
        except OSError:  # EIO: every holder of the pty's other side is gone
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def cpu_of(p: subprocess.Popen[bytes]) -> float:
    """CPU seconds (user + system) of ``p`` and of the children it waited for (the wrapper's child)."""
    _, _, usage = os.wait4(p.pid, 0)
    p.returncode = 0  # reaped here
    return usage.ru_utime + usage.ru_stime


def run_pipe(cmd: list[str], env: dict[str, str]) -> tuple[float, float, bytes]:
    t0 = time.perf_counter()
    p = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=env
    )
    assert p.stdout is not None
    out = drain(p.stdout.fileno())
    cpu = cpu_of(p)
    elapsed = time.perf_counter() - t0
    p.stdout.close()
    return elapsed, cpu, out


def run_pty(cmd: list[str], env: dict[str, str]) -> tuple[float, float, bytes]:
    master, slave = pty.openpty()
    t0 = time.perf_counter()
    p = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env, start_new_session=True
    )
    os.close(slave)
    out = drain(master)
    cpu = cpu_of(p)
    elapsed = time.perf_counter() - t0
    os.close(master)
    return elapsed, cpu, out


DOCTOR_LINES = (b"muvo-doctor:", b"advice:", b"!!!!!!!!")  # its finding lines and its alert banner


def child_part(out: bytes) -> bytes:
    """The wrapped output less the doctor's own lines (pty mode: they share the terminal). They are
    whole lines between the child's, so what is left must be the child's bytes exactly. The child
    prints no blank line: a blank line (or a bell alone) is the banner's."""
    *lines, last = out.split(b"\n")
    kept = [p for p in lines if p.strip(b"\a\r") and not p.lstrip(b"\a\r").startswith(DOCTOR_LINES)]
    return b"\n".join([*kept, last])


def _same(mode: str, direct: Path, wrapped: Path) -> bool:
    diff = subprocess.run(["cmp", str(direct), str(wrapped)], capture_output=True, text=True)
    if diff.returncode != 0:
        at = int(diff.stdout.split("byte ")[1].split(",")[0]) - 1 if "byte " in diff.stdout else 0
        got = wrapped.read_bytes()[max(at - 200, 0) : at + 200]
        print(f"{mode}: {(diff.stdout or diff.stderr).strip()}; wrapped there: {got!r}", file=sys.stderr)
    return diff.returncode == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=50.0, help="megabytes the child prints (default 50)")
    ap.add_argument("--rounds", type=int, default=3, help="direct/wrapped pairs per mode (default 3)")
    ap.add_argument("--target", type=float, default=0.9, help="lowest acceptable ratio (default 0.9)")
    ap.add_argument(
        "--compare", metavar="SRC", action="append", default=[],
        help="also wrap with the muvo_doctor package under SRC (e.g. another checkout's src), side by side",
    )  # fmt: skip
    args = ap.parse_args()
    for src in args.compare:
        if not Path(src, "muvo_doctor", "__init__.py").is_file():
            ap.error(f"--compare {src}: no muvo_doctor package there; give a checkout's src folder")

    n = int(args.mb * 1e6)
    env = dict(os.environ, NO_COLOR="1")
    ok = True
    print(f"child: {args.mb:g} MB of log lines; {args.rounds} rounds; best time of each")
    head = f"{'mode':<6}{'direct s':>10}{'wrapped s':>11}{'ratio':>8}{'wrapper CPU s':>14}{'child blocked s':>18}"
    print(f"{head}  bytes")
    with tempfile.TemporaryDirectory() as tmp:
        # A file, not `-c`: the doctor's lines name the command, and a one-line name is one line.
        script = Path(tmp, "print_logs.py")
        script.write_text(CHILD)
        child = [sys.executable, str(script), str(n)]
        wrapped = [sys.executable, "-m", "muvo_doctor", "run", "--plain", "--", *child]
        here = str(
            Path(__file__).resolve().parents[1] / "src"
        )  # this checkout's package, whatever is installed
        kinds = [("direct", child, env), ("wrapped", wrapped, dict(env, PYTHONPATH=here))]
        kinds += [(src, wrapped, dict(env, PYTHONPATH=src)) for src in args.compare]
        for mode, runner in (("pipe", run_pipe), ("pty", run_pty)):
            best = {kind: float("inf") for kind, _, _ in kinds}
            cpu = dict(best)
            blocked: dict[str, list[float]] = {kind: [] for kind, _, _ in kinds}
            outs: dict[str, bytes] = {}
            said = Path(tmp, "blocked")
            for _ in range(args.rounds):
                for kind, cmd, kind_env in kinds:
                    said.unlink(missing_ok=True)
                    t, c, out = runner(cmd, dict(kind_env, BENCH_BLOCKED=str(said)))
                    best[kind] = min(best[kind], t)
                    cpu[kind] = min(cpu[kind], c)
                    outs[kind] = out
                    if said.exists():
                        blocked[kind].append(float(said.read_text()))
            direct_file = Path(tmp, f"{mode}.direct")
            direct_file.write_bytes(outs["direct"])
            for kind, _, _ in kinds[1:]:
                wrapped_file = Path(tmp, f"{mode}.wrapped")
                wrapped_file.write_bytes(child_part(outs[kind]) if mode == "pty" else outs[kind])
                same = _same(mode, direct_file, wrapped_file)
                ratio = best["direct"] / best[kind]
                if kind == "wrapped":
                    ok &= same and ratio >= args.target
                size = len(outs["direct"]) / 1e6
                verdict = f"identical ({size:.1f} MB, cmp)" if same else "DIFFER (cmp)"
                own = cpu[kind] - cpu["direct"]
                times = f"{best['direct']:>10.2f}{best[kind]:>11.2f}{ratio:>7.2f}x{own:>13.2f}"
                direct_w, wrapped_w = (statistics.median(blocked[k] or [math.nan]) for k in ("direct", kind))
                times += f"{direct_w:>11.2f} /{wrapped_w:>5.2f}"
                label = "" if kind == "wrapped" else f"  wrapped by {kind}"
                print(f"{mode:<6}{times}  {verdict}{label}", flush=True)
    print(f"target >= {args.target:g}x and identical bytes: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

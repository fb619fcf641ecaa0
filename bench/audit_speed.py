"""How fast `muvo-doctor audit` reads a large text log, next to a naive per-line regex loop.

Generates a ~200 MB console log in a temp dir (tqdm bars with carriage-return rewrites and a
postfix, a logging line every few batches, an epoch summary), then, each in a fresh child
process so peak memory (ru_maxrss) is its own:
  1. the full audit (`muvo-doctor audit --json LOG`: read, check, report),
  2. the text reader alone (read_text into a History),
  3. a naive reference: `for line in f: for m in re.finditer(KV, line)` with float() per match.

    python bench/audit_speed.py [--mb 200] [--keep]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CHILD = {
    "audit": (
        "import sys\n"
        "from muvo_doctor.cli import main\n"
        "sys.stdout = open('/dev/null', 'w')\n"
        "rc = main(['audit', '--json', sys.argv[1]])\n"
        "assert rc in (0, 1), rc\n"
    ),
    "reader": (
        "import sys\n"
        "from muvo_doctor.history import History\n"
        "from muvo_doctor.logs.text import read_text\n"
        "h = History()\n"
        "st = read_text(sys.argv[1], h.add_point)\n"
        "assert st.points > 0\n"
    ),
    "naive": (
        "import re, sys\n"
        "rx = re.compile(r'([A-Za-z_][\\w/]*)\\s*[:=]\\s*([-+]?\\d+(?:\\.\\d*)?(?:[eE][-+]?\\d+)?)(%?)')\n"
        "vals = {}\n"
        "with open(sys.argv[1], encoding='utf-8', errors='replace') as f:\n"
        "    for line in f:\n"
        "        for m in rx.finditer(line):\n"
        "            vals.setdefault(m.group(1), []).append(float(m.group(2)))\n"
        "assert vals\n"
    ),
}
_MEASURE = (
    "import resource, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "subprocess.run([sys.executable, '-c', sys.argv[1], sys.argv[2]], check=True)\n"
    "dt = time.perf_counter() - t\n"
    "ru = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print(dt, ru.ru_maxrss, ru.ru_utime + ru.ru_stime)\n"
)


def write_log(path: Path, mb: float, seed: int = 0) -> int:
    """A tqdm-style training log of about ``mb`` megabytes; returns its size in bytes."""
    rng = random.Random(seed)
    target = int(mb * 1e6)
    batches, epochs = 525, 100_000  # epochs: only the printed total; the loop stops at the size
    size = 0
    with open(path, "w", encoding="utf-8", newline="") as f:
        for ep in itertools.count(1):
            base = 0.33 + 0.03 * math.exp(-ep / 5)
            parts = []
            for b in range(0, batches + 1, 5):
                pct = 100 * b // batches
                bar = "█" * (pct // 10) + " " * (10 - pct // 10)
                loss = base + rng.gauss(0, 0.02)
                acc = 100 * (0.9 + rng.gauss(0, 0.01))
                parts.append(
                    f"Epoch {ep}/{epochs}: {pct:3d}%|{bar}| {b}/{batches} [00:{b // 21:02d}<00:10, 21.3it/s, "
                    f"loss={loss:.4f}, acc={acc:.1f}%, avg_score={0.1 + rng.gauss(0, 0.01):.4f}]\r"
                )
                if b % 100 == 0 and b:
                    parts.append(f"\nINFO step {ep * batches + b} loss: {loss:.4f} lr: 1.000e-03\n")
            parts.append("\n")
            parts.append(
                f"Epoch {ep}/{epochs} - Loss: {base:.4f}  Accuracy: {89.9 + rng.gauss(0, 0.05):.2f}%\n"
            )
            chunk = "".join(parts)
            f.write(chunk)
            size += len(chunk.encode("utf-8"))
            if size >= target:
                break
    return path.stat().st_size


def write_dense_log(path: Path, mb: float, seed: int = 0) -> int:
    """A log where every line is a record (``step N loss: x acc: y% lr: z``): the reader's worst case."""
    rng = random.Random(seed)
    target = int(mb * 1e6)
    size = step = 0
    with open(path, "w", encoding="utf-8") as f:
        while size < target:
            lines = []
            for _ in range(10_000):
                loss = 0.3 + 0.7 * math.exp(-step / 1e6) + rng.gauss(0, 0.02)
                lines.append(f"step {step} loss: {loss:.4f} acc: {90 + rng.gauss(0, 1):.2f}% lr: 1.000e-03\n")
                step += 1
            chunk = "".join(lines)
            f.write(chunk)
            size += len(chunk)
    return path.stat().st_size


def measure(kind: str, log: Path) -> tuple[float, float, float]:
    """(wall seconds, peak MB, CPU seconds) of one child process doing ``kind`` over ``log``.

    CPU seconds (user + system) are reported too: on a shared machine wall time depends on the load.
    """
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, _CHILD[kind], str(log)], check=True, capture_output=True, text=True
    ).stdout.split()
    return float(out[0]), int(out[1]) / 1024, float(out[2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=200.0, help="log size in MB (default 200)")
    ap.add_argument("--keep", action="store_true", help="keep the generated log and print its path")
    ap.add_argument("--only", nargs="+", choices=sorted(_CHILD), help="measure only these (default: all)")
    ap.add_argument("--dense", action="store_true", help="a log where every line is a record (no tqdm)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="audit_speed_"))
    log = tmp / "train.log"
    t = time.perf_counter()
    size = (write_dense_log if args.dense else write_log)(log, args.mb)
    print(f"generated {size / 1e6:.1f} MB in {time.perf_counter() - t:.1f} s: {log if args.keep else ''}")
    results = {}
    mb = size / 1e6
    for kind in args.only or ("audit", "reader", "naive"):
        sec, peak, cpu = measure(kind, log)
        results[kind] = {
            "seconds": round(sec, 2),
            "mb_per_s": round(mb / sec, 1),
            "cpu_seconds": round(cpu, 2),
            "mb_per_cpu_s": round(mb / cpu, 1),
            "peak_mb": round(peak),
        }
        print(
            f"{kind:7s} {sec:7.2f} s wall {mb / sec:7.1f} MB/s | {cpu:7.2f} s CPU {mb / cpu:7.1f} MB/s | "
            f"peak {peak:5.0f} MB"
        )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(json.dumps({"bytes": size, "cpus": os.cpu_count(), "load_avg_1m": round(load, 2), **results}))
    if not args.keep:
        log.unlink()
        tmp.rmdir()


if __name__ == "__main__":
    main()

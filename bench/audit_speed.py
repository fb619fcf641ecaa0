"""How fast `muvo-doctor audit` reads large logs, next to a naive loop over the same file.

For each format (a tqdm console log, dense JSON lines, a dense Lightning-style CSV) a log of about
``--mb`` MB is generated in a temp dir, then each of these runs in a fresh child process (so peak
memory, ru_maxrss, is its own), ``--repeat`` times in turn (audit, naive, audit, ...), the best run
kept and the spread over the rounds printed:
  1. the full audit (`muvo-doctor audit --json LOG`: read, check, report),
  2. the reader alone (the format's reader into a History; with ``--only reader``),
  3. a naive reference loop: for the console log ``re.finditer(KV, line)`` with float() per match;
     for JSON lines ``json.loads`` per line; for CSV ``csv.DictReader`` with float() per cell.
MB/s are given per wall second and per CPU second (user + system of the child): on a shared
machine wall time depends on the load, CPU time much less. ``--rss-gb 1`` also audits a 1 GB
log of each format once and reports its peak memory (generating one takes a minute or two).

    python bench/audit_speed.py [--mb 200] [--formats console jsonl csv] [--repeat 3] [--rss-gb 1]
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
from collections.abc import Callable
from pathlib import Path

_CHILD = {
    "audit": (
        "import sys\n"
        "from muvo_doctor.cli import main\n"
        "sys.stdout = open('/dev/null', 'w')\n"
        "rc = main(['audit', '--json', sys.argv[1]])\n"
        "assert rc in (0, 1, 3), rc\n"
    ),
    "reader": (
        "import sys\n"
        "from pathlib import Path\n"
        "from muvo_doctor.core.history import History\n"
        "from muvo_doctor.logs import LogSource, load\n"
        "h = History()\n"
        "fmt, st = load(LogSource(sys.argv[1], [Path(sys.argv[1])]), h.add_point)\n"
        "assert st.points > 0\n"
    ),
}
# The naive reference of each format: what a short script would do to get the numbers out.
_NAIVE = {
    "console": (
        "import re, sys\n"
        "rx = re.compile(r'([A-Za-z_][\\w/]*)\\s*[:=]\\s*([-+]?\\d+(?:\\.\\d*)?(?:[eE][-+]?\\d+)?)(%?)')\n"
        "vals = {}\n"
        "with open(sys.argv[1], encoding='utf-8', errors='replace') as f:\n"
        "    for line in f:\n"
        "        for m in rx.finditer(line):\n"
        "            vals.setdefault(m.group(1), []).append(float(m.group(2)))\n"
        "assert vals\n"
    ),
    "jsonl": (
        "import json, sys\n"
        "vals = {}\n"
        "with open(sys.argv[1], encoding='utf-8') as f:\n"
        "    for line in f:\n"
        "        for k, v in json.loads(line).items():\n"
        "            if isinstance(v, (int, float)):\n"
        "                vals.setdefault(k, []).append(v)\n"
        "assert vals\n"
    ),
    "csv": (
        "import csv, sys\n"
        "vals = {}\n"
        "with open(sys.argv[1], encoding='utf-8', newline='') as f:\n"
        "    for row in csv.DictReader(f):\n"
        "        for k, v in row.items():\n"
        "            if v:\n"
        "                vals.setdefault(k, []).append(float(v))\n"
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


def _write_steps(
    path: Path, mb: float, lines_of: Callable[[int, float, random.Random], list[str]], head: str = ""
) -> int:
    """About ``mb`` megabytes of ``head`` then ``lines_of(step, loss)`` for steps 0, 1, ... (a slowly
    falling loss with noise, seeded); returns the size in bytes."""
    rng = random.Random(0)
    target = int(mb * 1e6)
    step = 0
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(head)
        size = len(head)
        while size < target:
            lines = []
            for _ in range(10_000):
                loss = 0.3 + 0.7 * math.exp(-step / 1e6) + rng.gauss(0, 0.02)
                lines += lines_of(step, loss, rng)
                step += 1
            chunk = "".join(lines)
            f.write(chunk)
            size += len(chunk)
    return path.stat().st_size


def write_dense_log(path: Path, mb: float) -> int:
    """A log where every line is a record (``step N loss: x acc: y% lr: z``): the reader's worst case."""
    return _write_steps(
        path,
        mb,
        lambda step, loss, rng: [
            f"step {step} loss: {loss:.4f} acc: {90 + rng.gauss(0, 1):.2f}% lr: 1.000e-03\n"
        ],
    )


def measure(code: str, log: Path) -> tuple[float, float, float]:
    """(wall seconds, peak MB, CPU seconds) of one child process running ``code`` over ``log``.

    CPU seconds (user + system) are reported too: on a shared machine wall time depends on the load.
    """
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, code, str(log)], check=True, capture_output=True, text=True
    ).stdout.split()
    return float(out[0]), int(out[1]) / 1024, float(out[2])


def write_jsonl(path: Path, mb: float) -> int:
    """Dense JSON lines, one training record per step (step, loss, acc, lr, epoch) and an
    evaluation record every 1,000 steps, numbers as a Python logger writes them."""

    def lines_of(step: int, loss: float, rng: random.Random) -> list[str]:
        lr = 1e-3 * 0.999 ** (step // 1000)
        out = [
            f'{{"step": {step}, "loss": {loss:.6f}, "acc": {0.9 + rng.gauss(0, 0.01):.4f}, '
            f'"lr": {lr!r}, "epoch": {round(step / 5000, 3)!r}}}\n'
        ]
        if step % 1000 == 999:
            out.append(f'{{"step": {step}, "val_loss": {loss + 0.05:.6f}, "val_acc": 0.8912}}\n')
        return out

    return _write_steps(path, mb, lines_of)


def write_csv(path: Path, mb: float) -> int:
    """A dense Lightning-style metrics.csv: a training row per step (floats as reprs), a validation
    row every 1,000 steps with the training columns empty."""

    def lines_of(step: int, loss: float, rng: random.Random) -> list[str]:
        lr = 1e-3 * 0.999 ** (step // 1000)
        out = [f"{step},{step // 5000},{loss!r},{0.9 + rng.gauss(0, 0.01)!r},{lr!r},,\n"]
        if step % 1000 == 999:
            out.append(f"{step},{step // 5000},,,,{loss + 0.05!r},{0.89 + rng.gauss(0, 0.01)!r}\n")
        return out

    return _write_steps(path, mb, lines_of, head="step,epoch,train_loss,train_acc,lr-Adam,val_loss,val_acc\n")


TARGET_MB_S = {"console": 100, "jsonl": 40, "csv": 40}  # audit, per CPU second; and >= 3x the naive loop
WRITERS = {"console": write_log, "jsonl": write_jsonl, "csv": write_csv, "dense": write_dense_log}
_SUFFIX = {"console": ".log", "jsonl": ".jsonl", "csv": ".csv", "dense": ".log"}


def bench(fmt: str, mb: float, kinds: list[str], repeat: int, keep: bool) -> dict[str, object]:
    """Generate one log and measure each kind on it, ``repeat`` times interleaved, the best kept."""
    tmp = Path(tempfile.mkdtemp(prefix="audit_speed_"))
    log = tmp / f"train{_SUFFIX[fmt]}"
    t = time.perf_counter()
    size = WRITERS[fmt](log, mb)
    print(f"{fmt}: generated {size / 1e6:.1f} MB in {time.perf_counter() - t:.1f} s {log if keep else ''}")
    out: dict[str, object] = {"bytes": size}
    mbs = size / 1e6
    try:
        # the kinds alternate (audit, naive, audit, naive, ...): a change in the machine's load
        # falls on both sides of the ratio
        got: dict[str, list[tuple[float, float, float]]] = {kind: [] for kind in kinds}
        for _ in range(repeat):
            for kind in kinds:
                got[kind].append(measure(_NAIVE[fmt] if kind == "naive" else _CHILD[kind], log))
        for kind, runs in got.items():
            best_cpu = min(r[2] for r in runs)
            best_wall = min(r[0] for r in runs)
            peak = max(r[1] for r in runs)
            out[kind] = {
                "seconds": round(best_wall, 2),
                "mb_per_s": round(mbs / best_wall, 1),
                "cpu_seconds": round(best_cpu, 2),
                "mb_per_cpu_s": round(mbs / best_cpu, 1),
                "peak_mb": round(peak),
            }
            print(
                f"  {kind:7s} {best_wall:7.2f} s wall {mbs / best_wall:7.1f} MB/s | {best_cpu:7.2f} s CPU "
                f"{mbs / best_cpu:7.1f} MB/s | peak {peak:5.0f} MB   (best of {repeat})"
            )
        if "audit" in out and "naive" in out:
            a, nv = out["audit"], out["naive"]
            assert isinstance(a, dict) and isinstance(nv, dict)
            out["x_naive_cpu"] = round(nv["cpu_seconds"] / a["cpu_seconds"], 2)
            out["x_naive_wall"] = round(nv["seconds"] / a["seconds"], 2)
            print(f"  audit vs naive: {out['x_naive_cpu']}x (CPU), {out['x_naive_wall']}x (wall)")
            # the spread: each round's audit against the naive loop that ran right after it
            pairs = sorted(n[2] / r[2] for r, n in zip(got["audit"], got["naive"], strict=True))
            audit_mbs = sorted(mbs / r[2] for r in got["audit"])
            out["x_naive_cpu_rounds"] = [round(x, 2) for x in pairs]
            out["audit_mb_per_cpu_s_rounds"] = [round(x, 1) for x in audit_mbs]
            print(
                f"  per round: audit {audit_mbs[0]:.1f}-{audit_mbs[-1]:.1f} MB per CPU s, "
                f"{pairs[0]:.2f}-{pairs[-1]:.2f}x naive (median {pairs[len(pairs) // 2]:.2f}x)"
            )
            if fmt in TARGET_MB_S:  # issue 12's done-when
                want, got = TARGET_MB_S[fmt], a["mb_per_cpu_s"]
                print(
                    f"  target: >= {want} MB/s {'met' if got >= want else 'NOT met'} ({got} per CPU second); "
                    f">= 3x naive {'met' if out['x_naive_cpu'] >= 3 else 'NOT met'} ({out['x_naive_cpu']}x CPU)"
                )
    finally:
        if not keep:
            log.unlink()
            tmp.rmdir()
    return out


def _compile_package() -> None:
    """Write muvo_doctor's bytecode cache, as ``pip install`` does, before anything is timed.

    Under ``PYTHONDONTWRITEBYTECODE=1`` (some sandboxes and containers set it) a source checkout never caches
    the modules it compiles, so every audit would recompile the package: ~0.1 s of a 2 s audit that an
    installed package does not pay. The audits still run with the caller's environment.
    """
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("muvo_doctor")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("audit_speed.py: muvo_doctor is not importable; run `make setup` first")
    for where in spec.submodule_search_locations:
        compileall.compile_dir(where, quiet=1)
    print(f"bytecode of muvo_doctor cached (compileall {', '.join(spec.submodule_search_locations)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=200.0, help="log size in MB (default 200)")
    ap.add_argument("--formats", nargs="+", choices=sorted(WRITERS), default=["console", "jsonl", "csv"])
    ap.add_argument("--only", nargs="+", choices=[*sorted(_CHILD), "naive"], help="default: audit naive")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each, the best kept (default 3)")
    ap.add_argument("--keep", action="store_true", help="keep the generated logs and print their paths")
    ap.add_argument("--rss-gb", type=float, default=0.0, help="also audit a log this large once, per format")
    args = ap.parse_args()
    kinds = args.only or ["audit", "naive"]
    _compile_package()
    results: dict[str, object] = {}
    for fmt in args.formats:
        results[fmt] = bench(fmt, args.mb, kinds, args.repeat, args.keep)
    for fmt in args.formats if args.rss_gb else []:
        results[f"rss_{fmt}"] = got = bench(fmt, args.rss_gb * 1000, ["audit"], 1, args.keep)
        peak = got["audit"]["peak_mb"]  # type: ignore[index]
        print(
            f"  peak memory auditing {args.rss_gb:g} GB of {fmt}: {peak} MB "
            f"({'under' if peak < 200 else 'OVER'} 200 MB)"
        )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(json.dumps({"cpus": os.cpu_count(), "load_avg_1m": round(load, 2), **results}))


if __name__ == "__main__":
    main()

"""How long reading every series of a full History takes after one new point (what each check pass pays).

    python bench/history_reads.py [--series 70] [--points 20000] [--repeats 10]

Fills a History with ``--series`` series of ``--points`` points, then times passes that add one point and
read every series back: the median over the repeats. Target: well under 20 ms a pass at 70 x 20,000
(reads are views of arrays that are never rebuilt; rebuilding them cost ~100 ms a pass).
tests/doctor/test_history.py checks that reads reuse the arrays; this script measures what that buys.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from muvo_doctor.core.history import History  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=70)
    ap.add_argument("--points", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()

    h = History()
    names = [f"grad/norm/m{i}" for i in range(args.series)]
    steps = np.arange(args.points)
    values = np.random.default_rng(0).random(args.points)
    for name in names:
        h.add_points(name, steps, values)
        h.series(name)
    passes = []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        h.add_point(names[0], args.points + r, 9.0)
        for name in names:
            h.series(name)
        passes.append(time.perf_counter() - t0)
    print(
        f"{args.series} series x {args.points:,} points: median {statistics.median(passes) * 1e3:.2f} ms "
        f"per pass (add one point, read every series), over {args.repeats} passes"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

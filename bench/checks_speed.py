"""How long one evaluation of every check takes on a full history (what a live run pays per grid step).

    python bench/checks_speed.py [--points 20000] [--repeats 5]

Fills a History with a learning run's signals (loss, accuracy, labels, gradient norms per module,
outputs, learning rate, evaluations every 50 steps), then times Doctor.evaluate() over it: the median of
the repeats and the share of each check. Target: well under a second at 20,000 points, since the
Doctor evaluates on a grid (every 25 steps, growing to 2% of the steps seen) in the training process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from muvo_doctor.core.config import DoctorConfig  # noqa: E402
from muvo_doctor.core.doctor import Doctor  # noqa: E402
from muvo_doctor.core.history import History  # noqa: E402


def learning_run(n: int, seed: int = 0) -> History:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    decay = np.exp(-t / (n / 5))
    signals = {
        "train/loss": 0.25 + 0.45 * decay + rng.normal(0, 0.04, n).clip(-0.1, 0.2),
        "train/acc": np.clip(0.95 - 0.2 * decay + rng.normal(0, 0.05, n), 0, 1),
        "label/positive_fraction": rng.binomial(32, 0.3, n) / 32,
        "grad/norm/total": 1.0 + rng.normal(0, 0.1, n),
        "grad/norm/enc.0": 0.3 + rng.normal(0, 0.03, n),
        "grad/norm/head.0": 0.8 + rng.normal(0, 0.08, n),
        "output/std": 1.5 + rng.normal(0, 0.1, n),
        "output/mean": -1.0 + rng.normal(0, 0.1, n),
        "output/saturated": np.full(n, 0.05),
        "grad/stale": np.zeros(n),
        "param/frozen": np.zeros(n),
        "optim/lr": np.full(n, 1e-3),
    }
    h = History()
    for name, values in signals.items():
        for i, v in enumerate(values):
            h.add_point(name, i, float(v))
    for i in range(49, n, 50):
        e = i // 50
        h.add_point("val/loss", i, float(0.3 + 0.3 * np.exp(-e / 3)))
        h.add_point("val/auroc", i, float(0.8 + 0.15 * (1 - np.exp(-e / 3))))
    return h


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    doc = Doctor(DoctorConfig())
    doc.history = learning_run(args.points)
    per_check: dict[str, list[float]] = {m.ID: [] for m in doc.checks}
    totals = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for mod in doc.checks:
            c0 = time.perf_counter()
            mod.check(doc.history, doc.config)
            per_check[mod.ID].append(time.perf_counter() - c0)
        doc.evaluate()
        totals.append(time.perf_counter() - t0)
    evaluate = statistics.median(totals) / 2  # each repeat ran every check twice: alone, then in evaluate()
    print(
        f"{args.points:,} points x {len(doc.history.names())} series: one evaluation {evaluate * 1e3:.1f} ms"
    )
    for cid, ts in sorted(per_check.items(), key=lambda kv: -statistics.median(kv[1]))[:8]:
        print(f"  {cid:22s} {statistics.median(ts) * 1e3:7.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

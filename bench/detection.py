"""Detection benchmark: every muvo_model fault and healthy runs, trained in-process under the doctor.

    python bench/detection.py                       # all faults (1 seed) + healthy: 5 seeds x 2 configs
    python bench/detection.py --faults random-labels,zero-lr --seeds 2 --workers 2
    python bench/detection.py --save /tmp/hist      # also pickle each run's history (offline tuning)

Each run is a small ``muvo_model.train.train`` (32 px images, 256 points, width 32, 300 steps, batch 16,
one CPU thread) with the default doctor. A thin ``Doctor`` subclass notes the step at which each check
first reported (the history's last step at that evaluation), so "steps after onset" is the detection
latency a user would see, not the step the check later attributes the problem to.

Loss-input statistics (``loss_input/logits/*``) come from ``muvo-train``'s own Recorder, which hooks the
frame loss's ``nn.BCEWithLogitsLoss`` module (found by a global forward hook in the first steps): nothing
is emulated here.

Healthy configurations: ``balanced`` (the default anomaly fraction, about 1/3 positive frames) and
``rare10`` (about 10% positive frames, with pos_weight, which still learns: val AUROC is printed).
A false alarm is any warning or critical finding on a healthy run, counted two ways: one that still
holds at the end (the report's verdict is wrong), and one that held for a while and was resolved
before the end (the live verdict was wrong for a while: a slow start that looked like a dead run).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pickle
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

SMALL = [
    "data.train_frames=384",
    "data.val_frames=128",
    "data.image_size=32",
    "data.points=256",
    "model.width=32",
    "train.batch_size=16",
    "train.eval_every=50",
    "train.log_every=25",
    "train.threads=1",
]
FLUSH_SAMPLED = 5  # doctor evaluations every 5 sampled steps (50 optimizer steps at the default sampling)
CONFIGS = {
    "balanced": [],
    "rare10": ["data.anomaly_fraction=0.12"],  # about 10% positive frames (the prior is printed)
}


def run_one(fault: str, config: str, seed: int, steps: int, save: str | None) -> dict[str, Any]:
    """Train one run under the doctor; return what it found and when."""
    import torch

    torch.set_num_threads(1)
    import muvo_doctor.core.doctor as doctor_mod
    from muvo_model.config import load_run_config
    from muvo_model.faults import get_fault
    from muvo_model.train import train

    first: dict[str, tuple[int, str]] = {}
    doctors: list[Any] = []

    class Probe(doctor_mod.Doctor):
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, **k)
            doctors.append(self)

        def evaluate(self) -> list[Any]:
            changed = super().evaluate()
            for f in changed:
                if f.severity != "info" and f.check not in first:
                    first[f.check] = (self.history.last_step, f.severity)
            return changed

    doctor_mod.Doctor = Probe  # train() imports Doctor from the module at call time
    # A fixed evaluation cadence, independent of machine load: the recorder samples heavy statistics
    # every 10th step by default and flushes (feeding the doctor) every 5 sampled steps = 50 steps;
    # the 5-second timer is switched off so a slow or busy machine does not evaluate more often.
    toml = Path(save or os.environ.get("TMPDIR", "/tmp")) / f"detection_doctor_{os.getpid()}.toml"
    toml.parent.mkdir(parents=True, exist_ok=True)
    toml.write_text(f"flush_every = {FLUSH_SAMPLED}\nflush_seconds = 1e9\n", encoding="utf-8")
    overrides = [
        *SMALL,
        *CONFIGS[config],
        f"train.steps={steps}",
        f"train.seed={seed}",
        f"data.seed={seed}",
        f"doctor.config={json.dumps(str(toml))}",
    ]
    cfg = load_run_config(None, overrides)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        result = train(cfg, fault=get_fault(fault))
    wall = time.perf_counter() - t0
    doc = doctors[0]
    rep = doc.report(steps=steps)
    if save:
        h = doc.history
        data = {n: (h.series(n).steps, h.series(n).values, h.series(n).digits) for n in h.names()}
        Path(save).mkdir(parents=True, exist_ok=True)
        with open(Path(save) / f"{fault}_{config}_{seed}.pkl", "wb") as fh:
            pickle.dump(data, fh)
    return {
        "fault": fault,
        "config": config,
        "seed": seed,
        "verdict": rep.verdict,
        "first": first,
        "findings": [(f.check, f.severity, f.step, f.message, f.resolved_step) for f in rep.findings],
        "val_auroc": result.metrics.get("val_auroc"),
        "prior": result.metrics.get("train_prior"),
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> int:
    from muvo_model.faults import FAULTS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--faults", default=",".join(FAULTS), help="comma-separated fault names (default: all)")
    p.add_argument("--fault-seeds", type=int, default=1, help="seeds per fault (default 1)")
    p.add_argument("--seeds", type=int, default=5, help="seeds per healthy config (default 5)")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps per run (default 300)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="parallel runs")
    p.add_argument("--save", metavar="DIR", help="pickle each run's history here")
    p.add_argument("--json", metavar="PATH", help="also write the raw results as JSON")
    args = p.parse_args(argv)
    faults = [f for f in args.faults.split(",") if f]
    unknown = [f for f in faults if f not in FAULTS and f != "none"]
    if unknown:
        print(
            f"detection.py: unknown fault(s) {', '.join(unknown)}; known: {', '.join(FAULTS)}",
            file=sys.stderr,
        )
        return 2
    jobs = [
        (f, "balanced", s, args.steps, args.save)
        for f in faults
        if f != "none"
        for s in range(args.fault_seeds)
    ]
    jobs += [("none", c, s, args.steps, args.save) for c in CONFIGS for s in range(args.seeds)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        results = list(pool.map(run_one, *zip(*jobs, strict=True)))
    wall = time.perf_counter() - t0
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    print_table(results, FAULTS)
    print(f"\n{len(results)} runs, {args.steps} steps each, {wall:.0f} s wall with {args.workers} workers")
    return 0


def print_table(results: list[dict[str, Any]], faults: dict[str, Any]) -> None:
    rows = [
        ("fault", "expected check", "found", "first step found", "steps after onset", "verdict", "also found")
    ]
    latencies = []
    for r in results:
        if r["fault"] == "none":
            continue
        fault = faults[r["fault"]]()
        hit = [c for c in fault.checks if c in r["first"]]
        main = hit[0] if hit else fault.checks[0]
        step = r["first"][main][0] if hit else None
        after = step - fault.onset if step is not None else None
        if after is not None:
            latencies.append(after)
        others = sorted(c for c in r["first"] if c != main)
        rows.append(
            (
                f"{r['fault']} (seed {r['seed']})",
                f"{main}" + (f" of {'/'.join(fault.checks)}" if len(fault.checks) > 1 else ""),
                "yes" if hit else "NO",
                "-" if step is None else str(step),
                "-" if after is None else str(after),
                r["verdict"],
                ", ".join(others) or "-",
            )
        )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if latencies:
        print(
            f"\nmedian detection latency: {statistics.median(latencies):.0f} steps after onset (n={len(latencies)})"
        )
    print(
        "\nhealthy runs (false alarm = any warning or critical finding; 'resolved' = held for a while, then cleared)"
    )
    alarms = transient = 0
    for r in results:
        if r["fault"] != "none":
            continue
        bad = [(c, s, m, res) for c, s, _, m, res in r["findings"] if s != "info"]
        alarms += any(res is None for *_, res in bad)
        transient += bool(bad) and all(res is not None for *_, res in bad)
        auroc = r["val_auroc"]
        print(
            f"  {r['config']:8s} seed {r['seed']}: verdict {r['verdict']:12s} prior {r['prior']:.3f} "
            f"val AUROC {auroc:.3f}  "
            + (
                "; ".join(
                    f"{s} {c}{'' if res is None else f' (resolved at {res})'}: {m[:110]}"
                    for c, s, m, res in bad
                )
                or "no false alarm"
            )
        )
    n = sum(r["fault"] == "none" for r in results)
    print(
        f"false alarms: {alarms} of {n} healthy runs at the end; {transient} more held for a while and were resolved"
    )


if __name__ == "__main__":
    sys.exit(main())

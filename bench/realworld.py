"""Score `muvo-doctor audit --json` on a folder of labelled real training logs.

    python bench/realworld.py CORPUS_DIR [--only 003.log,019.csv] [--verbose]

CORPUS_DIR holds the logs and a LABELS.json: a list of objects with ``file`` (path relative to the
folder), ``verdict`` (healthy | unhealthy | dead | no_records) and ``problems`` (check ids). Each
log is audited in its own process, exactly as a user would run it, and scored per log:

- healthy: the verdict is not ``dead`` and no finding is ``critical``;
- unhealthy: the verdict is ``warning`` or ``dead`` and some finding's check is in ``problems``;
- dead: the verdict is ``dead`` and some finding's check is in ``problems`` (or none are named);
- no_records: exit code 2, or the verdict ``inconclusive``.

A traceback on stderr fails the case. Prints one line per log and the score by label group.
Findings resolved before the end (``resolved_step`` set) do not count as holding.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

GROUPS = ("healthy", "unhealthy", "dead", "no_records")


def audit(path: Path) -> tuple[int, list[dict], str]:
    proc = subprocess.run(
        [sys.executable, "-m", "muvo_doctor", "audit", "--json", str(path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    reports: list[dict] = []
    if proc.stdout.strip():
        try:
            got = json.loads(proc.stdout)
            reports = got if isinstance(got, list) else [got]
        except ValueError:
            pass
    return proc.returncode, reports, proc.stderr


def _holding(report: dict) -> list[dict]:
    return [f for f in report.get("findings", []) if f.get("resolved_step") is None]


def score(label: dict, rc: int, reports: list[dict], stderr: str) -> tuple[bool, str]:
    """(passed, one-line summary of what the doctor said)."""
    if "Traceback (most recent call last)" in stderr:
        return False, "traceback: " + stderr.strip().splitlines()[-1][:120]
    want = label["verdict"]
    problems = set(label.get("problems") or [])
    if not reports:
        said = f"exit {rc}: {stderr.strip().splitlines()[0][:120] if stderr.strip() else 'no report'}"
        return (want == "no_records" and rc == 2), said
    # A folder of several runs: the worst report speaks for the labelled path.
    rank = {"inconclusive": 0, "healthy": 1, "warning": 2, "dead": 3}
    rep = max(reports, key=lambda r: rank.get(r.get("verdict", "healthy"), 0))
    verdict = rep.get("verdict")
    holding = _holding(rep)
    checks = {f["check"] for f in holding}
    crit = [f["check"] for f in holding if f["severity"] == "critical"]
    said = f"{verdict} [{', '.join(f['check'] + ':' + f['severity'][0] for f in holding)}]"
    if want == "healthy":
        ok = verdict != "dead" and not crit
    elif want == "unhealthy":
        ok = verdict in ("warning", "dead") and bool(checks & problems)
    elif want == "dead":
        ok = verdict == "dead" and (not problems or bool(checks & problems))
    else:
        ok = rc == 2 or verdict == "inconclusive"
    return ok, said


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--only", default="", help="comma-separated files to score")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--verbose", action="store_true", help="print each failing case's label evidence")
    args = ap.parse_args(argv)
    labels_path = args.corpus / "LABELS.json"
    try:
        labels = json.loads(labels_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"realworld: {labels_path}: cannot read labels ({exc}); pass a folder with a LABELS.json")
        return 2
    only = {s for s in args.only.split(",") if s}
    if only:
        labels = [lb for lb in labels if lb["file"] in only]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda lb: audit(args.corpus / lb["file"]), labels))
    per_group = {g: [0, 0] for g in GROUPS}
    healthy_dead = 0
    for lb, (rc, reports, stderr) in zip(labels, results, strict=True):
        ok, said = score(lb, rc, reports, stderr)
        g = lb["verdict"]
        per_group[g][0] += ok
        per_group[g][1] += 1
        if g == "healthy" and not ok:
            healthy_dead += 1
        mark = "ok  " if ok else "FAIL"
        print(f"{mark} {lb['file']:<10} want {g:<10} {'/'.join(lb.get('problems') or []):<32} got {said}")
        if args.verbose and not ok:
            print(f"      evidence: {lb.get('evidence', '')[:400]}")
    right = sum(v[0] for v in per_group.values())
    total = sum(v[1] for v in per_group.values())
    print()
    print(
        f"score {right}/{total}  "
        + "  ".join(f"{g} {v[0]}/{v[1]}" for g, v in per_group.items() if v[1])
        + f"  (healthy called dead or critical: {healthy_dead}; {time.perf_counter() - t0:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

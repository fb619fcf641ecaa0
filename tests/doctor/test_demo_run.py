"""Real demo runs: muvo_model trains as a child under the doctor (plain lines, and tmux for the live screen).

Both need the whole chain: muvo_model.train and its faults, the child instrumentation, the checks.
The model and data are shrunk with --set so a run takes seconds on a 2-core CPU.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

# A run small enough for CI, long enough for the random-labels fault to show (its onset is step 100-180 here);
# batches of 32 keep the estimate of the label prior tight. prior_baseline needs 3 held-out AUROC
# evaluations at chance before it calls the run dead, so the run evaluates every 40 steps.
STEPS = 300
TINY = [
    "--set", "data.train_frames=64", "--set", "data.val_frames=64", "--set", "data.image_size=16",
    "--set", "data.points=64", "--set", "model.width=8", "--set", "train.batch_size=32",
    "--set", "train.log_every=10", "--set", "train.eval_every=40", "--set", "optim.warmup_steps=5",
]  # fmt: skip
ANSI = re.compile(r"\x1b\[")


def _fixed_sampling(tmp_path: Path) -> dict[str, str]:
    """The child's recorder samples every 2nd step instead of adapting to measured step time, so what
    it sees (and so the verdict) does not depend on how loaded the test machine is."""
    cfg = tmp_path / "doctor.toml"
    cfg.write_text("sample_every = 2\n")
    return {"MUVO_DOCTOR_CONFIG": str(cfg)}


def _demo_argv(*extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "muvo_doctor",
        "demo",
        "--fault",
        "random-labels",
        "--steps",
        str(STEPS),
        *TINY,
        *extra,
    ]


@pytest.mark.slow
def test_plain_demo_catches_random_labels(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    env = {**os.environ, "NO_COLOR": "1", **_fixed_sampling(tmp_path)}
    proc = subprocess.run(
        _demo_argv("--plain", "--report", str(report)), capture_output=True, text=True, env=env, timeout=600
    )
    assert not ANSI.search(proc.stdout) and not ANSI.search(proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("muvo-doctor: ")]
    assert any(re.match(r"muvo-doctor: CRITICAL prior_baseline step \d+: ", ln) for ln in lines), proc.stderr
    assert "demo: fault random-labels caught by prior_baseline" in proc.stdout
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(report.read_text())
    assert data["schema"] == "muvo-doctor/report/v1" and data["verdict"] == "dead"
    assert "prior_baseline" in [f["check"] for f in data["findings"]]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")
def test_live_dashboard_in_a_real_terminal(tmp_path: Path) -> None:
    session = f"muvo-demo-{uuid.uuid4().hex[:8]}"
    done = tmp_path / "exit_code"
    snapshot = tmp_path / "dash.svg"
    cmd = " ".join(_quote(a) for a in _demo_argv("--snapshot", str(snapshot)))
    script = f"cd {_quote(os.getcwd())}; {cmd}; echo $? > {_quote(str(done))}; sleep 600"
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TMUX")} | _fixed_sampling(tmp_path)
    env["TERM"] = "xterm-256color"
    subprocess.run(
        ["tmux", "-L", session, "new-session", "-d", "-s", session, "-x", "160", "-y", "50", script],
        check=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 600
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(1)
        screen = subprocess.run(
            ["tmux", "-L", session, "capture-pane", "-p", "-t", session, "-S", "-60"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        subprocess.run(["tmux", "-L", session, "kill-server"], capture_output=True)
    assert done.exists(), "the demo did not finish within 10 minutes:\n" + screen
    # The charts, the prior-baseline line on the loss chart, the finding, the verdict.
    for shown in ("loss", "train/loss", "prior baseline H(p)=", "gradient norm per module", "label balance"):
        assert shown in screen, f"{shown!r} not on screen:\n{screen}"
    # The rule crosses the y axis as ├ or ┼ (ticks are ┤); a noisy curve drawn near it covers some of
    # its cells, so count its dashes along the row instead of requiring them to be adjacent.
    assert re.search(r"[├┼]─(?:[^\n│]*─){2}", screen), (
        "no horizontal baseline rule on the loss chart:\n" + screen
    )
    assert re.search(r"CRITICAL\s+prior_baseline\s+step \d+", screen), screen
    assert "DEAD" in screen
    assert "demo: fault random-labels caught by prior_baseline" in screen
    assert done.read_text().strip() == "0"
    assert snapshot.read_text(encoding="utf-8").lstrip().startswith("<svg")


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)

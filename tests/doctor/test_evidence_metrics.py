"""Which metrics show learning in a log: error metrics that fall (regression, language models) count like a
loss; a classification error rate does not (it falls to the minority rate when only the prior is learnt)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from muvo_doctor.cli import main
from muvo_doctor.core.finding import Report


def audit(path: Path, capsys) -> Report:
    main(["audit", "--json", str(path)])
    return Report.model_validate(json.loads(capsys.readouterr().out))


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_regression_log_with_only_mse_that_falls_is_healthy(tmp_path, capsys) -> None:
    rows = [
        f"epoch {e} train_mse {0.5 * math.exp(-e / 8) + 0.02:.5f} val_mse {0.6 * math.exp(-e / 8) + 0.03:.5f}"
        for e in range(30)
    ]
    report = audit(write(tmp_path / "mse.log", rows), capsys)
    assert report.verdict == "healthy"
    assert report.evidence_for_health is not None and "val/mse fell" in report.evidence_for_health


def test_an_mse_that_stays_within_its_noise_is_no_evidence(tmp_path, capsys) -> None:
    rng = np.random.default_rng(0)
    rows = [
        f"epoch {e} train_mse {0.25 + rng.normal(0, 0.01):.5f} val_mse {0.26 + rng.normal(0, 0.01):.5f}"
        for e in range(30)
    ]
    report = audit(write(tmp_path / "flat.log", rows), capsys)
    assert report.verdict != "healthy" and report.evidence_for_health is None


def test_perplexity_and_an_unprefixed_psnr_count(tmp_path, capsys) -> None:
    ppl = [f"step {s} val_ppl {300 * math.exp(-s / 400) + 40:.2f}" for s in range(0, 2000, 50)]
    assert "val/ppl fell" in (audit(write(tmp_path / "lm.log", ppl), capsys).evidence_for_health or "")
    psnr = [f"iter {s} psnr {20 + 8 * (1 - math.exp(-s / 300)):.3f}" for s in range(0, 2000, 50)]
    assert "psnr rose" in (audit(write(tmp_path / "sr.log", psnr), capsys).evidence_for_health or "")


def test_an_error_rate_falling_to_the_minority_rate_is_not_learning(tmp_path, capsys) -> None:
    # 10% positives: predicting "negative" always gives error 0.10, the rate this run falls to and stays at
    rows = [f"epoch {e} val_error {0.5 if e == 0 else 0.3 if e == 1 else 0.1:.4f}" for e in range(30)]
    assert audit(write(tmp_path / "err.log", rows), capsys).evidence_for_health is None

"""Every fixture log (tests/fixtures/logs, written by make_fixtures.py) gets its expected verdict
and check ids from `muvo-doctor audit --json`."""

import json
from pathlib import Path

import pytest

from muvo_doctor.cli import main

LOGS = Path(__file__).parents[1] / "fixtures" / "logs"

# (fixture, verdict, check ids that must be present, one of these must be present)
CASES = [
    # The original team's "fixed" run: 89.9% accuracy and loss 0.33 are the 10% prior's baseline.
    ("correct_training.log", "dead", {"prior_baseline"}, set()),
    # The original broken run: a loss printed as 0.0000 for 50 epochs. The log alone cannot tell a dead
    # run from a tiny loss: the display hides it (display_precision), which is not flat_loss.
    ("original_zero_loss.log", "warning", {"display_precision"}, set()),
    ("healthy_rounds_to_zero.log", "healthy", set(), set()),
    ("healthy_aux_zero.jsonl", "healthy", set(), set()),
    ("healthy_noisy_tqdm.log", "healthy", set(), set()),
    ("lightning_metrics.csv", "healthy", set(), set()),
    ("overfitting_keras.log", "warning", {"overfitting"}, set()),
    ("trainer_state.json", "dead", {"metric_stuck"}, set()),
    ("frozen_repeating.log", "dead", {"frozen_parameters"}, set()),
    # Stuck at ln 2 with no accuracy and no class count printed: dead (the loss never moves), but K is
    # unknown, so no prior_baseline (a plateau near some ln K is no evidence).
    ("caffe_prior.log", "dead", {"loss_not_decreasing"}, set()),
    ("detectron2.log", "healthy", set(), set()),
    ("mmdet.log", "healthy", set(), set()),
    ("hf_console.log", "healthy", set(), set()),
    ("results.csv", "healthy", set(), set()),
    ("telemetry.jsonl", "dead", {"flat_loss"}, set()),
    ("tb_keras", "healthy", set(), set()),
    ("tb_torch_nan", "dead", {"nan_inf"}, set()),
]


@pytest.mark.parametrize(("name", "verdict", "required", "one_of"), CASES, ids=[c[0] for c in CASES])
def test_fixture_verdict(name, verdict, required, one_of, capsys):
    rc = main(["audit", "--json", str(LOGS / name)])
    out = capsys.readouterr()
    report = json.loads(out.out)
    ids = {f["check"] for f in report["findings"]}
    assert report["schema"] == "muvo-doctor/report/v1"
    assert report["steps"] > 0
    assert (report["verdict"], required - ids) == (verdict, set()), report["findings"]
    if name == "caffe_prior.log":
        assert "prior_baseline" not in ids
    if one_of:
        assert ids & one_of, f"expected one of {one_of}, got {ids}"
    if verdict == "healthy":
        assert all(f["severity"] == "info" for f in report["findings"])
    assert rc == (0 if verdict == "healthy" else 1)


def test_every_fixture_is_covered():
    names = {p.name for p in LOGS.iterdir() if p.name != "make_fixtures.py" and not p.name.startswith(".")}
    assert names == {c[0] for c in CASES}


def test_prior_baseline_numbers_of_the_original_run(capsys):
    main(["audit", "--json", str(LOGS / "correct_training.log")])
    report = json.loads(capsys.readouterr().out)
    f = next(f for f in report["findings"] if f["check"] == "prior_baseline")
    assert f["severity"] == "critical"
    # The plateau the original run printed (loss ~0.33, accuracy ~89.9%) is the entropy of p ~ 0.1.
    assert 0.30 < f["evidence"]["prior_entropy"] < 0.36
    assert "0.33" in f["message"]

"""Every check on weird data: never raises, stays fast, and keeps a healthy noisy run clean."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import history_of

from muvo_doctor.core.checks import ALL_CHECKS, by_id
from muvo_doctor.core.config import DoctorConfig
from muvo_doctor.core.history import History

CFG = DoctorConfig()
SIGNALS = [
    "train/loss", "val/loss", "train/acc", "val/acc", "val/auroc", "val/map", "optim/lr",
    "grad/norm/total", "grad/norm/enc.0", "grad/norm/head.0", "update/ratio/enc.0", "update/ratio/head.0",
    "param/frozen", "param/no_grad", "param/not_in_optimizer", "param/zero_lr", "grad/stale",
    "output/mean", "output/std", "output/saturated", "loss_input/logits/min", "loss_input/logits/max",
    "loss_input/logprobs/max", "label/positive_fraction", "label/classes", "label/fraction/0",
    "label/fraction/1", "nonfinite/loss", "nonfinite/grad", "printed/loss", "printed/acc",
]  # fmt: skip

WEIRD = {
    "one point": lambda n, rng: np.array([0.5]),
    "all nan": lambda n, rng: np.full(n, np.nan),
    "all inf": lambda n, rng: np.full(n, np.inf),
    "constant": lambda n, rng: np.full(n, 0.25),
    "zeros": lambda n, rng: np.zeros(n),
    "nan laden": lambda n, rng: np.where(rng.random(n) < 0.3, np.nan, rng.random(n)),
    "mixed inf": lambda n, rng: np.where(rng.random(n) < 0.1, -np.inf, rng.normal(size=n) * 1e30),
    "huge": lambda n, rng: rng.random(n) * 1e300,
    "negative": lambda n, rng: -rng.random(n) * 5,
}


@pytest.mark.parametrize("kind", list(WEIRD))
@pytest.mark.parametrize("n", [1, 2, 7, 60, 400])
def test_checks_never_raise_on_weird_data(kind: str, n: int) -> None:
    rng = np.random.default_rng(n)
    printed = {name: 4 for name in SIGNALS if name.startswith("printed/")}
    h = history_of({name: WEIRD[kind](n, rng) for name in SIGNALS}, digits=printed)
    for mod in ALL_CHECKS:
        out = mod.check(h, CFG)
        assert isinstance(out, list)
        for f in out:
            assert f.check == mod.ID


def test_ids_are_unique_and_documented() -> None:
    assert len(by_id()) == len(ALL_CHECKS) == 16
    for mod in ALL_CHECKS:
        doc = mod.__doc__ or ""
        for part in ("What it does:", "Why it matters:", "What to do:"):
            assert part in doc, (mod.ID, part)


def healthy_history(n: int, seed: int) -> History:
    """A noisy but learning run: every signal a healthy recorder emits, at sane levels."""
    rng = np.random.default_rng(seed)
    h = History()
    t = np.arange(n)
    loss = 0.25 + 0.45 * np.exp(-t / (n / 5)) + rng.normal(0, 0.04, n).clip(-0.1, 0.2)
    for i in range(n):
        h.add_point("train/loss", i, float(loss[i]))
        h.add_point(
            "train/acc",
            i,
            float(np.clip(0.75 + 0.2 * (1 - np.exp(-i / (n / 5))) + rng.normal(0, 0.05), 0, 1)),
        )
        h.add_point("label/positive_fraction", i, float(rng.binomial(32, 0.3) / 32))
        h.add_point("grad/norm/total", i, float(1.0 + rng.normal(0, 0.1)))
        h.add_point("grad/norm/enc.0", i, float(0.3 + rng.normal(0, 0.03)))
        h.add_point("grad/norm/head.0", i, float(0.8 + rng.normal(0, 0.08)))
        h.add_point("output/std", i, float(1.5 + rng.normal(0, 0.1)))
        h.add_point("output/mean", i, float(-1.0 + rng.normal(0, 0.1)))
        h.add_point("output/saturated", i, 0.05)
        h.add_point("loss_input/logits/min", i, float(-4 + rng.normal()))
        h.add_point("loss_input/logits/max", i, float(3 + rng.normal()))
        h.add_point("grad/stale", i, 0.0)
        h.add_point("param/frozen", i, 0.0)
        h.add_point("optim/lr", i, 1e-3)
        if i % 50 == 49:
            e = i // 50
            h.add_point("val/loss", i, float(0.3 + 0.3 * np.exp(-e / 3) + rng.normal(0, 0.005)))
            h.add_point("val/auroc", i, float(0.8 + 0.15 * (1 - np.exp(-e / 3))))
            h.add_point("val/acc", i, float(0.8 + 0.1 * (1 - np.exp(-e / 3)) + rng.normal(0, 0.003)))
    return h


@pytest.mark.parametrize("seed", range(5))
def test_healthy_noisy_decreasing_run_gives_nothing(seed: int) -> None:
    h = healthy_history(1500, seed)
    found = [f for mod in ALL_CHECKS for f in mod.check(h, CFG)]
    assert [f for f in found if f.severity != "info"] == []


def test_explain_prints_the_three_parts_and_thresholds(capsys: pytest.CaptureFixture[str]) -> None:
    from muvo_doctor.cli import main

    assert main(["explain", "prior_baseline"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("prior_baseline\n") and "What to do:" in out and "pb_window = 100" in out
    assert main(["explain"]) == 0
    listing = capsys.readouterr().out
    assert all(m.ID in listing for m in ALL_CHECKS)
    assert main(["explain", "no_such_check"]) == 2
    assert "valid ids: constant_output" in capsys.readouterr().err


def test_series_cache_sees_new_points() -> None:
    h = History()
    for i in range(60):
        h.add_point("train/loss", i, 0.7)
    flat = by_id()["flat_loss"]
    assert flat.check(h, CFG)[0].evidence["level"] == 0.7
    for i in range(60, 120):
        h.add_point("train/loss", i, 0.7 - 0.004 * (i - 60) + 0.01 * (i % 3))
    assert flat.check(h, CFG) == []


def test_every_check_id_of_the_contract_is_explained(capsys: pytest.CaptureFixture[str]) -> None:
    import re
    from pathlib import Path

    from muvo_doctor.cli import main

    contract = (Path(__file__).resolve().parents[2] / "docs" / "contract.md").read_text()
    ids = re.findall(r"^\| `([a-z_]+)` \|", contract, flags=re.M)
    assert "prior_baseline" in ids and "corrupt_log" in ids
    for check in ids:
        assert main(["explain", check]) == 0, check
        assert capsys.readouterr().out.startswith(f"{check}\n\n"), check

"""`muvo_doctor.watch` (the in-process recorder) judges at the same grid of steps as `run`: how often it
flushes (a wall-clock matter too) does not change the findings, their first steps or the verdict."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from muvo_doctor.core.config import DoctorConfig  # noqa: E402
from muvo_doctor.recorder import watch  # noqa: E402


def _train(flush_every: int) -> str:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # zero lr: nothing learns, findings hold
    x = torch.randn(256, 8)
    y = (torch.rand(256, 1) < 0.1).float()
    cfg = DoctorConfig(sample_every=1, flush_every=flush_every, flush_seconds=1e9)
    with watch(model, opt, config=cfg) as rec:
        for step in range(240):
            i = (step * 16) % 256
            out = model(x[i : i + 16])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(out, y[i : i + 16])
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.record(step, loss=loss, outputs=out, labels=y[i : i + 16])
    return rec.doctor.report().to_json()


def test_flush_cadence_does_not_change_the_report() -> None:
    a, b = _train(flush_every=3), _train(flush_every=50)
    assert a == b
    rep = json.loads(a)
    assert rep["verdict"] == "dead"
    # The cause heads the report, before its symptoms.
    assert rep["findings"][0]["check"] == "frozen_parameters"

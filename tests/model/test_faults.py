"""Every fault runs; the random-labels fault ends where the incident ended: at the label prior."""

from __future__ import annotations

import pytest
import torch

import muvo_model.train as train_module
from muvo_model.config import load_run_config
from muvo_model.data.frames import Frames
from muvo_model.faults import FAULTS, get_fault
from muvo_model.train import train

TINY = [
    "data.train_frames=64",
    "data.val_frames=48",
    "data.image_size=32",
    "data.points=64",
    "model.width=16",
    "train.batch_size=16",
    "train.threads=1",
    "train.log_every=2",
    "train.eval_every=4",
]


def test_every_fault_is_documented() -> None:
    for name, cls in FAULTS.items():
        f = cls()
        assert f.name == name and f.bug and f.symptom and f.doctor and f.checks
        assert name in f.describe() and f.checks[0] in f.describe()


@pytest.fixture
def cached_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Generate the tiny data set once for the whole loop of faults (generation dominates otherwise)."""
    cache: dict[str, tuple[Frames, Frames]] = {}
    real = train_module.load_data

    def load(cfg, device):  # type: ignore[no-untyped-def]
        key = cfg.data.model_dump_json()
        if key not in cache:
            cache[key] = real(cfg, device)
        tr, va = cache[key]
        return tr.index(slice(None)), va.index(slice(None))

    monkeypatch.setattr(train_module, "load_data", load)


@pytest.mark.slow
@pytest.mark.usefixtures("cached_data")
def test_every_fault_runs_a_few_steps(capsys: pytest.CaptureFixture[str]) -> None:
    runs = [(name, "fusion") for name in FAULTS]
    runs += [(n, "original") for n in ("saturating-head", "dead-relu", "frozen-params", "random-labels")]
    for name, arch in runs:
        cfg = load_run_config(None, [*TINY, "train.steps=4", f"model.arch={arch}"])
        res = train(cfg, fault=get_fault(name))
        assert len(res.losses) == 4, name
        assert res.verdict is not None  # the doctor ran to the end
    out = capsys.readouterr().out
    assert out.count("fault ") == len(runs)


def test_hidden_print_shows_zeros_while_the_loss_is_not(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_run_config(None, [*TINY, "train.steps=4", "data.points=512"])
    res = train(cfg, fault=get_fault("hidden-print"))
    out = capsys.readouterr().out
    assert "step 2 loss=0.0000 " in out and "step 4 loss=0.0000 " in out
    assert min(res.losses) > 0.05


def _frames(n: int, fill: float) -> Frames:
    p = 8
    return Frames(
        image=torch.full((n, 3, 4, 4), fill),
        points=torch.full((n, p, 4), fill),
        point_mask=torch.ones(n, p, dtype=torch.bool),
        point_class=torch.full((n, p), 30),
        point_label=torch.full((n, p), fill),
        frame_label=torch.full((n,), fill),
        scenario=torch.zeros(n, dtype=torch.long),
    )


def test_random_labels_are_redrawn_every_step_and_ignore_the_frames() -> None:
    fault = get_fault("random-labels")
    # Plain BCE and no per-point loss, as the incident's run: nothing else carries the true labels.
    assert not fault.use_pos_weight and not fault.point_loss
    torch.manual_seed(0)
    a, b = fault.labels(_frames(4000, 0.0)), fault.labels(_frames(4000, 0.0))
    assert not torch.equal(a, b)  # a new draw per step: no frame keeps a label to memorise
    assert abs(a.mean().item() - 0.1) < 0.02 and set(a.unique().tolist()) == {0.0, 1.0}
    # Same random state, different frames (all-anomaly vs all-normal): the same labels.
    torch.manual_seed(1)
    normal = fault.labels(_frames(64, 0.0))
    torch.manual_seed(1)
    assert torch.equal(fault.labels(_frames(64, 1.0)), normal)


@pytest.mark.slow
def test_random_labels_ends_at_the_prior() -> None:
    cfg = load_run_config(
        None,
        [
            "data.train_frames=128",
            "data.val_frames=192",
            "data.image_size=48",
            "data.points=256",
            "model.width=16",
            "train.batch_size=64",
            "train.threads=1",
            "train.steps=120",
            "train.log_every=40",
            "train.eval_every=120",
            "doctor.enabled=false",
        ],
    )
    m = train(cfg, fault=get_fault("random-labels")).metrics
    assert abs(m["val_auroc"] - 0.5) <= 0.05
    # Accuracy over the last log window, against the labels the run trained on (as the incident printed it).
    assert abs(m["train_acc"] - m["train_majority"]) <= 0.01
    assert 0.85 <= m["train_majority"] <= 0.95

"""The Lightning callback in a real `lightning.Trainer` fit (CPU, a tiny module, one thread).

What a user sees: a learning run ends healthy; labels drawn at random with a 10% prior end dead with
prior_baseline; ``stop_on="dead"`` ends the fit through ``trainer.should_stop`` before ``max_steps``
and Lightning's checkpoint callback has saved; the findings are in the trainer's CSV and TensorBoard
logs (read back from the files); the report is printed at the end.
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning")

from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from muvo_doctor.core.config import DoctorConfig  # noqa: E402
from muvo_doctor.integrations.lightning import DoctorCallback  # noqa: E402

pytestmark = pytest.mark.slow  # a few seconds per fit, plus Lightning's import
STEPS, BATCH = 300, 64
# A fixed sampling schedule and a flush per sample: the doctor sees the run as it goes (the default
# flushes every 5 s, longer than these runs) and the findings do not depend on the machine's speed.
# A confirmation window of 50 steps so a dead run can be stopped within 300.
CONFIG = DoctorConfig(sample_every=5, flush_every=1, confirm_dead_steps=50)


class Tiny(L.LightningModule):
    """A 2-class MLP; ``training_step`` returns the bare loss (the most common way)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self.net(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        self.log("train_loss", loss)
        self.log("train_acc", (logits.argmax(1) == y).float().mean())
        return loss

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.01)


def fit(tmp_path: Path, random_labels: bool, **callback: object) -> tuple[DoctorCallback, object, str]:
    """Fit Tiny for STEPS steps; class 1 for about 10% of the samples (from the input, or at random)."""
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(16, generator=g)
    x = torch.randn(STEPS * BATCH, 16, generator=g)
    if random_labels:
        y = (torch.rand(len(x), generator=g) < 0.1).long()
    else:
        y = (x @ w > 1.28 * w.norm()).long()  # 10% of N(0, I) lie beyond 1.28 sigma
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH, shuffle=True)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:256], y[:256]), batch_size=BATCH)
    out = io.StringIO()
    cb = DoctorCallback(config=CONFIG, stream=out, **callback)  # type: ignore[arg-type]
    loggers = [CSVLogger(tmp_path, name="csv")]
    try:
        import tensorboard  # noqa: F401
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(tmp_path, name="tb"))
    except ImportError:
        pass
    trainer = L.Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        devices=1,
        logger=loggers,
        default_root_dir=tmp_path,
        enable_model_summary=False,
        enable_progress_bar=False,
        log_every_n_steps=10,
        val_check_interval=100,
        callbacks=[cb],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on dataloader workers
        trainer.fit(Tiny(), loader, val)
    return cb, trainer, out.getvalue()


def test_a_learning_run_ends_healthy(tmp_path):
    cb, trainer, printed = fit(tmp_path, random_labels=False)
    assert cb.report is not None
    alarms = [f"{f.check} {f.severity}" for f in cb.report.findings if f.severity != "info"]
    assert cb.report.verdict == "healthy", alarms
    assert alarms == [] and cb.report.evidence_for_health
    assert trainer.global_step == STEPS
    assert "healthy:" in printed and "lightning: Tiny" in printed  # the report, printed at the end
    # What the module logged with self.log reaches the doctor at each validation (every 100 steps).
    assert cb.doctor.history.series("val/loss").steps.tolist() == [100, 200, 300]
    assert cb.doctor.history.series("train/acc").steps.tolist() == [100, 200, 300]


@pytest.fixture(scope="module")
def dead_run(tmp_path_factory):
    """Random labels at a 10% prior, stop_on="dead": one fit shared by the tests below."""
    tmp = tmp_path_factory.mktemp("lightning-dead")
    cb, trainer, printed = fit(tmp, random_labels=True, stop_on="dead")
    return tmp, cb, trainer, printed


def test_random_labels_at_a_10_percent_prior_end_dead_with_prior_baseline(dead_run):
    _, cb, _, printed = dead_run
    assert cb.report.verdict == "dead"
    critical = {f.check for f in cb.report.findings if f.severity == "critical" and f.resolved_step is None}
    assert "prior_baseline" in critical
    assert "CRITICAL prior_baseline" in printed and "dead:" in printed


def test_stop_on_dead_ends_the_fit_through_lightning_and_a_checkpoint_is_saved(dead_run):
    tmp, cb, trainer, _ = dead_run
    assert cb.session.stopped is not None and "prior_baseline" in cb.session.stopped
    assert trainer.should_stop and trainer.global_step < STEPS
    ckpts = list(tmp.rglob("*.ckpt"))
    assert len(ckpts) == 1 and f"step={trainer.global_step}" in ckpts[0].name
    state = torch.load(ckpts[0], weights_only=True)
    assert state["global_step"] == trainer.global_step


def test_the_findings_are_in_the_csv_log(dead_run):
    tmp, _, trainer, _ = dead_run
    (path,) = (tmp / "csv").rglob("metrics.csv")
    rows = list(csv.DictReader(path.open()))
    verdicts = [(int(r["step"]), float(r["doctor/verdict"])) for r in rows if r.get("doctor/verdict")]
    assert verdicts and verdicts[-1][1] == 3.0  # dead
    prior = [
        float(r["doctor/finding/prior_baseline"]) for r in rows if r.get("doctor/finding/prior_baseline")
    ]
    assert prior and prior[-1] == 3.0  # critical
    assert all(step <= trainer.global_step for step, _ in verdicts)


def test_the_findings_are_in_the_tensorboard_log_as_scalar_and_text(dead_run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    tmp, _, _, _ = dead_run
    (events,) = (tmp / "tb").rglob("events.out.tfevents.*")
    acc = EventAccumulator(os.fspath(events), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    assert acc.Scalars("doctor/verdict")[-1].value == 3.0
    texts = [
        make_ndarray(e.tensor_proto).item().decode()
        for e in acc.Tensors("doctor/prior_baseline/text_summary")
    ]
    assert any(t.startswith("CRITICAL at step") and "prior" in t and "What to do:" in t for t in texts)


def test_stop_on_accepts_only_dead():
    with pytest.raises(ValueError, match="stop_on must be 'dead' or None"):
        DoctorCallback(stop_on="warning")  # type: ignore[arg-type]


def test_the_callback_works_in_a_pytorch_lightning_trainer(tmp_path):
    # The standalone package (`import pytorch_lightning`) runs the same callback.
    pl = pytest.importorskip("pytorch_lightning")

    class Small(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 2)

        def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.cross_entropy(self.lin(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    x = torch.randn(640, 4)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long()), batch_size=32
    )
    cb = DoctorCallback(config=CONFIG, stream=io.StringIO())
    trainer = pl.Trainer(
        max_steps=20,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[cb],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Small(), loader)
    assert cb.report is not None and cb.report.source == "lightning: Small"
    assert cb.doctor.history.series("train/loss").steps.tolist()[:3] == [1, 2, 3]


def _ids(*v: int) -> torch.Tensor:
    return torch.tensor(v)


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        ((torch.zeros(3, 4), _ids(0, 1, 0)), [0, 1, 0]),  # (x, class ids): the labels
        ([torch.zeros(3, 4), torch.zeros(3), _ids(1, 1, 0)], [1, 1, 0]),  # the last item of a list
        ({"input_ids": _ids(5, 6, 7), "labels": _ids(0, 0, 1)}, [0, 0, 1]),  # a dict's labels
        ({"x": torch.zeros(3, 4), "y": torch.tensor([0.0, 1.0, 1.0])}, [0.0, 1.0, 1.0]),  # named: any dtype
        (
            (torch.zeros(3, 4), torch.tensor([0.3, 1.7, 2.2])),
            None,
        ),  # a float last item: maybe a regression target
        ((_ids(5, 6, 7), torch.ones(3, 16, dtype=torch.long)), None),  # a 2-D mask is no label vector
        ({"input_ids": _ids(5, 6, 7)}, None),
        (torch.zeros(3, 4), None),
    ],
)
def test_labels_are_taken_from_a_batch_only_when_they_cannot_be_something_else(batch, expected):
    from muvo_doctor.integrations import labels_of

    got = labels_of(batch)
    assert (got.tolist() if got is not None else None) == expected


def test_a_training_step_that_returns_logits_gives_the_doctor_outputs_and_accuracy():
    from muvo_doctor.integrations.lightning import _step_outputs

    logits, y, loss = torch.randn(8, 2), _ids(0, 1, 0, 0, 1, 0, 0, 0), torch.tensor(0.3)
    assert _step_outputs(loss) == (loss, None, None)
    got = _step_outputs({"loss": loss, "logits": logits, "labels": y})
    assert got[0] is loss and got[1] is logits and got[2] is y
    assert _step_outputs(None) == (None, None, None)

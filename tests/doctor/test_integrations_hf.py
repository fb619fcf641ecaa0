"""The Hugging Face callback in a real `transformers.Trainer` run (CPU, a tiny BERT built from a config,
nothing downloaded, one thread).

What a user sees: a learning run ends healthy; labels drawn at random with a 10% prior end dead with
prior_baseline; ``stop_on="dead"`` ends the run through ``control.should_training_stop`` before
``max_steps`` and the Trainer saves a checkpoint; the findings are in the Trainer's own log history
(``trainer_state.json`` of that checkpoint) and in its TensorBoard log (read back from the files).
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments  # noqa: E402

from muvo_doctor.core.config import DoctorConfig  # noqa: E402
from muvo_doctor.integrations.hf import DoctorCallback  # noqa: E402

pytestmark = pytest.mark.slow  # a few seconds per run, plus transformers' import
VOCAB, LENGTH, BATCH, STEPS = 50, 16, 32, 300
# As in the Lightning test: a fixed sampling schedule, a flush per sample, a 50-step confirmation window.
CONFIG = DoctorConfig(sample_every=5, flush_every=1, confirm_dead_steps=50)


class Tokens(torch.utils.data.Dataset):
    """Sequences of 16 token ids; class 1 (about 11%) when the first id is one of 5 of 45, or at random (10%)."""

    def __init__(self, n: int, random_labels: bool) -> None:
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(5, VOCAB, (n, LENGTH), generator=g)
        if random_labels:
            self.labels = (torch.rand(n, generator=g) < 0.1).long()
        else:
            self.labels = (self.ids[:, 0] < 10).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {
            "input_ids": self.ids[i],
            "attention_mask": torch.ones(LENGTH, dtype=torch.long),
            "labels": self.labels[i],
        }


def train(
    tmp_path: Path,
    random_labels: bool,
    tensorboard: bool = False,
    evaluate: bool = False,
    steps: int = STEPS,
    trainer_kwargs: dict | None = None,
    **callback: object,
):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=LENGTH,
            num_labels=2,
        )
    )
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=steps,
        per_device_train_batch_size=BATCH,
        learning_rate=2e-3,
        warmup_steps=10,
        logging_steps=10,
        # Checkpoints only when asked for (the end of a run, or stop_on): none on a schedule within 300 steps.
        save_strategy="steps",
        save_steps=100_000,
        report_to=["tensorboard"] if tensorboard else "none",
        eval_strategy="steps" if evaluate else "no",
        eval_steps=100,
        per_device_eval_batch_size=64,
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    out = io.StringIO()
    cb = DoctorCallback(config=CONFIG, stream=out, **callback)  # type: ignore[arg-type]
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Tokens(steps * BATCH, random_labels),
        eval_dataset=Tokens(256, random_labels) if evaluate else None,
        callbacks=[cb],
        **(trainer_kwargs or {}),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    return cb, trainer, out.getvalue()


def test_a_learning_run_ends_healthy(tmp_path):
    cb, trainer, printed = train(tmp_path, random_labels=False, evaluate=True)
    alarms = [f"{f.check} {f.severity}" for f in cb.report.findings if f.severity != "info"]
    assert cb.report.verdict == "healthy", alarms
    assert alarms == [] and cb.report.evidence_for_health
    assert trainer.state.global_step == STEPS
    assert "healthy:" in printed and "transformers: BertForSequenceClassification" in printed
    # The Trainer's evaluations (eval_loss at steps 100, 200, 300) reach the doctor as val/loss.
    assert cb.doctor.history.series("val/loss").steps.tolist() == [100, 200, 300]


@pytest.fixture(scope="module")
def dead_run(tmp_path_factory):
    """Random labels at a 10% prior, stop_on="dead", TensorBoard on: one run shared by the tests below."""
    pytest.importorskip("tensorboard")  # the Trainer's TensorBoard integration needs it
    tmp = tmp_path_factory.mktemp("hf-dead")
    mp = pytest.MonkeyPatch()
    mp.setenv("TENSORBOARD_LOGGING_DIR", str(tmp / "tb"))  # the Trainer's default is a dated folder
    try:
        cb, trainer, printed = train(tmp, random_labels=True, tensorboard=True, stop_on="dead")
    finally:
        mp.undo()
    return tmp, cb, trainer, printed


def test_random_labels_at_a_10_percent_prior_end_dead_with_prior_baseline(dead_run):
    _, cb, _, printed = dead_run
    assert cb.report.verdict == "dead"
    critical = {f.check for f in cb.report.findings if f.severity == "critical" and f.resolved_step is None}
    assert "prior_baseline" in critical
    assert "CRITICAL prior_baseline" in printed and "dead:" in printed


def test_stop_on_dead_ends_the_run_through_the_trainer_and_a_checkpoint_is_saved(dead_run):
    tmp, cb, trainer, _ = dead_run
    step = trainer.state.global_step
    assert cb.session.stopped is not None and "prior_baseline" in cb.session.stopped
    assert step < STEPS
    ckpt = tmp / f"checkpoint-{step}"
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "trainer_state.json").is_file()


def test_the_findings_are_in_the_trainers_log_history_and_its_checkpoint(dead_run):
    tmp, _, trainer, _ = dead_run
    saved = json.loads((tmp / f"checkpoint-{trainer.state.global_step}" / "trainer_state.json").read_text())
    for history in (trainer.state.log_history, saved["log_history"]):
        doctor = [h for h in history if "doctor/verdict" in h]
        assert doctor and doctor[-1]["doctor/verdict"] == 3.0
        text = [h["doctor/prior_baseline"] for h in history if "doctor/prior_baseline" in h]
        assert text and text[-1].startswith("CRITICAL at step") and "What to do:" in text[-1]
        assert any(h.get("doctor/finding/prior_baseline") == 3.0 for h in history)


def test_the_findings_are_in_the_trainers_tensorboard_log(dead_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    tmp, _, _, _ = dead_run
    (events,) = (tmp / "tb").rglob("events.out.tfevents.*")
    acc = EventAccumulator(os.fspath(events), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    # The Trainer's TensorBoard integration names train logs train/<key>.
    verdict = [t for t in acc.Tags()["scalars"] if t.endswith("doctor/verdict")]
    assert verdict and acc.Scalars(verdict[0])[-1].value == 3.0
    tags = [t for t in acc.Tags()["tensors"] if "doctor/prior_baseline" in t]
    texts = [make_ndarray(e.tensor_proto).item().decode() for t in tags for e in acc.Tensors(t)]
    assert any(t.startswith("CRITICAL at step") and "prior" in t for t in texts)


@pytest.mark.parametrize(
    ("module", "blocked", "extra"),
    [("hf", ("transformers",), "hf"), ("lightning", ("lightning", "pytorch_lightning"), "lightning")],
)
def test_without_the_framework_the_import_error_says_what_to_install(module, blocked, extra):
    import subprocess
    import sys

    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "import muvo_doctor.integrations\n"
        f"assert not any(sys.modules.get(m) for m in {blocked!r})\n"
        "try:\n"
        f"    import muvo_doctor.integrations.{module}\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().endswith(f"pip install 'muvo-doctor[{extra}]'")


def test_logged_values_the_recorder_measures_itself_are_not_mixed_in():
    from muvo_doctor.integrations import Session

    s = Session(stop_on=None, config=CONFIG, source="t")
    # One Trainer log: the mean loss, the gradient norm before clipping, the learning rate, an evaluation.
    s.metrics(10, {"loss": 0.7, "grad_norm": 5.0, "learning_rate": 1e-3, "epoch": 0.1, "eval_loss": 0.65})
    s.doctor.evaluate()
    assert s.doctor.history.names() == ["val/loss"]


def test_a_loss_computed_outside_the_model_is_taken_from_the_trainers_logs(tmp_path):
    # With compute_loss_func the Trainer calls the model without labels: the model returns no loss, so the
    # doctor judges the loss the Trainer logs (every 10 steps).
    def loss_fn(outputs, labels, num_items_in_batch=None):
        return torch.nn.functional.cross_entropy(outputs["logits"], labels)

    cb, _, _ = train(tmp_path, random_labels=False, steps=40, trainer_kwargs={"compute_loss_func": loss_fn})
    assert cb.doctor.history.series("train/loss").steps.tolist() == [10, 20, 30, 40]
    assert cb.doctor.history.series("label/classes") is None  # no labels seen: no prior to judge against

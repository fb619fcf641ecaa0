"""The same bytes through `run` (Runner._parse_lines, fed by the runner's LineSplitter in arbitrary
chunks) and through `audit` (read_text over the file) give the same series: names, steps, values and
digits, and so the same final verdict and findings. `run` sees every carriage-return rewrite as a line, so it is compared with the audit read
that keeps rewrites (and, for logs without rewrites, with the default audit read)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from muvo_doctor.core.history import History
from muvo_doctor.logs import sniff
from muvo_doctor.logs.text import read_text
from muvo_doctor.run.lines import LineSplitter
from muvo_doctor.run.runner import Runner, RunOptions

LOGS = Path(__file__).parents[1] / "fixtures" / "logs"

# Logs written for the readers' rules (each class of format), next to the fixture logs.
SAMPLES = {
    "test_set.log": (
        "Train Epoch: 1 [0/60000 (0%)]\tLoss: 2.305\n"
        "Train Epoch: 1 [6400/60000 (11%)]\tLoss: 0.512\n"
        "\nTest set: Average loss: 2.3065, Accuracy: 980/10000 (10%)\n\n"
    ),
    "caffe.log": (
        "I1010 17:36:18.471542 24907 solver.cpp:247] Iteration 0, Testing net (#0)\n"
        "I1010 17:36:51.366374 24907 solver.cpp:298]     Test net output #0: accuracy = 0.001\n"
        "I1010 17:36:51.521034 24907 solver.cpp:191] Iteration 0, loss = 6.9078\n"
        "I1010 17:36:51.521077 24907 solver.cpp:206]     Train net output #0: loss = 6.9078 (* 1 = 6.9 loss)\n"
        "I1010 17:40:30.682349 24907 solver.cpp:191] Iteration 100, loss = 6.9012\n"
    ),
    "keras.log": "".join(
        f"Epoch {e}/5\n1875/1875 [==============================] - 3s 2ms/step - loss: {1 / e:.4f} "
        f"- accuracy: {0.5 + e / 20:.4f} - val_loss: {1.2 / e:.4f} - val_accuracy: {0.5 + e / 25:.4f}\n"
        for e in range(1, 6)
    ),
    "tqdm_epochs.log": "".join(
        f"Epoch {e}: {100 * b // 40:3d}%|#####     | {b}/40 [00:01<00:01, 9.1it/s, loss={1 / (e + b + 1):.4f}]\r"
        + ("\n" if b == 40 else "")
        for e in range(3)
        for b in range(0, 41, 10)
    ),
    "markdown.md": (
        "| train |        |        | validate |        |\n"
        "| ----- | ------ | ------ | -------- | ------ |\n"
        "| epoch | Top1   | Loss   | epoch    | Loss   |\n"
        "| 0     | 3.166  | 6.0748 | 0        | 12.17  |\n"
        "| 1     | 15.428 | 4.4438 | 1        | 4.1692 |\n"
    ),
    "ultralytics.log": (
        "      Epoch    GPU_mem   box_loss   cls_loss  Instances       Size\n"
        "       1/50      3.59G      3.074      17.88         18        640: 100%|##########| 69/69 [00:19<00:00]\n"
        "                 Class     Images  Instances      Box(P          R      mAP50  mAP50-95): 100%|#| 15/15\n"
        "                   all         58        136      0.012      0.034      0.005      0.001\n"
        "\n"
        "      Epoch    GPU_mem   box_loss   cls_loss  Instances       Size\n"
        "       2/50      3.13G      2.411      17.94          5        640: 100%|##########| 69/69 [00:19<00:00]\n"
    ),
    "darknet.log": "".join(
        f"{i}, 4.021: {6.9 - i / 1000:.6f}, {6.91 - i / 2000:.6f} avg, 0.081346 rate, 0.38 seconds, {i * 128} images\n"
        for i in range(100, 110)
    ),
    "fairseq.log": (
        "| epoch 001 | loss 12.3 | nll_loss 11.9 | ppl 3821.4 | wps 1643 | num_updates 100 | lr 0.0005 | gnorm 1.2\n"
        "| epoch 001 | valid on 'valid' subset | valid_loss 11.8 | valid_nll_loss 11.2 | num_updates 100\n"
        "| epoch 002 | loss 9.1 | nll_loss 8.8 | ppl 445.1 | wps 1650 | num_updates 200 | lr 0.0005 | gnorm 0.9\n"
    ),
    "dicts.log": "".join(
        f"{{'loss': '{1 / (i + 1):.4f}', 'grad_norm': 1.5, 'learning_rate': 5e-05, 'epoch': {i / 10}}}\n"
        for i in range(8)
    )
    + "{'eval_loss': 0.42, 'eval_accuracy': 0.88, 'epoch': 0.8}\n",
}


def _text_fixtures() -> list[Path]:
    return sorted(p for p in LOGS.iterdir() if p.is_file() and sniff(p) == "text")


def _series(h: History) -> dict[str, tuple[list[int], list[float], int | None]]:
    out = {}
    for name in h.names():
        if name.startswith("printed/"):
            continue
        s = h.series(name)
        vals = [("nan" if math.isnan(v) else v) for v in s.values.tolist()]
        out[name] = (s.steps.tolist(), vals, s.digits)
    return out


class _Doctor:
    def __init__(self) -> None:
        self.history = History()

    def observe(self, obs, clock: bool = True) -> None:  # noqa: ARG002 - the Doctor's signature
        self.history.add(obs)


def run_side(data: bytes, seed: int = 0) -> History:
    """The bytes as `run` sees a child print them: random chunks into the LineSplitter."""
    runner = Runner(RunOptions(command=["true"]))
    runner.doctor = _Doctor()
    splitter = LineSplitter()
    rng = random.Random(seed)
    i = 0
    while i < len(data):
        n = rng.randint(1, 4096)
        runner._parse_lines(splitter.feed(data[i : i + n]))
        i += n
    runner._parse_lines(splitter.close())
    return runner.doctor.history


def audit_side(path: Path, keep_rewrites: bool) -> History:
    h = History()
    read_text(str(path), h.add_point, keep_rewrites=keep_rewrites)
    return h


def _judged(h: History) -> tuple[str, list[tuple[str, str]]]:
    """The verdict and the holding findings of a Doctor's final evaluation of ``h``."""
    from muvo_doctor.core.doctor import Doctor

    d = Doctor()
    d.history = h
    d.evaluate()
    rep = d.report()
    return rep.verdict, [(f.check, f.severity) for f in rep.findings if f.resolved_step is None]


def _check_same(path: Path) -> None:
    data = path.read_bytes()
    run_h = run_side(data)
    run = _series(run_h)
    assert run, f"{path.name}: nothing read"
    audit_h = audit_side(path, keep_rewrites=True)
    assert run == _series(audit_h)
    # ... and so the same verdict and findings at the end.
    assert _judged(run_side(data)) == _judged(audit_h)
    if b"\r" not in data.replace(b"\r\n", b""):
        assert run == _series(audit_side(path, keep_rewrites=False))


@pytest.mark.parametrize("path", _text_fixtures(), ids=lambda p: p.name)
def test_run_and_audit_read_the_same_series_from_every_fixture(path: Path) -> None:
    _check_same(path)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_run_and_audit_read_the_same_series_from_each_format(name: str, tmp_path: Path) -> None:
    p = tmp_path / name
    p.write_text(SAMPLES[name], encoding="utf-8")
    _check_same(p)


def test_chunking_does_not_matter_to_run(tmp_path: Path) -> None:
    data = (LOGS / "correct_training.log").read_bytes()
    assert _series(run_side(data, seed=1)) == _series(run_side(data, seed=2))

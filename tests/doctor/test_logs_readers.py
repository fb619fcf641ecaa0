"""Each reader turns its format into the right signals, steps, values and digits."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from muvo_doctor.core.history import History
from muvo_doctor.logs import LogSource, NoRecords, find_sources, load, sniff, text_points
from muvo_doctor.logs import text as text_mod
from muvo_doctor.logs.text import read_text

LOGS = Path(__file__).parents[1] / "fixtures" / "logs"


def read(path: Path, **kw) -> tuple[History, str]:
    h = History()
    fmt, _ = load(LogSource(str(path), [path]), h.add_point, **kw)
    return h, fmt


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    p = tmp_path / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    return p


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("correct_training.log", "text"),
        ("overfitting_keras.log", "text"),
        ("mmdet.log", "text"),
        ("detectron2.log", "text"),
        ("lightning_metrics.csv", "csv"),
        ("results.csv", "csv"),
        ("healthy_aux_zero.jsonl", "jsonl"),
        ("trainer_state.json", "trainer_state"),
        ("telemetry.jsonl", "telemetry"),
        ("tb_torch_nan/events.out.tfevents.1764170000.host.4242.0", "tensorboard"),
    ],
)
def test_sniff_by_content(name, fmt, tmp_path):
    assert sniff(LOGS / name) == fmt
    # Content decides, not the name: the same bytes under a neutral name sniff the same.
    renamed = write(tmp_path, "run_output", (LOGS / name).read_bytes())
    assert sniff(renamed) == fmt


def test_original_tqdm_log_signals():
    h, fmt = read(LOGS / "correct_training.log")
    assert fmt == "text"
    loss, acc = h.series("train/loss"), h.series("train/acc")
    # 30 completed bars (the repeated final bar counted once) + 30 epoch summaries.
    assert len(loss) == 60 and len(acc) == 60
    assert loss.digits == 4 and acc.digits == 3  # acc=87.5% -> 0.875 shows 3 decimals
    assert 0.8 < float(np.median(acc.values)) < 0.95  # percentages became fractions
    assert h.series("avg_score") is not None
    assert 0.3617 in loss.values and 0.8981 in acc.values  # the report's first epoch summary


def test_tqdm_rewrites_keep_what_the_terminal_shows(tmp_path):
    line = "\r".join(f"{p:3d}%|#| {p}/100 [00:01<00:00, loss={p / 100:.4f}]" for p in (10, 50, 90, 100, 100))
    p = write(
        tmp_path, "bar.log", line + "\nEpoch 1 - Loss: 0.5000\n" + line.replace("loss=", "loss=9") + "\n"
    )
    h, _ = read(p)
    s = h.series("train/loss")
    assert list(s.values) == [1.0, 0.5, 91.0]  # last rewrite of each line, once; the summary between


def test_one_long_progress_bar_is_read_with_every_rewrite(tmp_path):
    # A whole run in one tqdm bar that never ends its line: the last rewrite alone is one point.
    bar = "".join(f"\r{i}/500 [00:01<00:00, loss={1 / (i + 1):.4f}]" for i in range(500))
    p = write(tmp_path, "one_bar.log", bar)
    from muvo_doctor.commands.audit import audit_source
    from muvo_doctor.core.config import DoctorConfig

    a = audit_source(LogSource(str(p), [p]), DoctorConfig())
    assert len(a.doctor.history.series("train/loss")) == 500


def test_step_axis_from_iteration_mmdet_and_detectron2():
    h, _ = read(LOGS / "caffe_prior.log")
    s = h.series("train/loss")
    assert s.steps[0] == 0 and s.steps[-1] == 9900
    assert h.series("optim/lr").values[0] == 0.01
    assert not any(n.startswith("solver") for n in h.names())  # "solver.cpp:228]" is not a metric
    h, _ = read(LOGS / "mmdet.log")
    s = h.series("train/loss")
    assert s.steps[0] == 50 and s.steps[-1] == 12_000  # Epoch [12][1000/1000] -> 11*1000+1000
    assert 0.8 <= h.series("train/acc").values[0] <= 1.0  # "acc: 80.05" (no %) is a percentage
    assert "time" not in h.names() and "memory" not in h.names()
    h, _ = read(LOGS / "detectron2.log")
    assert h.series("train/loss").steps[0] == 19  # total_loss is the main loss; iter is the step
    assert "max_mem" not in h.names() and "eta" not in h.names()


def test_keras_and_hf_console_names():
    h, _ = read(LOGS / "overfitting_keras.log")
    assert {"train/loss", "train/acc", "val/loss", "val/acc"} <= set(h.names())
    assert len(h.series("val/loss")) == 30
    h, _ = read(LOGS / "hf_console.log")
    assert {"train/loss", "val/loss", "val/acc", "optim/lr", "grad/norm/total"} <= set(h.names())
    assert h.series("optim/lr").digits == 5  # 5e-05


def test_lightning_csv_sparse_columns():
    h, fmt = read(LOGS / "lightning_metrics.csv")
    assert fmt == "csv"
    assert len(h.series("train/loss")) == 200  # train_loss_step
    assert len(h.series("val/loss")) == 20  # validation rows only
    assert h.series("train/loss_epoch") is not None  # kept apart from the per-step loss
    assert h.series("val/loss").digits == 6  # every cell written with 6 decimals: a display format


def test_ultralytics_padded_header_and_summed_losses():
    h, _ = read(LOGS / "results.csv")
    assert {"train/loss", "val/loss", "val/map", "optim/lr", "train/box_loss"} <= set(h.names())
    s = h.series("train/loss")
    assert s.steps[0] == 1  # the epoch column
    f = math.exp(-1 / 15)
    assert s.values[0] == pytest.approx((1.2 + 2.5 + 1.3) * f + 2.0, abs=1e-4)


def test_trainer_state_skips_the_run_summary():
    h, fmt = read(LOGS / "trainer_state.json")
    assert fmt == "trainer_state"
    loss = h.series("train/loss")
    assert len(loss) == 300 and loss.steps[-1] == 3000
    assert 0.123456 not in loss.values  # the final {"train_loss": 0.123456, "train_runtime": ...} entry
    assert loss.digits is None  # JSON floats are machine-written, not rounded for display
    assert len(h.series("val/auroc")) == 12
    assert "val/runtime" not in h.names()


def test_jsonl_constant_zero_aux_loss_and_step_field():
    h, fmt = read(LOGS / "healthy_aux_zero.jsonl")
    assert fmt == "jsonl"
    aux = h.series("train/aux_loss")
    assert aux.steps[-1] == 1990 and set(aux.values) == {0.0}
    assert h.series("train/loss").digits is None  # json.dumps writes the shortest repr, not a display format


def test_telemetry_stream_with_ranks(tmp_path):
    lines = [
        {"schema": "muvo-doctor/telemetry/v1", "source": "x", "created": 0.0},
        {"name": "train/loss", "step": 1, "value": 0.5, "digits": None, "rank": 0},
        {"name": "train/loss", "step": 1, "value": 0.6, "digits": None, "rank": 1},
        {"event": "step", "step": 1, "rank": 0},
    ]
    text = (
        "\n".join(json.dumps(x) for x in lines)
        + '\n{"name": "train/loss", "step": 2, "value": NaN, "rank": 0}\n{"name": "trunc'
    )
    h, fmt = read(write(tmp_path, "rec.jsonl", text))
    assert fmt == "telemetry"
    assert list(h.series("train/loss").values[:1]) == [0.5] and math.isnan(h.series("train/loss").values[1])
    assert list(h.series("train/loss@rank1").values) == [0.6]


def test_tensorboard_keras_layout_names_the_split():
    sources, _ = find_sources(str(LOGS / "tb_keras"))
    assert len(sources) == 1 and len(sources[0].files) == 2
    h = History()
    fmt, st = load(sources[0], h.add_point)
    assert fmt == "tensorboard"
    assert {"train/loss", "val/loss", "train/acc", "val/acc"} <= set(h.names())
    assert h.series("val/loss").values[0] == pytest.approx(1.5 + 0.1 + 0.08, rel=1e-6)


def test_folder_discovery(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint-500").mkdir(parents=True)
    (run / "checkpoint-1000").mkdir()
    (run / ".git").mkdir()
    state = (LOGS / "trainer_state.json").read_text()
    (run / "checkpoint-500" / "trainer_state.json").write_text(state[: len(state) // 2] + "]}")
    (run / "checkpoint-1000" / "trainer_state.json").write_text(state)
    (run / "checkpoint-1000" / "model.safetensors").write_bytes(b"\x00" * 100)
    (run / "config.json").write_text('{"hidden_size": 768}')
    (run / "train.log").write_text("step 1 loss 0.5\n")
    (run / ".git" / "x.log").write_text("loss 1\n")
    sources, _ = find_sources(str(run))
    assert sorted(Path(s.label).relative_to(run).as_posix() for s in sources) == [
        "checkpoint-1000/trainer_state.json",
        "train.log",
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "model.pt").write_bytes(b"\x00")
    with pytest.raises(NoRecords, match="no logs in this folder"):
        find_sources(str(empty))
    with pytest.raises(NoRecords, match="no such file or folder"):
        find_sources(str(tmp_path / "missing"))


def test_an_evaluation_line_is_filed_under_the_step_it_prints(tmp_path):
    # muvo-train's format: the eval line names its step ("eval step 40"), one or more log lines later.
    lines = [f"step {i} loss={0.5 - i / 1000:.4f}" for i in range(10, 51, 10)]
    lines.insert(4, "eval step 40 val_loss=0.31 val_auroc=0.52")  # printed after "step 40", before 50
    lines.append("eval step 45 val_loss=0.30 val_auroc=0.55")  # an eval between two log lines
    p = write(tmp_path, "log.txt", "\n".join(lines) + "\n")
    h = History()
    read_text(str(p), h.add_point)
    assert list(h.series("val/auroc").steps) == [40, 45]


def test_chunk_boundaries_do_not_split_records(tmp_path, monkeypatch):
    lines = [f"step {i} loss: {i / 1000:.4f} acc: {50 + i % 50:.2f}%" for i in range(2000)]
    p = write(tmp_path, "log.txt", "\n".join(lines))  # no final newline
    monkeypatch.setattr(text_mod, "_CHUNK", 1000)
    h = History()
    st = read_text(str(p), h.add_point)
    assert st.records == 2000
    s = h.series("train/loss")
    assert list(s.steps) == list(range(2000)) and s.values[-1] == 1.999


def test_ten_megabyte_line_without_newline_is_bounded(tmp_path):
    p = write(tmp_path, "big.log", "x" * 10_000_000 + " loss=0.5")
    h = History()
    st = read_text(str(p), h.add_point)
    assert st.points == 1 and h.series("train/loss").values[0] == 0.5


def test_mixed_encodings(tmp_path):
    p = write(
        tmp_path,
        "mixed.log",
        "Époch 1 loss: 0.5\n".encode("latin-1") + "训练 loss: 0.4\n".encode() + b"\xff\xfe loss: 0.3\n",
    )
    h, _ = read(p)
    assert list(h.series("train/loss").values) == [0.5, 0.4, 0.3]


def test_a_new_key_on_every_line_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(text_points, "MAX_SIGNALS", 50)
    p = write(tmp_path, "keys.log", "".join(f"loss: 0.5 sample_{i}: {i}\n" for i in range(500)))
    h = History()
    read_text(str(p), h.add_point)
    assert len(h.names()) == 50 and len(h.series("train/loss")) == 500


def test_windows_line_ends_and_lightning_bar(tmp_path):
    bar = (
        "Epoch {e}: 100%|##########| 100/100 [00:05<00:00, 19.5it/s, v_num=3, train_loss_step={l:.3f}, "
        "val_loss={v:.3f}]"
    )
    text = "".join(bar.format(e=e, l=1 / (e + 1), v=1 / (e + 2)) + "\r\n" for e in range(30))
    h, _ = read(write(tmp_path, "pl.log", text.encode()))
    assert len(h.series("train/loss")) == 30 and len(h.series("val/loss")) == 30
    assert "v_num" not in h.names()


def test_truncated_event_file_keeps_the_complete_records(tmp_path):
    data = (LOGS / "tb_torch_nan" / "events.out.tfevents.1764170000.host.4242.0").read_bytes()
    p = write(tmp_path, "events.out.tfevents.1.host", data[: len(data) // 2 + 7])
    h, fmt = read(p)
    s = h.series("train/loss")
    assert fmt == "tensorboard" and 30 <= len(s) < 80 and list(s.steps[:3]) == [0, 5, 10]


def test_pytorch_mnist_example_log(tmp_path):
    lines = []
    for ep in range(1, 11):
        for b in range(0, 60000, 6400):
            lines.append(
                f"Train Epoch: {ep} [{b}/60000 ({100 * b // 60000}%)]\tLoss: {2.3 / (ep + b / 60000):.6f}"
            )
        lines.append("")
        lines.append(
            f"Test set: Average loss: {0.3 / ep:.4f}, Accuracy: {9000 + 80 * ep}/10000 ({90 + ep * 0.8:.0f}%)"
        )
        lines.append("")
    h, _ = read(write(tmp_path, "mnist.log", "\n".join(lines) + "\n"))
    assert len(h.series("train/loss")) == 100
    test_loss, test_acc = h.series("test/loss"), h.series("test/acc")
    assert len(test_loss) == 10 and test_acc.values[0] == pytest.approx(0.908) and test_acc.digits == 4
    assert "train_epoch" not in h.names() and "train" not in h.names()


def test_fairseq_and_timm_lines(tmp_path):
    text = "".join(
        f"| epoch {e:03d} | loss {3 / e:.3f} | ppl {2 ** (3 / e):.2f} | wps 12000 | num_updates {e * 500} | lr 0.0005 | gnorm 1.2\n"
        for e in range(1, 6)
    )
    text += (
        "Train: 0 [ 100/1251 (  8%)]  Loss: 6.912 (6.93)  Time: 0.234s,  LR: 1.000e-04  Data: 0.012 (0.015)\n"
    )
    h, _ = read(write(tmp_path, "fs.log", text))
    assert list(h.series("train/loss").steps[:5]) == [500, 1000, 1500, 2000, 2500]
    assert h.series("grad/norm/total") is not None and "wps" not in h.names()
    assert "train" not in h.names() and "data" not in h.names() and "time" not in h.names()


def test_split_line_at_the_start_of_a_file(tmp_path):
    h, _ = read(write(tmp_path, "v.log", "Validation: loss 0.41 acc 0.8\nloss 0.5\n"))
    assert list(h.series("val/loss").values) == [0.41] and list(h.series("train/loss").values) == [0.5]
    assert list(h.series("val/acc").values) == [0.8]

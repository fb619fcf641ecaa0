"""Each class of training-log format, and each reading rule, on logs written here for it: the right
series under the right `split/metric` names, at the right steps, with the printed digits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from muvo_doctor.core.history import History
from muvo_doctor.core.names import signal_name
from muvo_doctor.logs import LogSource, NoRecords, load, sniff
from muvo_doctor.logs.text import TextParser


def read(tmp_path: Path, name: str, text: str) -> tuple[History, str]:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    h = History()
    fmt, _ = load(LogSource(str(p), [p]), h.add_point)
    return h, fmt


def steps(h: History, name: str) -> list[int]:
    s = h.series(name)
    assert s is not None, f"{name} missing; have {h.names()}"
    return s.steps.tolist()


def values(h: History, name: str) -> list[float]:
    s = h.series(name)
    assert s is not None, f"{name} missing; have {h.names()}"
    return s.values.tolist()


# -- splits -----------------------------------------------------------------------------------


def test_test_set_line_is_the_test_split_not_training(tmp_path):
    h, _ = read(
        tmp_path,
        "mnist.log",
        "Train Epoch: 1 [0/60000 (0%)]\tLoss: 2.305\n"
        "Train Epoch: 1 [59520/60000 (99%)]\tLoss: 0.412\n"
        "\nTest set: Average loss: 2.3065, Accuracy: 980/10000 (10%)\n",
    )
    assert values(h, "test/loss") == [2.3065]
    assert values(h, "test/acc") == [0.098] and h.series("test/acc").digits == 4
    assert values(h, "train/loss") == [2.305, 0.412]  # the test numbers are not in the training series
    assert "train/acc" not in h


@pytest.mark.parametrize(
    ("line", "name"),
    [
        ("Validation: loss 0.41 acc 0.8", "val/loss"),
        ("Epoch 3 | Val Loss: 0.41", "val/loss"),
        ("eval_loss = 0.41", "val/loss"),
        ("val_loss: 0.41", "val/loss"),
        ("valid_loss 0.41", "val/loss"),
        ("test_loss=0.41", "test/loss"),
        ("Testing: loss=0.41", "test/loss"),
        ("INFO  Eval: [100/200] loss 0.41", "val/loss"),
    ],
)
def test_split_words_and_keys(line, name):
    p = TextParser()
    got = p.lines([line])
    assert name in got.names, got.names


def test_a_split_word_after_the_first_signal_does_not_change_it():
    got = TextParser().lines(["loss 0.3 (best on test so far) acc 0.9"])
    assert got.names == ["train/loss", "train/acc"]


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("target_val_acc", "val/acc/target"),
        ("source_train_acc", "train/acc/source"),
        ("box_loss", "train/box_loss"),
        ("loss_cls", "train/loss_cls"),
        ("valid_nll_loss", "val/nll_loss"),
        ("eval_wer", "val/wer"),
        ("top-1 acc", "train/acc"),
        ("coco/bbox_mAP", "val/map"),
        ("mAP50", "val/map50"),
        ("x/lr0", "optim/lr"),
    ],
)
def test_signal_names(key, name):
    assert signal_name(key) == name


# -- steps: step vs iteration vs epoch vs progress counter ----------------------------------------


def test_caffe_iterations_and_test_net_output(tmp_path):
    h, _ = read(
        tmp_path,
        "caffe.log",
        "I1010 17:36:18.471542 24907 solver.cpp:247] Iteration 0, Testing net (#0)\n"
        "I1010 17:36:51.366374 24907 solver.cpp:298]     Test net output #0: accuracy = 0.001\n"
        "I1010 17:36:51.521034 24907 solver.cpp:191] Iteration 0, loss = 6.9078\n"
        "I1010 17:40:30.682349 24907 solver.cpp:191] Iteration 1000, loss = 6.9012\n"
        "I1010 17:40:30.682417 24907 sgd_solver.cpp:106] Iteration 1000, lr = 0.01\n"
        "I1010 17:40:31.366374 24907 solver.cpp:298]     Test net output #0: accuracy = 0.001\n",
    )
    assert steps(h, "test/acc") == [0, 1000]
    assert steps(h, "train/loss") == [0, 1000] and values(h, "train/loss") == [6.9078, 6.9012]
    assert "train/acc" not in h and steps(h, "optim/lr") == [1000]


def test_keras_epochs_are_the_steps(tmp_path):
    text = "".join(
        f"Epoch {e}/100\n{4 - e % 3}s - loss: {1 / e:.4f} - acc: 0.9 - val_loss: {0.5 + e / 100:.4f} - val_acc: 0.9\n"
        for e in (12, 95, 96, 97)
    )
    h, _ = read(tmp_path, "keras.log", text)
    assert steps(h, "train/loss") == [12, 95, 96, 97] == steps(h, "val/loss")


def test_tqdm_counter_counts_steps_across_epochs(tmp_path):
    # Lightning: "Epoch 0: 10%|...| 67/704 [...]"; epoch 1's counter continues after epoch 0's 704 batches
    text = "".join(
        f"Epoch {e}:  50%|#####     | {b}/704 [00:30<00:30, 2.2it/s, v_num=1, train_loss={4.6 - e:.3f}]\n"
        for e in (0, 1)
        for b in (100, 200)
    )
    h, _ = read(tmp_path, "lightning.log", text)
    assert steps(h, "train/loss") == [100, 200, 804, 904]


def test_word_language_model_batch_counter_counts_steps_across_epochs(tmp_path):
    # pytorch/examples word_language_model: "| epoch   1 |   200/ 2983 batches | ... | loss  7.50 |"
    text = "".join(
        f"| epoch {e:3d} | {b:5d}/ 2983 batches | lr 20.00 | ms/batch 10.00 | loss {7.5 - e:5.2f} | ppl 99.0\n"
        for e in (1, 2)
        for b in (200, 400)
    )
    text += "| end of epoch   1 | time: 30.00s | valid loss  5.80 | valid ppl   330.0\n"
    h, _ = read(tmp_path, "lm.log", text)
    assert steps(h, "train/loss") == [200, 400, 3183, 3383]
    assert values(h, "val/loss") == [5.8]


def test_printed_step_wins_and_evaluation_lines_carry_it(tmp_path):
    h, _ = read(tmp_path, "s.log", "Iteration 500 loss 0.3\nval_acc 0.9\nIteration 600 loss 0.2\n")
    assert steps(h, "train/loss") == [500, 600] and steps(h, "val/acc") == [500]


def test_an_epoch_header_gives_the_records_under_it_its_number(tmp_path):
    text = (
        "TRAIN EPOCH  0:\nloss             1.356284\naccuracy         0.311996\ndtype: float64\n\n"
        "Val epoch 0 has acc 0.249 and loss 1.386\n"
        "TRAIN EPOCH  1:\nloss             1.386393\naccuracy         0.249471\n\n"
        "Val epoch 1 has acc 0.249 and loss 1.386\n"
    )
    h, _ = read(tmp_path, "pandas.log", text)
    assert steps(h, "train/loss") == [0, 1] == steps(h, "val/loss") == steps(h, "val/acc")
    assert values(h, "val/acc") == [0.249, 0.249]
    assert set(h.names()) == {"train/loss", "train/acc", "val/loss", "val/acc"}


# -- digits ---------------------------------------------------------------------------------------


def test_printed_decimals_of_every_value():
    got = TextParser().lines(["step 3 loss 0.3331 lr 5e-05 acc 89.93% top1 9832/10000"])
    d = dict(zip(got.names, got.digits, strict=True))
    v = dict(zip(got.names, got.values, strict=True))
    assert d["train/loss"] == 4 and d["optim/lr"] == 5 and d["train/acc"] == 4
    assert v["train/acc"] == 0.9832  # the ratio, the later of the two acc values
    assert got.steps == [3, 3, 3, 3]


# -- formats --------------------------------------------------------------------------------------


def test_python_dict_lines_with_string_values(tmp_path):
    text = (
        "".join(
            f"{{'loss': '{0.9 - i / 10:.4f}', 'grad_norm': '1.2', 'learning_rate': 5e-05, 'epoch': {i / 4}}}\n"
            for i in range(4)
        )
        + "{'eval_loss': 0.52, 'eval_accuracy': 0.81, 'epoch': 1.0}\n"
    )
    p = tmp_path / "hf5.log"
    p.write_text(text)
    assert sniff(p) == "text"
    h, _ = read(tmp_path, "hf5.log", text)
    assert values(h, "train/loss") == [0.9, 0.8, 0.7, 0.6] and h.series("train/loss").digits == 4
    assert values(h, "val/loss") == [0.52] and values(h, "val/acc") == [0.81]
    assert "grad/norm/total" in h


def test_compact_trainer_state_and_eval_keys(tmp_path):
    doc = {
        "global_step": 20,
        "log_history": [
            {"loss": 0.9, "learning_rate": 1e-5, "epoch": 0.5, "step": 10},
            {"eval_loss": 0.7, "eval_accuracy": 0.6, "epoch": 0.5, "step": 10},
            {"loss": 0.5, "learning_rate": 1e-5, "epoch": 1.0, "step": 20},
            {"train_runtime": 10.0, "train_loss": 0.7, "epoch": 1.0, "step": 20},
        ],
    }
    h, fmt = read(tmp_path, "trainer_state.json", json.dumps(doc, separators=(",", ":")))
    assert fmt == "trainer_state"
    assert steps(h, "train/loss") == [10, 20] and steps(h, "val/loss") == [10]
    assert values(h, "val/acc") == [0.6]


def test_the_doctors_own_keys_in_a_log_are_not_training_values(tmp_path):
    # The framework callbacks log doctor/verdict and doctor/finding/<check> next to the run's metrics.
    doc = {
        "log_history": [
            {"loss": 0.9 - 0.1 * i, "doctor/verdict": 3.0, "doctor/finding/prior_baseline": 3.0, "step": i}
            for i in range(1, 6)
        ]
    }
    h, _ = read(tmp_path, "trainer_state.json", json.dumps(doc))
    assert sorted(h.names()) == ["train/loss"]


def test_truncated_trainer_state_keeps_its_complete_entries(tmp_path):
    text = '{"log_history": [{"loss": 0.9, "step": 10}, {"loss": 0.8, "step": 20}, {"loss": 0.7, "st'
    h, fmt = read(tmp_path, "trainer_state.json", text)
    assert fmt == "trainer_state" and steps(h, "train/loss") == [10, 20]


def test_markdown_table_with_a_group_header(tmp_path):
    text = (
        "Results:\n\n"
        "| train |        |        |      | validate |        |\n"
        "| ----- | ------ | ------ | ---- | -------- | ------ |\n"
        "| epoch | Top1   | Loss   |      | epoch    | Loss   |\n"
        "| 0     | 3.166  | 6.0748 |      | 0        | 12.17  |\n"
        "| 1     | 15.428 | 4.4438 |      | 1        | 4.1692 |\n"
    )
    h, _ = read(tmp_path, "t.md", text)
    assert values(h, "train/acc") == [0.03166, 0.15428]
    assert values(h, "val/loss") == [12.17, 4.1692] and steps(h, "val/loss") == [0, 1]
    assert values(h, "train/loss") == [6.0748, 4.4438]


def test_markdown_and_ascii_tables_name_their_columns(tmp_path):
    md = "| Epoch | Train Loss | Val Acc |\n|---|---|---|\n| 1 | 0.90 | 71.2% |\n| 2 | 0.61 | 80.5% |\n"
    h, _ = read(tmp_path, "a.md", md)
    assert steps(h, "train/loss") == [1, 2] and values(h, "val/acc") == [0.712, 0.805]
    ascii_ = (
        "+-------+------------+----------+\n| epoch | train_loss | val_loss |\n+=======+============+==========+\n"
        "| 1     | 0.9        | 1.0      |\n+-------+------------+----------+\n| 2     | 0.6        | 0.8      |\n"
        "+-------+------------+----------+\n"
    )
    h, _ = read(tmp_path, "b.txt", ascii_)
    assert steps(h, "val/loss") == [1, 2] and values(h, "train/loss") == [0.9, 0.6]


def test_whitespace_table_with_a_header_row(tmp_path):
    text = (
        "      Epoch    GPU_mem   box_loss   cls_loss  Instances       Size\n"
        "       1/50      3.59G      3.074      17.88         18        640: 100%|####| 69/69 [00:19<00:00]\n"
        "                 Class     Images  Instances      Box(P          R      mAP50  mAP50-95): 100%|#| 15/15\n"
        "                   all         58        136      0.012      0.034      0.005      0.001\n"
        "\n"
        "      Epoch    GPU_mem   box_loss   cls_loss  Instances       Size\n"
        "       2/50      3.13G      2.411      17.94          5        640: 100%|####| 69/69 [00:19<00:00]\n"
    )
    h, _ = read(tmp_path, "yolo8.log", text)
    assert steps(h, "train/box_loss") == [1, 2] and values(h, "train/cls_loss") == [17.88, 17.94]
    assert values(h, "val/precision") == [0.012] and values(h, "val/recall") == [0.034]
    assert values(h, "val/map50") == [0.005] and values(h, "val/map") == [0.001]
    assert not [n for n in h.names() if "images" in n or "instances" in n or "size" in n]


def test_fastai_table_from_the_first_line_with_a_time_column(tmp_path):
    # fastai's progress table: the header is the file's first line; the "time" cells are durations.
    text = "epoch     train_loss  valid_loss  accuracy  time    \n" + "".join(
        f"{e:<10}{0.9 - 0.1 * e:<12.6f}{0.8 - 0.05 * e:<12.6f}{0.6 + 0.03 * e:<10.6f}00:12     \n"
        for e in range(4)
    )
    h, _ = read(tmp_path, "fastai.log", text)
    assert values(h, "train/loss") == [0.9, 0.8, 0.7, 0.6] and values(h, "val/loss") == [0.8, 0.75, 0.7, 0.65]
    assert steps(h, "train/loss") == [0, 1, 2, 3]
    assert not [n for n in h.names() if "time" in n]


def test_yolov5_results_txt_columns(tmp_path):
    rows = "".join(
        f"{e:>10}/29{'1.93G':>10}{0.09 - e / 1000:>10.4g}{0.1:>10.4g}{0:>10.4g}{0.19:>10.4g}{30:>10}{416:>10}"
        f"{0.05 + e / 100:>10.4g}{0.4:>10.4g}{0.03 * e:>10.4g}{0.006 * e:>10.4g}{0.09:>10.4g}{0.05:>10.4g}{0:>10.4g}\n"
        for e in range(5)
    )
    p = tmp_path / "results.txt"
    p.write_text(rows)
    assert sniff(p) == "results_txt"
    h, fmt = read(tmp_path, "results.txt", rows)
    assert fmt == "results_txt" and steps(h, "train/loss") == [0, 1, 2, 3, 4]
    assert values(h, "val/map50")[2] == pytest.approx(0.06) and values(h, "val/map")[4] == pytest.approx(
        0.024
    )
    assert values(h, "train/box_loss")[0] == 0.09 and values(h, "val/precision")[0] == 0.05
    assert {"val/recall", "val/box_loss", "val/obj_loss", "val/cls_loss", "train/obj_loss"} <= set(h.names())


def test_darknet_lines(tmp_path):
    text = (
        "".join(
            f"{i}, 4.021: {6.9 + (i % 3) / 1000:.6f}, 6.910023 avg, 0.081346 rate, 0.38 seconds, {i * 128} images\n"
            for i in range(40245, 40250)
        )
        + "1000: 5.5, 5.6 avg loss, 0.001000 rate, 2.1 seconds, 64000 images\n"
    )
    h, _ = read(tmp_path, "darknet.log", text)
    assert steps(h, "train/loss") == [40245, 40246, 40247, 40248, 40249, 1000]
    assert values(h, "optim/lr")[0] == 0.081346 and "train/loss_avg" in h
    assert not [n for n in h.names() if "images" in n or "seconds" in n]


def test_fairseq_legacy_lines(tmp_path):
    text = (
        "| epoch 001 | loss 12.3 | nll_loss 11.9 | ppl 3821.4 | wps 1643 | num_updates 100 | lr 0.0005\n"
        "| epoch 001 | valid on 'valid' subset | valid_loss 11.8 | valid_nll_loss 11.2 | num_updates 100 | best 11.8\n"
        "| WARNING: overflow detected, setting loss scale to: 0.25\n"
        "| epoch 002 | loss 9.1 | nll_loss 8.8 | ppl 445.1 | wps 1650 | num_updates 200 | lr 0.0005\n"
    )
    h, _ = read(tmp_path, "fairseq.log", text)
    assert steps(h, "train/loss") == [100, 200] and steps(h, "val/loss") == [100]
    assert values(h, "val/nll_loss") == [11.2]
    assert values(h, "optim/loss_scale") == [0.25] and steps(h, "optim/loss_scale") == [100]
    assert not [n for n in h.names() if "wps" in n or "best" in n]


def test_fp16_loss_scale_messages():
    got = TextParser().lines(
        [
            "Gradient overflow.  Skipping step, loss scaler 0 reducing loss scale to 16384.0",
            " iteration        5/  250000 | loss scale: 1.0 | grad norm: 0.3 |",
        ]
    )
    assert list(zip(got.names, got.values, strict=True)) == [
        ("optim/loss_scale", 16384.0),
        ("optim/loss_scale", 1.0),
        ("grad/norm/total", 0.3),
    ]


def test_keras_progress_lines(tmp_path):
    text = "".join(
        f"Epoch {e}/3\n50000/50000 [==============================] - 18s - loss: {1.5 / e:.4f} - acc: 0.42"
        f" - val_loss: {1.2 / e:.4f} - val_acc: 0.55\n"
        for e in (1, 2, 3)
    )
    h, _ = read(tmp_path, "k.log", text)
    assert steps(h, "val/loss") == [1, 2, 3] and values(h, "val/acc") == [0.55] * 3


def test_nan_padded_by_a_format_fill_character():
    got = TextParser().lines(["epoch: [1/500], global_step: 360, loss: nanxxx, acc: 0.000000"])
    assert got.names == ["train/loss", "train/acc"] and got.steps == [360, 360]
    assert got.values[0] != got.values[0]  # NaN


def test_mmengine_json_lines_evaluation_records(tmp_path):
    text = (
        '{"lr": 0.1, "loss": 3.3, "epoch": 1, "step": 100}\n'
        '{"accuracy/top1": 7.09, "accuracy/top5": 25.3, "step": 1}\n'
        '{"lr": 0.1, "loss": 3.0, "epoch": 2, "step": 200}\n'
        '{"accuracy/top1": 12.7, "accuracy/top5": 46.0, "step": 2}\n'
    )
    h, _ = read(tmp_path, "scalars.json", text)
    assert steps(h, "val/acc") == [100, 200] and values(h, "val/acc") == pytest.approx([0.0709, 0.127])
    assert "train/acc" not in h


# -- sniffing with fallback -------------------------------------------------------------------


def test_sniffer_fallback_to_text(tmp_path):
    # starts with "{" but is a console log; the JSON-lines reader finds nothing, the text reader does
    text = "{ run started }\nstep 1 loss 0.9\nstep 2 loss 0.8\nstep 3 loss 0.7\n"
    h, fmt = read(tmp_path, "odd.log", text)
    assert fmt == "text" and steps(h, "train/loss") == [1, 2, 3]
    # a CSV-looking first line that is a log line
    text = "epoch, step, starting now, please wait\nstep 1 loss 0.9\nstep 2 loss 0.8\n"
    h, fmt = read(tmp_path, "odd2.log", text)
    assert fmt == "text" and steps(h, "train/loss") == [1, 2]


# -- no training numbers: nothing is invented -----------------------------------------------------


def test_logs_without_training_numbers_have_no_records(tmp_path):
    text = (
        "2026-04-13 09:05:20,616 - INFO - Process initialization...\n"
        "2026-04-13 09:05:57,062 - INFO - HTTP Request: HEAD https://huggingface.co/gpt2/config.json "
        '"HTTP/1.1 200 OK"\n'
        "2026-04-13 13:40:35,066 - INFO - HTTP Request: GET https://huggingface.co/api/x/discussions?p=0 "
        '"HTTP/1.1 404 Not Found"\n'
        "2026-04-13 13:40:36,001 - INFO - 모델 로드 완료: 124 M 파라미터, 장치 0\n"
        "**RuntimeError: CUDA out of memory.** Tried to allocate 1.71 GiB (GPU 0; 31.72 GiB total capacity)\n"
        "[06/09 11:05:25 d2.engine.hooks]: Overall training speed: 22 iterations in 0:01:02 (2.8448 s / it)\n"
        "Traceback (most recent call last):\n"
        '  File "train.py", line 418, in <module>\n'
        "    results = main()\n"
    )
    p = tmp_path / "no_training.log"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(NoRecords):
        load(LogSource(str(p), [p]), History().add_point)


def test_bracket_counters_count_samples_across_epochs(tmp_path):
    # PyTorch's MNIST example: "Train Epoch: 2 [19200/60000 (32%)]"; the test line carries the step
    lines = [
        f"Train Epoch: {ep} [{b}/60000 ({100 * b // 60000}%)]\tLoss: {2.3 / (ep + b / 60000):.6f}"
        for ep in (1, 2)
        for b in (0, 19200, 38400)
    ]
    lines.insert(3, "Test set: Average loss: 0.3000, Accuracy: 9080/10000 (91%)")
    h, _ = read(tmp_path, "mnist.log", "\n".join(lines) + "\n")
    assert steps(h, "train/loss") == [0, 19200, 38400, 60000, 79200, 98400]
    assert steps(h, "test/loss") == [38400]


def test_timm_epoch_and_counter(tmp_path):
    text = "".join(
        f"Train: {e} [ {b:>4d}/1251 ({100 * b // 1251:>3d}%)]  Loss: {6.9 - e - b / 1e4:.3f} (6.93)  LR: 1.000e-04\n"
        for e in (0, 1)
        for b in (0, 100)
    )
    h, _ = read(tmp_path, "timm.log", text)
    assert steps(h, "train/loss") == [0, 100, 1251, 1351]


def test_epoch_only_logs_count_records_when_an_epoch_holds_several():
    got = TextParser().lines(
        [
            "Epoch 1 loss 0.5",
            "Epoch 1 loss 0.4",
            "Epoch 2 loss 0.3",
            "Epoch 2 val_loss 0.3",
            "Epoch 2 loss 0.2",
        ]
    )
    assert list(zip(got.names, got.steps, strict=True)) == [
        ("train/loss", 1),
        ("train/loss", 2),
        ("train/loss", 3),
        ("val/loss", 3),
        ("train/loss", 4),
    ]

import math

import pytest

from muvo_doctor.logs.text import parse_line, signal_name

TQDM = "100%|████| 525/525 [00:24<00:00, 21.3it/s, loss=0.3787, acc=87.5%, avg_score=0.0998]"
KERAS = "1875/1875 [====] - 3s 2ms/step - loss: 0.0266 - accuracy: 0.9983 - val_loss: 0.0312"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("loss=0.3331", [("loss", 0.3331, 4)]),
        ("Loss: 0.3331", [("loss", 0.3331, 4)]),
        ("loss 0.3331", [("loss", 0.3331, 4)]),
        ("acc 89.93%", [("acc", 0.8993, 4)]),
        (TQDM, [("loss", 0.3787, 4), ("acc", 0.875, 3), ("avg_score", 0.0998, 4)]),
        (KERAS, [("loss", 0.0266, 4), ("accuracy", 0.9983, 4), ("val_loss", 0.0312, 4)]),
        (
            "{'loss': 0.41, 'learning_rate': 5e-05, 'epoch': 0.5}",
            [("loss", 0.41, 2), ("learning_rate", 5e-05, 5), ("epoch", 0.5, 1)],
        ),
        ("Loss: 0.3364  Accuracy: 89.57%", [("loss", 0.3364, 4), ("accuracy", 0.8957, 4)]),
        ("Iteration 100, loss = 0.693", [("iteration", 100.0, 0), ("loss", 0.693, 3)]),
        ("lr 1.5E-3", [("lr", 0.0015, 4)]),
        ("loss: 0.0000", [("loss", 0.0, 4)]),
        ("time 02:05:41 version 1.2.3 n: 1,000 mem: 2000M", []),
        ("no numbers here", []),
        ("loss: tensor(0.5123, device='cuda:0', grad_fn=<MeanBackward0>)", [("loss", 0.5123, 4)]),
        ("loss: np.float32(0.5123) acc: tensor([0.75])", [("loss", 0.5123, 4), ("acc", 0.75, 2)]),
        ("\x1b[32mINFO\x1b[0m \x1b[1mloss\x1b[0m: 0.25", [("loss", 0.25, 2)]),
        ("Train Loss: 0.3 | Val Loss: 0.4", [("train_loss", 0.3, 1), ("val_loss", 0.4, 1)]),
        ("Accuracy: 9832/10000 (98%) step 200/1000", [("accuracy", 0.9832, 4), ("step", 200.0, 0)]),
        ("INFO step 200 the loss 0.5", [("step", 200.0, 0), ("loss", 0.5, 1)]),
        ("", []),
    ],
)
def test_parse_line(line, expected):
    assert parse_line(line) == expected


def test_parse_line_nan_inf():
    got = parse_line("loss nan grad_norm: inf x=-Infinity")
    assert [k for k, _, _ in got] == ["loss", "grad_norm", "x"]
    assert math.isnan(got[0][1]) and got[1][1] == math.inf and got[2][1] == -math.inf
    assert all(d is None for _, _, d in got)


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("loss", "train/loss"),
        ("Loss", "train/loss"),
        ("train_loss_step", "train/loss"),
        ("Train Loss", "train/loss"),
        ("val_loss", "val/loss"),
        ("eval_loss", "val/loss"),
        ("accuracy", "train/acc"),
        ("acc", "train/acc"),
        ("val_accuracy", "val/acc"),
        ("lr", "optim/lr"),
        ("learning_rate", "optim/lr"),
        ("lr/pg0", "optim/lr"),
        ("auc", "val/auroc"),
        ("metrics/mAP50-95(B)", "val/map"),
        ("grad_norm", "grad/norm/total"),
        ("avg_score", "avg_score"),
        ("val_f1", "val/f1"),
    ],
)
def test_signal_name(key, name):
    assert signal_name(key) == name


def test_rewrites_keep_the_last_shown_segment_and_each_completed_bar(tmp_path):
    from muvo_doctor.core.history import History
    from muvo_doctor.logs.text import read_text

    done = "Epoch 1: 100%|#| 10/10 [loss=0.5000]"
    log = (
        f"Epoch 1:  50%|#| 5/10 [loss=0.9000]\r{done}\r{done}\rEpoch 2:  50%|#| 5/10 [loss=0.4000]\r \r\n"
        "step 30 loss=0.3000\r\u00a0\r\n"  # blank rewrites (a space, a no-break space) show nothing
        " \r \r\n"  # a line of blank rewrites only
        "step 40 loss=0.2000\n"
    )
    p = tmp_path / "bars.log"
    p.write_bytes(log.encode("utf-8"))
    h = History()
    st = read_text(str(p), h.add_point)
    assert h.series("train/loss").values.tolist() == [0.5, 0.4, 0.3, 0.2]
    assert st.rewrites == 9

"""muvo-train on a real-layout AnoVox folder (written from synthetic frames): end to end, and a bad root."""

import subprocess
import sys

from muvo_model.data.anovox_writer import write_anovox
from muvo_model.data.synthetic import SyntheticConfig, generate


def _train(*sets: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "muvo_model.train", "--no-doctor"]
    for s in sets:
        args += ["--set", s]
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


def test_muvo_train_reads_an_anovox_folder_and_prints_the_load_report(tmp_path):
    frames = generate(48, seed=0, config=SyntheticConfig(image_size=(32, 32), num_points=128))
    write_anovox(frames, tmp_path, scenario_size=6)
    p = _train(
        "data.source='anovox'",
        f"data.root='{tmp_path}'",
        "train.steps=4",
        "train.batch_size=8",
        "data.points=128",
        "data.image_size=32",
        "train.eval_every=4",
    )
    assert p.returncode == 0, p.stderr
    assert "scenarios" in p.stdout and "dropped 0 frames" in p.stdout
    assert "val_auroc" in p.stdout


def test_muvo_train_with_a_missing_anovox_root_is_one_line_exit_2(tmp_path):
    p = _train("data.source='anovox'", f"data.root='{tmp_path / 'nope'}'")
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "data.root" in p.stderr
    assert "Traceback" not in p.stderr

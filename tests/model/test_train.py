"""muvo-train as a user meets it: config errors, --describe, learning, exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from muvo_model.config import ConfigError, load_run_config
from muvo_model.faults import FAULTS
from muvo_model.train import main, train

# Small enough for a few seconds on 2 shared CPU cores.
TINY = [
    "data.train_frames=96",
    "data.val_frames=64",
    "data.image_size=32",
    "data.points=128",
    "model.width=32",
    "train.batch_size=16",
    "train.eval_batch_size=64",
    "train.threads=1",
]


def test_unknown_key_is_one_line_listing_valid_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--set", "train.stepz=3", "--describe"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "unknown key 'train.stepz'" in err and "steps" in err and "batch_size" in err


def test_bad_values_and_files_are_one_line(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "run.toml"
    bad.write_text("[train]\nsteps = 'many'\n")
    assert main(["--config", str(bad), "--describe"]) == 2
    assert main(["--config", str(tmp_path / "missing.toml")]) == 2
    assert main(["--set", "nosection=1"]) == 2
    assert main(["--fault", "typo"]) == 2
    assert main(["--bogus-flag"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 5 and all(line.startswith("muvo-train: ") for line in lines)
    assert "run.toml" in lines[0] and "train.steps" in lines[0]
    assert "no such config file" in lines[1]
    assert "random-labels" in lines[3]


def test_toml_file_and_overrides_resolve_in_order(tmp_path) -> None:
    f = tmp_path / "run.toml"
    f.write_text("[train]\nsteps = 7\nbatch_size = 8\n[model]\narch = 'original'\n")
    cfg = load_run_config(f, ["train.steps=9"])
    assert (cfg.train.steps, cfg.train.batch_size, cfg.model.arch) == (9, 8, "original")
    with pytest.raises(ConfigError, match="valid keys here are: arch, dropout"):
        load_run_config(None, ["model.depth=3"])


def test_describe_prints_config_data_and_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    sets = [*TINY, "data.train_frames=32", "data.val_frames=24"]
    argv = ["--describe", "--arch", "original"] + [x for s in sets for x in ("--set", s)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "[train]" in out and "train: 32 frames" in out and "val: 24 frames" in out
    assert "792,321 parameters" in out


def test_list_faults_names_every_fault(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list-faults"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in FAULTS) and len(FAULTS) == 12


@pytest.mark.slow
def test_short_training_beats_chance(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_run_config(None, [*TINY, "train.steps=60", "train.eval_every=60", "train.log_every=20"])
    res = train(cfg)
    assert res.metrics["val_auroc"] > 0.8
    out = capsys.readouterr().out
    assert "step 20 loss=" in out and "final metrics" in out and "doctor: verdict" in out


def test_resume_from_midpoint_is_exact(tmp_path) -> None:
    common = [*TINY, "train.steps=8", "train.log_every=2", "train.eval_every=100", "doctor.enabled=false"]
    straight = train(load_run_config(None, common))
    ckdir = f"train.checkpoint_dir={str(tmp_path)!r}"
    first = train(load_run_config(None, [*common, ckdir]), stop_at=4)
    assert len(first.losses) == 4 and (tmp_path / "checkpoint.pt").exists()
    resumed = train(load_run_config(None, [*common, ckdir, "train.resume=true"]))
    assert len(resumed.losses) == 8
    assert resumed.losses == straight.losses  # bit-identical continuation, not just close


class _Trap:
    """Unpickling it would create ``marker``: the code a hostile checkpoint could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (self.marker,))


def test_resume_refuses_a_checkpoint_holding_a_pickled_object(tmp_path, capsys) -> None:
    marker = tmp_path / "code-ran"
    torch.save({"model": _Trap(marker), "step": 3}, tmp_path / "checkpoint.pt")
    sets = [*TINY, "train.steps=2", "doctor.enabled=false", f"train.checkpoint_dir={str(tmp_path)!r}"]
    code = main([x for s in [*sets, "train.resume=true"] for x in ("--set", s)])
    err = capsys.readouterr().err
    assert code == 2 and not marker.exists()
    assert len(err.strip().splitlines()) == 1, err
    assert "checkpoint.pt: refused to resume" in err and "pickled object" in err and "delete it" in err

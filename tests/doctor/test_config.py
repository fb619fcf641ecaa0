"""Thresholds: every field documented, TOML overrides work, unknown keys name the valid ones."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from muvo_doctor.core.checks import flat_loss
from muvo_doctor.core.config import ConfigError, DoctorConfig, Thresholds, load_config
from muvo_doctor.core.history import History


def test_every_threshold_has_a_comment() -> None:
    src = inspect.getsource(Thresholds)
    for name in Thresholds.model_fields:
        line = next(ln for ln in src.splitlines() if ln.strip().startswith(f"{name}:"))
        assert "#" in line, f"Thresholds.{name} has no comment"


def test_toml_override_changes_a_check(tmp_path: Path) -> None:
    h = History()
    for i in range(60):
        h.add_point("train/loss", i, 0.7 + 1e-3 * (i % 2))  # relative spread 1.4e-3
    assert flat_loss.check(h, DoctorConfig()) == []
    cfg_file = tmp_path / "doctor.toml"
    cfg_file.write_text("flush_every = 10\n[thresholds]\nflat_rel_range = 1e-2\n", encoding="utf-8")
    cfg = load_config(cfg_file)
    assert cfg.flush_every == 10 and cfg.thresholds.flat_rel_range == 1e-2
    assert flat_loss.check(h, cfg)[0].severity == "critical"


def test_unknown_threshold_names_the_valid_keys(tmp_path: Path) -> None:
    cfg_file = tmp_path / "doctor.toml"
    cfg_file.write_text("[thresholds]\nflat_rel_rnage = 1e-2\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(cfg_file)
    msg = str(err.value)
    assert "thresholds.flat_rel_rnage" in msg and "flat_rel_range" in msg and "pb_window" in msg
    assert "\n" not in msg


def test_bad_value_is_one_line(tmp_path: Path) -> None:
    cfg_file = tmp_path / "doctor.toml"
    cfg_file.write_text('[thresholds]\npb_window = "many"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="pb_window"):
        load_config(cfg_file)


def test_thresholds_are_frozen() -> None:
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        DoctorConfig().thresholds.min_points = 3  # type: ignore[misc]

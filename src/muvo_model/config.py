"""Every knob of a muvo-train run, in one place: pydantic models, a TOML file and ``--set`` overrides.

    muvo-train --config run.toml --set train.steps=500 --set model.arch=original

The defaults are the README's main job: the fusion model on the embedded synthetic data, sized so that a
2-core CPU reaches frame-level AUROC >= 0.95 in about three minutes.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# One reader and one error line for every --config of the project (muvo-doctor's and muvo-train's).
from muvo_doctor.core.config import ConfigError as ConfigError
from muvo_doctor.core.config import read_toml, validation_line


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataConfig(_Section):
    """Where frames come from. ``synthetic`` is generated on the training device, no download."""

    source: Literal["synthetic", "anovox"] = "synthetic"
    root: str | None = None  # AnoVox root folder (source = "anovox")
    train_frames: int = Field(768, ge=2)  # synthetic: frames in the training split
    val_frames: int = Field(512, ge=2)  # synthetic: frames in the held-out split (other scenarios)
    image_size: int = Field(64, ge=16)  # synthetic: square images, pixels per side
    points: int = Field(512, ge=8)  # points per frame (padded / subsampled to this many)
    seed: int = 0  # synthetic: the data seed (the validation split uses other scenarios)
    anomaly_fraction: float = Field(0.5, ge=0.0, le=1.0)  # synthetic: fraction of frames with an anomaly
    contrast: float = Field(1.0, ge=0.0, le=1.0)  # synthetic: strength of the anomaly cues
    anomaly_modality: Literal["both", "camera", "lidar"] = "both"  # synthetic: which sensors see the cue


class ModelConfig(_Section):
    """Architecture. ``original`` is fixed (792,321 parameters); the other fields shape ``fusion``."""

    arch: Literal["fusion", "original"] = "fusion"
    width: int = Field(64, ge=8)
    heads: int = Field(4, ge=1)
    tokens: int = Field(8, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


class OptimConfig(_Section):
    """AdamW with linear warmup then cosine decay to ``min_lr_ratio * lr``, and gradient clipping."""

    lr: float = Field(2e-3, ge=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    beta1: float = 0.9
    beta2: float = 0.99
    warmup_steps: int = Field(10, ge=0)
    min_lr_ratio: float = Field(0.05, ge=0.0, le=1.0)
    grad_clip: float = Field(1.0, ge=0.0)  # 0 disables clipping


class TrainConfig(_Section):
    """The loop: how long, how big, how often to evaluate and save, on what device."""

    steps: int = Field(120, ge=1)
    batch_size: int = Field(32, ge=1)  # global batch; each DDP rank takes batch_size / world_size
    eval_every: int = Field(40, ge=1)
    log_every: int = Field(10, ge=1)
    eval_batch_size: int = Field(256, ge=1)
    point_loss_weight: float = Field(0.5, ge=0.0)  # fusion only: weight of the masked per-point BCE
    seed: int = 0  # model init and batch order
    device: str = "auto"  # auto = cuda if available, else cpu
    amp: Literal["auto", "bf16", "off"] = "auto"  # auto = bf16 autocast on CUDA, off on CPU
    compile: bool = False  # torch.compile the model (pays off on GPU for long runs)
    threads: int = Field(0, ge=0)  # CPU threads for torch; 0 keeps torch's default
    checkpoint_dir: str | None = None  # write checkpoint.pt here every checkpoint_every steps and at the end
    checkpoint_every: int = Field(0, ge=0)  # 0 = only at the end (when checkpoint_dir is set)
    resume: bool = False  # continue from checkpoint_dir/checkpoint.pt when it exists


class DoctorSection(_Section):
    """The in-process doctor (muvo_doctor.recorder.Recorder wraps the loop)."""

    enabled: bool = True
    config: str | None = None  # a muvo-doctor TOML config file (thresholds, flush interval)


class RunConfig(_Section):
    """A complete muvo-train run."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    doctor: DoctorSection = DoctorSection()


def _parse_value(text: str) -> Any:
    """A ``--set`` value as TOML (numbers, booleans, quoted strings, arrays); a bare word stays a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to a nested dict (a copy is returned).

    Raises:
        ConfigError: an override without '=' or without a section.
    """
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            valid = ", ".join(RunConfig.model_fields)
            raise ConfigError(f"--set {item!r}: expected section.key=value with section one of: {valid}")
        section, name = parts
        target = out.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"--set {item!r}: '{section}' is not a section")
        target[name] = _parse_value(value.strip())
    return out


def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Resolve a RunConfig from defaults, an optional TOML file and ``--set`` overrides (in that order).

    Raises:
        ConfigError: missing/unreadable file, unknown key (the message lists the valid ones) or bad value.
    """
    data: dict[str, Any] = {}
    where = "--set"
    if path is not None:
        where = str(Path(path))
        data = read_toml(path)
    try:
        RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(validation_line(err, where, RunConfig)) from None
    data = apply_overrides(data, overrides or [])
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(validation_line(err, "--set" if overrides else where, RunConfig)) from None

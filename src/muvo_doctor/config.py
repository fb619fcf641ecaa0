"""Every threshold the doctor uses, in one pydantic config, overridable from a TOML file."""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message is one line naming the fix."""


class Thresholds(BaseModel):
    """Check thresholds. Each field's comment says which check reads it and why the default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Filled in by the checks (see muvo_doctor/checks/); every check reads only this object.
    min_points: int = 20  # fewer points of a signal than this and a trend check stays silent


class DoctorConfig(BaseModel):
    """How the doctor samples, flushes and judges."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Recorder: statistics cross from the device to the host once per flush, never per step.
    sample_every: int = 1  # compute in-process statistics every N optimizer steps
    flush_every: int = 50  # ... and bring them to the host every N sampled steps
    flush_seconds: float = 5.0  # ... or after this many seconds, whichever comes first
    history_points: int = 20_000  # per-signal bound on the history
    thresholds: Thresholds = Thresholds()


def _unknown_keys_message(err: ValidationError, where: str) -> str | None:
    for e in err.errors():
        if e["type"] == "extra_forbidden":
            loc = ".".join(str(p) for p in e["loc"])
            section: type[BaseModel] = DoctorConfig
            for part in e["loc"][:-1]:
                section = section.model_fields[str(part)].annotation  # type: ignore[assignment]
            valid = ", ".join(sorted(section.model_fields))
            return f"{where}: unknown key '{loc}'; valid keys here are: {valid}"
    return None


def load_config(path: str | Path | None = None) -> DoctorConfig:
    """Read a DoctorConfig from a TOML file (top-level keys and a ``[thresholds]`` table).

    Raises:
        ConfigError: the file is missing, not TOML, or has an unknown key or a bad value.
    """
    if path is None:
        return DoctorConfig()
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file; pass an existing TOML file or drop --config") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{p}: not a readable TOML file ({exc}); fix the syntax or drop --config") from None
    try:
        return DoctorConfig.model_validate(data)
    except ValidationError as err:
        msg = _unknown_keys_message(err, str(p))
        if msg is None:
            first = err.errors()[0]
            loc = ".".join(str(x) for x in first["loc"])
            msg = f"{p}: bad value for '{loc}': {first['msg']}"
        raise ConfigError(msg) from None

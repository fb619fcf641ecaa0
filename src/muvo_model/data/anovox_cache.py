"""The AnoVox load cache: one ``.pt`` file a load, keyed by the arguments and every file's size and mtime."""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields as dataclass_fields
from pathlib import Path

import torch

from muvo_model.data.anovox_report import AnovoxData, AnovoxReport
from muvo_model.data.frames import Frames

_CACHE_VERSION = 1


def _cache_key(root: Path, scenarios: list[Path], args: dict[str, object]) -> str:
    h = hashlib.sha256(
        json.dumps({"v": _CACHE_VERSION, "root": str(root.resolve()), **args}, sort_keys=True).encode()
    )
    for scn in scenarios:
        for p in sorted(scn.rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def cache_file(cache_dir: str | Path, root: Path, scenarios: list[Path], args: dict[str, object]) -> Path:
    return Path(cache_dir).expanduser() / f"anovox-{_cache_key(root, scenarios, args)}.pt"


def write_cache(path: Path, data: AnovoxData) -> None:
    blob = {
        "train": {f.name: getattr(data.train, f.name) for f in dataclass_fields(Frames)},
        "val": {f.name: getattr(data.val, f.name) for f in dataclass_fields(Frames)},
        "report": data.report.model_dump_json(),
        "train_keys": [list(k) for k in data.train_keys],
        "val_keys": [list(k) for k in data.val_keys],
        "scenario_names": data.scenario_names,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(blob, tmp)
        tmp.replace(path)
    except OSError:
        pass  # a cache that cannot be written only costs time next run


def read_cache(path: Path) -> AnovoxData | None:
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        return AnovoxData(
            train=Frames(**blob["train"]),
            val=Frames(**blob["val"]),
            report=AnovoxReport.model_validate_json(blob["report"]),
            train_keys=[(str(s), int(f)) for s, f in blob["train_keys"]],
            val_keys=[(str(s), int(f)) for s, f in blob["val_keys"]],
            scenario_names=list(blob["scenario_names"]),
        )
    except Exception:  # a stale or broken cache file is ignored and rewritten
        return None

"""Scanning an AnoVox folder: its scenarios, their sensor folders and the frames each one holds."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from muvo_model.data.anovox_report import DroppedFrame

_FRAME_RE = re.compile(r"_(\d+)$")


# ---------------------------------------------------------------------------------------------------------------
# Discovery


def _frame_files(folder: Path, suffix: str) -> dict[int, Path]:
    out: dict[int, Path] = {}
    for p in folder.iterdir():
        if p.is_file() and p.suffix.lower() == suffix:
            m = _FRAME_RE.search(p.stem)
            if m:
                out[int(m.group(1))] = p
    return out


def find_scenarios(root: Path) -> list[Path]:
    """All ``Scenario_*`` folders under root (root itself may be one), sorted, skipping configuration folders."""
    if root.name.startswith("Scenario_") and root.is_dir():
        return [root]
    found = [
        p
        for p in root.rglob("Scenario_*")
        if p.is_dir()
        and p.name != "Scenario_Configuration_Files"
        and "Scenario_Configuration_Files" not in p.parts
    ]
    # a Scenario_ folder nested inside another one is not a separate scenario
    found = [
        p
        for p in found
        if not any(q.name.startswith("Scenario_") for q in p.relative_to(root).parents if q.name)
    ]
    return sorted(found)


@dataclass
class Modalities:
    layout: str
    rgb: dict[int, Path] | None
    lidar: dict[int, Path] | None
    semantic: dict[int, Path] | None
    voxel: dict[int, Path] | None
    notes: list[str]


def _pick_sensor(scn: Path, prefix: str, notes: list[str]) -> Path | None:
    cands = sorted(p for p in scn.iterdir() if p.is_dir() and p.name.startswith(prefix + "("))
    if not cands:
        return None
    if len(cands) > 1:
        best = max(cands, key=lambda p: sum(1 for _ in p.iterdir()))
        notes.append(
            f"{scn.name}: {len(cands)} {prefix} folders, using {best.name} (the one with most files)"
        )
        return best
    return cands[0]


def _discover(scn: Path) -> Modalities:
    notes: list[str] = []
    if (scn / "RGB_IMG").is_dir() or (scn / "PCD").is_dir() or (scn / "SEMANTIC_PCD").is_dir():

        def sub(name: str, suffix: str) -> dict[int, Path] | None:
            d = scn / name
            return _frame_files(d, suffix) if d.is_dir() else None

        return Modalities(
            "fallback",
            sub("RGB_IMG", ".png"),
            sub("PCD", ".pcd"),
            sub("SEMANTIC_PCD", ".pcd"),
            sub("VOXEL_GRID", ".npy"),
            notes,
        )
    rgb = _pick_sensor(scn, "RGB-CAM", notes)
    lid = _pick_sensor(scn, "LIDAR", notes)
    sem = _pick_sensor(scn, "SEMANTIC-LIDAR", notes)
    vox = scn / "VOXEL_GRID"
    return Modalities(
        "primary",
        _frame_files(rgb, ".png") if rgb else None,
        _frame_files(lid, ".npy") if lid else None,
        _frame_files(sem, ".npy") if sem else None,
        _frame_files(vox, ".npy") if vox.is_dir() else None,
        notes,
    )


@dataclass
class Inventory:
    """What the scan found and what it dropped (with reasons), for the report."""

    dropped: list[DroppedFrame] = field(default_factory=list)
    notes: set[str] = field(default_factory=set)
    layouts: Counter[str] = field(default_factory=Counter)
    frames_found: int = 0


def complete_frames(
    scn: Path, key: str, label_source: str, max_frames: int | None, inv: Inventory
) -> tuple[Modalities, list[int]]:
    """The scenario's sensor folders and the ids of the frames that have a file in every required one
    (at most ``max_frames``, evenly spaced); the other frames go to ``inv.dropped``."""
    mods = _discover(scn)
    inv.layouts[mods.layout] += 1
    inv.notes.update(mods.notes)
    names = (
        {"rgb": "RGB-CAM", "lidar": "LIDAR", "semantic": "SEMANTIC-LIDAR", "voxel": "VOXEL_GRID"}
        if mods.layout == "primary"
        else {"rgb": "RGB_IMG", "lidar": "PCD", "semantic": "SEMANTIC_PCD", "voxel": "VOXEL_GRID"}
    )
    required = ["rgb", "lidar", "semantic"] + (["voxel"] if label_source == "voxel" else [])
    present = {m: getattr(mods, m) for m in required}
    all_ids = sorted(set().union(*(set(v) for v in present.values() if v)))
    inv.frames_found += len(all_ids)
    missing_dirs = [names[m] for m, v in present.items() if v is None]
    if not all_ids:
        inv.dropped.append(
            DroppedFrame(
                scenario=key, frame=None, kind="empty scenario", detail="no frame files in any sensor folder"
            )
        )
        return mods, []
    if missing_dirs:
        detail = f"no {'/'.join(missing_dirs)} folder in the scenario"
        inv.dropped += [
            DroppedFrame(scenario=key, frame=f, kind=f"missing {missing_dirs[0]}", detail=detail)
            for f in all_ids
        ]
        return mods, []
    ids = []
    for f in all_ids:
        miss = [names[m] for m, v in present.items() if v is not None and f not in v]
        if miss:
            inv.dropped.append(
                DroppedFrame(
                    scenario=key, frame=f, kind=f"missing {miss[0]}", detail=f"no {'/'.join(miss)} file"
                )
            )
        else:
            ids.append(f)
    if max_frames is not None and len(ids) > max_frames:
        sel = np.linspace(0, len(ids) - 1, max_frames).round().astype(int)
        ids = [ids[i] for i in sorted(set(sel.tolist()))]
    return mods, ids

"""Writes Frames (e.g. synthetic ones) as AnoVox scenario folders, so the reader is tested end to end.

    write_anovox(frames, "/tmp/anovox")                      # primary layout (RGB-CAM / LIDAR / SEMANTIC-LIDAR)
    write_anovox(frames, "/tmp/anovox_pcd", layout="pcd-binary")   # fallback layout (RGB_IMG / PCD / SEMANTIC_PCD)

Only valid points (``point_mask``) are written. Frame ids start at a non-zero offset and are not contiguous,
sensor folders carry a hash like the generator's, scenario folders a uuid, all deterministic per ``seed``.
"""

from __future__ import annotations

import hashlib
import json
import struct
import uuid
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from muvo_model.data.frames import Frames

SENSOR_LOCATION = (0, 0, 1.8)
SENSOR_ROTATION = (0, 0, 0)


# ---------------------------------------------------------------------------------------------------------------
# PNG encoding


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    a, b, c = a.astype(np.int16), b.astype(np.int16), c.astype(np.int16)
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c)).astype(np.uint8)


def encode_png(img: np.ndarray, filters: int | Sequence[int] = 0, level: int = 6) -> bytes:
    """Encodes a uint8 (H, W) or (H, W, C) image (C = 1, 2, 3, 4) as an 8-bit PNG.

    Args:
        img: uint8 pixels.
        filters: the PNG row filter (0 None, 1 Sub, 2 Up, 3 Average, 4 Paeth), or a sequence cycled over rows
            (tests use this to exercise every filter of the decoder).
        level: zlib compression level.

    Returns:
        The PNG file's bytes.
    """
    if img.dtype != np.uint8:
        raise ValueError(f"encode_png needs uint8 pixels, got {img.dtype}")
    if img.ndim == 2:
        img = img[..., None]
    h, w, ch = img.shape
    colour = {1: 0, 2: 4, 3: 2, 4: 6}.get(ch)
    if colour is None:
        raise ValueError(f"encode_png needs 1-4 channels, got {ch}")
    flist = [filters] if isinstance(filters, int) else list(filters)
    rows = img.reshape(h, w * ch)
    out = np.empty((h, w * ch + 1), np.uint8)
    zero = np.zeros(w * ch, np.uint8)
    for r in range(h):
        ft = int(flist[r % len(flist)])
        x = rows[r]
        up = rows[r - 1] if r else zero
        left = np.r_[np.zeros(ch, np.uint8), x[:-ch]]
        upleft = np.r_[np.zeros(ch, np.uint8), up[:-ch]]
        if ft == 0:
            f = x
        elif ft == 1:
            f = x - left
        elif ft == 2:
            f = x - up
        elif ft == 3:
            f = x - ((left.astype(np.uint16) + up) >> 1).astype(np.uint8)
        elif ft == 4:
            f = x - _paeth(left, up, upleft)
        else:
            raise ValueError(f"PNG filter type must be 0-4, got {ft}")
        out[r, 0] = ft
        out[r, 1:] = f

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(out.tobytes(), level))
        + chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------------------------------------------------------
# PCD writing


def write_pcd(path: Path, columns: dict[str, np.ndarray], binary: bool) -> None:
    """Writes a PCD v0.7 file with the given 1-D float32 / uint32 columns (``DATA ascii`` or ``binary``)."""
    names = list(columns)
    n = len(next(iter(columns.values())))
    types = ["U" if columns[k].dtype.kind == "u" else "F" for k in names]
    arrs = [
        columns[k].astype(np.uint32 if t == "U" else np.float32) for k, t in zip(names, types, strict=True)
    ]
    header = (
        "# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\n"
        f"FIELDS {' '.join(names)}\nSIZE {' '.join('4' for _ in names)}\nTYPE {' '.join(types)}\n"
        f"COUNT {' '.join('1' for _ in names)}\nWIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\n"
        f"DATA {'binary' if binary else 'ascii'}\n"
    )
    if binary:
        rec = np.empty(
            n, np.dtype([(k, a.dtype.newbyteorder("<")) for k, a in zip(names, arrs, strict=True)])
        )
        for k, a in zip(names, arrs, strict=True):
            rec[k] = a
        path.write_bytes(header.encode("ascii") + rec.tobytes())
    else:
        lines = [
            " ".join(str(int(v)) if t == "U" else repr(float(v)) for v, t in zip(row, types, strict=True))
            for row in zip(*arrs, strict=True)
        ]
        path.write_text(header + "\n".join(lines) + ("\n" if lines else ""))


# ---------------------------------------------------------------------------------------------------------------
# Voxel grid in the AnoVox convention (0.5 m, offset (250, 250, 16) m, label of the point nearest the centre)


def voxelise(points_xyz: np.ndarray, classes: np.ndarray, res: float = 0.5) -> np.ndarray:
    """(N, 3) points + (N,) ids -> (M, 4) uint16 [i, j, k, id], one row per occupied voxel."""
    offset = np.array([250.0, 250.0, 16.0])
    idx = np.floor((points_xyz + offset) / res).astype(np.int64)
    ok = np.all((idx >= 0) & (idx < np.array([1000, 1000, 64])), axis=1)
    idx, classes, xyz = idx[ok], classes[ok], points_xyz[ok]
    if idx.shape[0] == 0:
        return np.zeros((0, 4), np.uint16)
    dist = np.linalg.norm(xyz + offset - (idx + 0.5) * res, axis=1)
    key = (idx[:, 0] * 1000 + idx[:, 1]) * 64 + idx[:, 2]
    order = np.lexsort((dist, key))
    first = np.r_[True, np.diff(key[order]) != 0]
    sel = order[first]
    return np.concatenate([idx[sel], classes[sel, None]], axis=1).astype(np.uint16)


# ---------------------------------------------------------------------------------------------------------------


def _sensor_name(kind: str, args: dict[str, object], seed: int) -> str:
    digest = hashlib.sha256(json.dumps({**args, "seed": seed}, sort_keys=True).encode()).hexdigest()
    return f"{kind}{SENSOR_LOCATION}{SENSOR_ROTATION}_{int(digest[:15], 16)}"


def write_anovox(
    frames: Frames,
    root: str | Path,
    *,
    scenario_size: int | None = None,
    layout: Literal["primary", "pcd-ascii", "pcd-binary"] = "primary",
    first_frame_id: int = 3000,
    voxels: bool = True,
    png_filters: int | Sequence[int] = (0, 1, 2, 3, 4),
    seed: int = 0,
) -> list[tuple[str, int]]:
    """Writes frames as AnoVox ``Scenario_*`` folders under root.

    Args:
        frames: the frames to write (any device); image values in [0, 1] are quantised to uint8.
        root: output folder (created).
        scenario_size: frames per scenario folder, in order; None groups by ``frames.scenario``.
        layout: ``primary`` (sensor folders with .npy), or the fallback layout with ``pcd-ascii`` / ``pcd-binary``.
        first_frame_id: the first frame id; ids then step by 1 or 2 (not contiguous, not 0-based).
        voxels: also write ``VOXEL_GRID/VOXEL_GRID_<frame>.npy``.
        png_filters: PNG row filters, cycled over rows (all five by default, to exercise readers).
        seed: makes scenario uuids, sensor hashes and frame-id gaps deterministic.

    Returns:
        For each input frame, in input order: (scenario folder name, frame id) where it was written.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    f = frames.to("cpu")
    n = len(f)
    rng = np.random.default_rng(seed)
    images = (f.image.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    points = f.points.numpy()
    mask = f.point_mask.numpy()
    classes = f.point_class.numpy()
    frame_id = first_frame_id
    written: dict[int, tuple[str, int]] = {}
    for g in _groups(f, scenario_size):
        scn = root / f"Scenario_{uuid.UUID(bytes=rng.bytes(16), version=4)}"
        dirs = _scenario_folders(scn, images.shape[1:3], layout, voxels, seed)
        for i in g:
            m = mask[i]
            xyz, inten, cls = points[i, m, :3], points[i, m, 3], classes[i, m]
            _write_frame(dirs, layout, frame_id, encode_png(images[i], png_filters), xyz, inten, cls)
            written[i] = (scn.name, frame_id)
            if voxels:
                np.save(
                    scn / "VOXEL_GRID" / f"VOXEL_GRID_{frame_id}.npy", voxelise(xyz.astype(np.float64), cls)
                )
            frame_id += int(rng.integers(1, 3))
        frame_id += 100  # scenarios do not share frame ids
    return [written[i] for i in range(n)]


def _groups(f: Frames, scenario_size: int | None) -> list[list[int]]:
    """The frame indices of each scenario folder: runs of ``scenario_size``, or by ``f.scenario``."""
    n = len(f)
    if scenario_size is not None:
        return [list(range(s, min(s + scenario_size, n))) for s in range(0, n, scenario_size)]
    sc = f.scenario.numpy()
    return [np.nonzero(sc == v)[0].tolist() for v in sorted(set(sc.tolist()), key=sc.tolist().index)]


def _scenario_folders(
    scn: Path, image_hw: tuple[int, ...], layout: str, voxels: bool, seed: int
) -> dict[str, Path]:
    """Make the scenario folder, its ``sensor_setup.json`` and sensor folders; the folder of each sensor."""
    scn.mkdir()
    cam = {"image_size_x": int(image_hw[1]), "image_size_y": int(image_hw[0]), "fov": 90}
    sensors = {
        "RGB-CAM": (_sensor_name("RGB-CAM", cam, seed), cam, ".png"),
        "LIDAR": (_sensor_name("LIDAR", {"channels": 32}, seed), {"channels": 32}, ".npy"),
        "SEMANTIC-LIDAR": (
            _sensor_name("SEMANTIC-LIDAR", {"channels": 32}, seed),
            {"channels": 32},
            ".npy",
        ),
    }
    setup = {
        name: {
            "sensor_type": kind,
            "location": list(SENSOR_LOCATION),
            "rotation": list(SENSOR_ROTATION),
            "args": args,
            "file_ending": ending,
            "save_data": True,
        }
        for kind, (name, args, ending) in sensors.items()
    }
    (scn / "sensor_setup.json").write_text(json.dumps(setup, indent=2))
    if layout == "primary":
        dirs = {kind: scn / name for kind, (name, _, _) in sensors.items()}
    else:
        dirs = {"RGB-CAM": scn / "RGB_IMG", "LIDAR": scn / "PCD", "SEMANTIC-LIDAR": scn / "SEMANTIC_PCD"}
    for d in dirs.values():
        d.mkdir()
    if voxels:
        (scn / "VOXEL_GRID").mkdir()
    return dirs


def _write_frame(
    dirs: dict[str, Path],
    layout: str,
    frame_id: int,
    png: bytes,
    xyz: np.ndarray,
    inten: np.ndarray,
    cls: np.ndarray,
) -> None:
    """One frame's image and its two point clouds (.npy in the primary layout, .pcd in the fallback)."""
    if layout == "primary":
        stem = {kind: dirs[kind].name for kind in dirs}
        (dirs["RGB-CAM"] / f"{stem['RGB-CAM']}_{frame_id}.png").write_bytes(png)
        np.save(dirs["LIDAR"] / f"{stem['LIDAR']}_{frame_id}.npy", np.c_[xyz, inten].astype(np.float32))
        np.save(
            dirs["SEMANTIC-LIDAR"] / f"{stem['SEMANTIC-LIDAR']}_{frame_id}.npy",
            np.c_[xyz, cls].astype(np.float32),
        )
        return
    binary = layout == "pcd-binary"
    (dirs["RGB-CAM"] / f"RGB_IMG_{frame_id}.png").write_bytes(png)
    cols = {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2]}
    write_pcd(dirs["LIDAR"] / f"PCD_{frame_id}.pcd", {**cols, "intensity": inten}, binary)
    write_pcd(
        dirs["SEMANTIC-LIDAR"] / f"SEMANTIC_PCD_{frame_id}.pcd",
        {**cols, "label": cls.astype(np.uint32)},
        binary,
    )


__all__ = ["encode_png", "voxelise", "write_anovox", "write_pcd"]

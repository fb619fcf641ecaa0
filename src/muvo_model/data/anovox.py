"""Reader for real AnoVox scenario folders, yielding train/val Frames split by scenario.

    data = load_anovox("/data/AnoVox", num_points=4096, image_size=(64, 96))
    print(data.report.summary())
    train, val = data.train, data.val

Layouts (see docs/anovox.md):

- primary: ``Scenario_*/`` with ``sensor_setup.json``, ``RGB-CAM(x, y, z)(r, p, y)_<hash>/..._<frame>.png``,
  ``LIDAR(...)_<hash>/..._<frame>.npy`` (N,4: x, y, z, intensity), ``SEMANTIC-LIDAR(...)_<hash>/..._<frame>.npy``
  (N,4: x, y, z, class id), optional ``VOXEL_GRID/VOXEL_GRID_<frame>.npy`` (M,4 uint16: i, j, k, class id).
  Sensor folders are matched by their prefix (``RGB-CAM(``, ``LIDAR(``, ...): the hash differs per run.
- fallback: ``Scenario_*/RGB_IMG/RGB_IMG_<frame>.png``, ``PCD/PCD_<frame>.pcd``,
  ``SEMANTIC_PCD/SEMANTIC_PCD_<frame>.pcd`` (ASCII or binary PCD; class from a ``label``-like field, or from the
  AnoVox anomaly colours of an ``rgb`` field).

Labels: a point is anomalous when its class id is in ``anomaly_ids``; points with ``ignore_ids`` (ego vehicle,
agent-mode actors) are removed before anything else. A frame is anomalous when at least ``min_anomaly_points``
semantic-lidar points (or, with ``label_source="voxel"``, voxels) carry an anomaly id. Frames are never labelled from
folder names or metadata files. The split is by scenario (neighbouring frames are near-duplicates), stratified by
whether a scenario contains anomaly frames, deterministic per seed.

PNG images are decoded by a small zlib + numpy decoder (8-bit gray, gray+alpha, RGB, RGBA, palette; no
interlacing; ~0.15 s for a 768x512 image with Paeth rows, 10 ms without). When Pillow happens to be installed it
is used instead (``png_backend="auto"``); ``cache_dir`` makes later loads skip decoding altogether.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict

from muvo_model.data.frames import ANOMALY_IDS, IGNORE_IDS, Frames

# AnoVox anomaly colours (Definitions.py (245, id, 0), 100 -> (245, 0, 0)) and the benchmark palette variants
# (notes 2.2); used only when a SEMANTIC_PCD carries colours instead of ids.
ANOMALY_COLOURS: dict[tuple[int, int, int], int] = {
    **{(245, k, 0): k for k in range(29, 35)},
    (245, 0, 0): 100,
    (250, 128, 114): 29,
    (255, 36, 0): 30,
    (224, 17, 95): 31,
    (184, 15, 10): 32,
}
# a colour that is not an anomaly colour becomes this class id (known: "some normal class")
UNKNOWN_NORMAL_ID = 0

_FRAME_RE = re.compile(r"_(\d+)$")


class AnovoxError(ValueError):
    """An AnoVox folder that cannot be used; the message is one line naming the folder and the fix."""


class PngError(ValueError):
    """A PNG file this decoder cannot read (corrupt, or an unsupported variant)."""


class PcdError(ValueError):
    """A PCD file this reader cannot parse."""


# ---------------------------------------------------------------------------------------------------------------
# PNG decoding (zlib + numpy)

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel


def _unfilter_wavefront(rows: np.ndarray, width: int, ch: int) -> np.ndarray:
    """Undoes all row filters of an image that has Average (3) or Paeth (4) rows.

    Those filters depend on the already-decoded left pixel, so a row cannot be decoded in one numpy op. But pixel
    (r, c) depends only on (r, c-1), (r-1, c) and (r-1, c-1): every anti-diagonal r + c = d is independent given
    the previous two. The image is skewed so that diagonals become contiguous rows, and decoded in H + W - 1
    vectorised steps (~0.15 s for 768x512 RGB instead of ~0.6 s for a per-byte Python loop).

    Args:
        rows: uint8 (H, 1 + width * ch), the filter byte then the filtered bytes of each row.

    Returns:
        uint8 (H, width, ch).
    """
    h = rows.shape[0]
    ft = rows[:, 0]
    filtered = rows[:, 1:].reshape(h, width, ch).astype(np.int16)
    n_diag = h + width - 1
    r_idx, c_idx = np.arange(h)[:, None], np.arange(width)[None, :]
    # skewed layout: S[d, r + 1] is pixel (r, d - r); S[:, 0] is the zero row above the image, S[n_diag] (read as
    # S[-1] at d = 0 and 1) stays zero: the zero column left of the image and the zero corner
    out = np.zeros((n_diag + 1, h + 1, ch), np.int16)
    src = np.zeros((n_diag, h + 1, ch), np.int16)
    src[r_idx + c_idx, r_idx + 1] = filtered
    kinds = [(ft == k)[:, None] for k in range(5)]
    for d in range(n_diag):
        r0, r1 = max(0, d - width + 1), min(h - 1, d)
        cur, above, rs = slice(r0 + 1, r1 + 2), slice(r0, r1 + 1), slice(r0, r1 + 1)
        a, b, c = out[d - 1, cur], out[d - 1, above], out[d - 2, above]  # left, up, up-left
        pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        pred = np.where(
            kinds[4][rs],
            paeth,
            np.where(kinds[3][rs], (a + b) >> 1, np.where(kinds[2][rs], b, np.where(kinds[1][rs], a, 0))),
        )
        out[d, cur] = (src[d, cur] + pred) & 0xFF
    return out[r_idx + c_idx, r_idx + 1].astype(np.uint8)


def _unfilter_rows(rows: np.ndarray, width: int, ch: int) -> np.ndarray:
    """(H, W, C) pixels of rows filtered with None / Sub / Up only: one vectorised op per row."""
    height, stride = rows.shape[0], rows.shape[1] - 1
    out = np.empty((height, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    for r in range(height):
        line, ft = rows[r, 1:], int(rows[r, 0])
        if ft == 1:  # Sub: running sum per channel, mod 256 via uint8 overflow
            out[r] = np.cumsum(line.reshape(width, ch), axis=0, dtype=np.uint8).reshape(-1)
        elif ft == 2:  # Up
            out[r] = line + prev
        else:
            out[r] = line
        prev = out[r]
    return out.reshape(height, width, ch)


def decode_png(data: bytes, name: str = "<png>") -> np.ndarray:
    """Decodes an 8-bit, non-interlaced PNG into a uint8 (H, W, C) array (C = 1, 2, 3 or 4; palette -> 3 or 4).

    Args:
        data: the file's bytes.
        name: used in error messages.

    Returns:
        uint8 array (H, W, C).

    Raises:
        PngError: corrupt data, or bit depth != 8 / interlacing (one line naming the file).
    """
    if not data.startswith(_PNG_SIG):
        raise PngError(f"{name}: not a PNG file (bad signature)")
    pos, ihdr, plte, trns, idat = 8, None, None, None, []
    try:
        while pos < len(data):
            (length,) = struct.unpack(">I", data[pos : pos + 4])
            ctype = data[pos + 4 : pos + 8]
            body = data[pos + 8 : pos + 8 + length]
            if len(body) != length:
                raise PngError(f"{name}: truncated {ctype.decode('latin1')} chunk")
            pos += 12 + length
            if ctype == b"IHDR":
                ihdr = struct.unpack(">IIBBBBB", body)
            elif ctype == b"PLTE":
                plte = np.frombuffer(body, np.uint8).reshape(-1, 3)
            elif ctype == b"tRNS":
                trns = np.frombuffer(body, np.uint8)
            elif ctype == b"IDAT":
                idat.append(body)
            elif ctype == b"IEND":
                break
    except struct.error as e:
        raise PngError(f"{name}: truncated PNG ({e})") from None
    if ihdr is None or not idat:
        raise PngError(f"{name}: missing IHDR or IDAT chunk")
    width, height, depth, colour, _, _, interlace = ihdr
    if depth != 8 or colour not in _CHANNELS or interlace != 0:
        raise PngError(
            f"{name}: unsupported PNG (bit depth {depth}, colour type {colour}, interlace {interlace}); "
            "only 8-bit non-interlaced PNGs are read: re-save the image as 8-bit RGB"
        )
    if colour == 3 and plte is None:
        raise PngError(f"{name}: palette PNG without a PLTE chunk")
    ch = _CHANNELS[colour]
    stride = width * ch
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as e:
        raise PngError(f"{name}: corrupt image data ({e})") from None
    if len(raw) < height * (stride + 1):
        raise PngError(f"{name}: image data too short ({len(raw)} bytes for {width}x{height}x{ch})")
    rows = np.frombuffer(raw, np.uint8, count=height * (stride + 1)).reshape(height, stride + 1)
    ftypes = rows[:, 0]
    if ftypes.max(initial=0) > 4:
        raise PngError(f"{name}: unknown row filter type {int(ftypes.max())}")
    img = (
        _unfilter_wavefront(rows, width, ch)
        if ftypes.max(initial=0) >= 3
        else _unfilter_rows(rows, width, ch)
    )
    if colour == 3:
        assert plte is not None
        if int(img.max(initial=0)) >= plte.shape[0]:
            raise PngError(f"{name}: palette index out of range")
        pal = plte
        if trns is not None:
            alpha = np.full((plte.shape[0], 1), 255, np.uint8)
            alpha[: len(trns), 0] = trns[: plte.shape[0]]
            pal = np.concatenate([plte, alpha], axis=1)
        img = pal[img[..., 0]]
    return img


def read_png(path: Path, backend: Literal["auto", "numpy"] = "auto") -> np.ndarray:
    """Reads a PNG file into uint8 (H, W, C); ``auto`` uses Pillow when it is installed (faster), else ours."""
    if backend == "auto":
        try:
            from PIL import Image  # optional acceleration, not a dependency
        except ImportError:
            backend = "numpy"
        else:
            try:
                with Image.open(path) as im:
                    if im.mode not in ("L", "LA", "RGB", "RGBA"):
                        im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
                    arr = np.asarray(im)
            except Exception as e:  # Pillow raises many types for a broken file
                raise PngError(f"{path}: unreadable image ({e})") from None
            return arr[..., None] if arr.ndim == 2 else arr
    return decode_png(path.read_bytes(), str(path))


def image_to_tensor(img: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (H, W, C) -> float32 (3, h, w) in [0, 1], resized with antialiased bilinear interpolation."""
    c = img.shape[2]
    if c in (1, 2):  # gray (+alpha): replicate
        img = np.repeat(img[..., :1], 3, axis=2)
    elif c == 4:  # drop alpha
        img = img[..., :3]
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)
    if tuple(x.shape[1:]) != tuple(size):
        x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return x.clamp_(0.0, 1.0)


# ---------------------------------------------------------------------------------------------------------------
# PCD (ASCII and binary)

_PCD_TYPES = {
    ("F", 4): "<f4",
    ("F", 8): "<f8",
    ("U", 1): "u1",
    ("U", 2): "<u2",
    ("U", 4): "<u4",
    ("I", 1): "i1",
}
_PCD_TYPES.update({("I", 2): "<i2", ("I", 4): "<i4", ("U", 8): "<u8", ("I", 8): "<i8"})


def read_pcd(path: Path) -> dict[str, np.ndarray]:
    """Reads a PCD file (``DATA ascii`` or ``binary``) into ``{field: 1-D array}``.

    Raises:
        PcdError: malformed header, ``binary_compressed`` data, or a size mismatch.
    """
    raw = path.read_bytes()
    header: dict[str, list[str]] = {}
    pos = 0
    while True:
        end = raw.find(b"\n", pos)
        if end < 0:
            raise PcdError(f"{path}: PCD header has no DATA line")
        line = raw[pos:end].decode("ascii", "replace").strip()
        pos = end + 1
        if not line or line.startswith("#"):
            continue
        key, *vals = line.split()
        header[key.upper()] = vals
        if key.upper() == "DATA":
            break
    try:
        names = header["FIELDS"]
        sizes = [int(v) for v in header["SIZE"]]
        types = header["TYPE"]
        counts = [int(v) for v in header.get("COUNT", ["1"] * len(names))]
        n = (
            int(header["POINTS"][0])
            if "POINTS" in header
            else int(header["WIDTH"][0]) * int(header["HEIGHT"][0])
        )
        mode = header["DATA"][0].lower()
    except (KeyError, ValueError, IndexError) as e:
        raise PcdError(f"{path}: malformed PCD header ({e!r})") from None
    if not (len(names) == len(sizes) == len(types) == len(counts)):
        raise PcdError(f"{path}: FIELDS/SIZE/TYPE/COUNT lengths differ")
    dtypes = []
    for name, t, s, c in zip(names, types, sizes, counts, strict=True):
        if (t, s) not in _PCD_TYPES:
            raise PcdError(f"{path}: unsupported PCD field type {t}{s} for '{name}'")
        dtypes.append((name, _PCD_TYPES[(t, s)], (c,)) if c > 1 else (name, _PCD_TYPES[(t, s)]))
    dt = np.dtype(dtypes)
    if mode == "binary":
        body = raw[pos:]
        if len(body) < n * dt.itemsize:
            raise PcdError(f"{path}: binary PCD data too short ({len(body)} bytes for {n} points)")
        rec = np.frombuffer(body, dt, count=n)
        return {name: np.asarray(rec[name]) for name in names}
    if mode == "ascii":
        try:
            table = np.loadtxt(raw[pos:].decode("ascii").splitlines(), dtype=np.float64, ndmin=2)
        except ValueError as e:
            raise PcdError(f"{path}: malformed ASCII PCD data ({e})") from None
        if table.shape[0] != n or table.shape[1] != sum(counts):
            raise PcdError(f"{path}: ASCII PCD has {table.shape} values, header says {n} x {sum(counts)}")
        out, col = {}, 0
        for name, (_, np_t, *_rest), c in zip(names, dtypes, counts, strict=True):
            vals = table[:, col : col + c]
            col += c
            if name in ("rgb", "rgba") and np.dtype(np_t).kind == "f":
                # packed colour written as a float's text: reinterpret the float32 bits
                out[name] = vals[:, 0].astype(np.float32)
            else:
                out[name] = vals[:, 0].astype(np_t) if c == 1 else vals.astype(np_t)
        return out
    raise PcdError(
        f"{path}: PCD DATA '{mode}' is not supported; convert to ascii or binary (e.g. pcl_convert_pcd_ascii_binary)"
    )


def _pcd_points(fields: dict[str, np.ndarray], path: Path) -> np.ndarray:
    if not all(k in fields for k in ("x", "y", "z")):
        raise PcdError(f"{path}: PCD has no x/y/z fields (found {sorted(fields)})")
    cols = [fields[k].astype(np.float32) for k in ("x", "y", "z")]
    inten = fields.get("intensity", fields.get("i"))
    cols.append(inten.astype(np.float32) if inten is not None else np.zeros_like(cols[0]))
    return np.stack(cols, axis=1)


def _pcd_classes(fields: dict[str, np.ndarray], path: Path) -> np.ndarray:
    for key in ("label", "object_tag", "objtag", "ObjTag", "semantic", "class", "tag"):
        if key in fields:
            return fields[key].astype(np.int64)
    for key in ("rgb", "rgba"):
        if key in fields:
            v = fields[key]
            packed = v.astype(np.float32).view(np.uint32) if v.dtype.kind == "f" else v.astype(np.uint32)
            r, g, b = (packed >> 16) & 0xFF, (packed >> 8) & 0xFF, packed & 0xFF
            key_arr = (r.astype(np.int64) << 16) | (g.astype(np.int64) << 8) | b.astype(np.int64)
            cls = np.full(key_arr.shape, UNKNOWN_NORMAL_ID, np.int64)
            for (cr, cg, cb), cid in ANOMALY_COLOURS.items():
                cls[key_arr == ((cr << 16) | (cg << 8) | cb)] = cid
            return cls
    raise PcdError(f"{path}: semantic PCD has no label field or rgb colours (found {sorted(fields)})")


# ---------------------------------------------------------------------------------------------------------------
# The load report


class DroppedFrame(BaseModel):
    """One frame (or a whole scenario, frame None) left out, and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    scenario: str
    frame: int | None
    kind: str  # short reason category, e.g. "missing LIDAR", "corrupt .npy", "unreadable PNG"
    detail: str


class SplitStats(BaseModel):
    """What one split holds."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    scenarios: int
    frames: int
    anomaly_frames: int
    normal_frames: int
    points: int  # valid (unmasked) points after subsampling
    anomaly_points: int
    point_classes: dict[int, int]  # class id -> count of valid points after subsampling


class AnovoxReport(BaseModel):
    """The load-time report: what was found, what was kept, what was dropped and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    root: str
    layouts: dict[str, int]  # layout name -> scenarios
    scenarios_found: int
    frames_found: int
    train: SplitStats
    val: SplitStats
    train_scenarios: list[str]
    val_scenarios: list[str]
    dropped: list[DroppedFrame]
    drop_reasons: dict[str, int]
    notes: list[str]
    anomaly_ids: list[int]
    ignore_ids: list[int]

    def summary(self) -> str:
        """A printable multi-line summary."""
        lines = [
            f"AnoVox {self.root}: {self.scenarios_found} scenarios, {self.frames_found} frames found "
            f"(layouts: {', '.join(f'{k} {v}' for k, v in sorted(self.layouts.items()))})",
        ]
        for name, s in (("train", self.train), ("val", self.val)):
            frac = s.anomaly_points / s.points if s.points else 0.0
            lines.append(
                f"  {name:5s} {s.scenarios:4d} scenarios {s.frames:6d} frames: "
                f"{s.anomaly_frames} anomaly / {s.normal_frames} normal "
                f"({s.anomaly_frames / max(s.frames, 1):.1%} anomaly); points {s.points} "
                f"({frac:.3%} anomaly)"
            )
        n_drop = sum(self.drop_reasons.values())
        lines.append(f"  dropped {n_drop} frames" + (":" if n_drop else ""))
        for kind, cnt in sorted(self.drop_reasons.items(), key=lambda kv: -kv[1]):
            example = next(d for d in self.dropped if d.kind == kind)
            lines.append(
                f"    {cnt:6d}  {kind}  (e.g. {example.scenario} frame {example.frame}: {example.detail})"
            )
        for note in self.notes:
            lines.append(f"  note: {note}")
        return "\n".join(lines)


@dataclass
class AnovoxData:
    """The result of ``load_anovox``: train and val Frames (CPU) and the load report.

    ``train_keys`` / ``val_keys`` give, per frame, (scenario folder relative to root, frame id): the way back
    to the files. ``Frames.scenario`` indexes ``scenario_names``.
    """

    train: Frames
    val: Frames
    report: AnovoxReport
    train_keys: list[tuple[str, int]]
    val_keys: list[tuple[str, int]]
    scenario_names: list[str]


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
class _Modalities:
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


def _discover(scn: Path) -> _Modalities:
    notes: list[str] = []
    if (scn / "RGB_IMG").is_dir() or (scn / "PCD").is_dir() or (scn / "SEMANTIC_PCD").is_dir():

        def sub(name: str, suffix: str) -> dict[int, Path] | None:
            d = scn / name
            return _frame_files(d, suffix) if d.is_dir() else None

        return _Modalities(
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
    return _Modalities(
        "primary",
        _frame_files(rgb, ".png") if rgb else None,
        _frame_files(lid, ".npy") if lid else None,
        _frame_files(sem, ".npy") if sem else None,
        _frame_files(vox, ".npy") if vox.is_dir() else None,
        notes,
    )


# ---------------------------------------------------------------------------------------------------------------
# Per-frame loading


class _Drop(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind, self.detail = kind, detail


def _load_npy(path: Path, min_cols: int) -> np.ndarray:
    try:
        with path.open("rb") as fh:
            magic = fh.read(6)
        if magic != b"\x93NUMPY":
            raise _Drop(
                "corrupt .npy", f"{path.name}: not a .npy file (bad header, {path.stat().st_size} bytes)"
            )
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        if "pickled" in str(e):
            raise _Drop(
                "corrupt .npy",
                f"{path.name}: holds pickled objects, expected a numeric (N, {min_cols}) array",
            ) from None
        raise _Drop(
            "corrupt .npy", f"{path.name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    if arr.ndim != 2 or arr.shape[1] < min_cols or arr.dtype.kind not in "fiu":
        raise _Drop(
            "corrupt .npy",
            f"{path.name}: expected a numeric (N, {min_cols}) array, got {arr.dtype} {arr.shape}",
        )
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise _Drop("corrupt .npy", f"{path.name}: {int((~np.isfinite(arr)).sum())} non-finite values")
    return arr


def _cell_keys(xyz: np.ndarray, cell: float) -> np.ndarray:
    q = np.floor(xyz / cell).astype(np.int64) + (1 << 20)  # shift to non-negative, 21 bits per axis
    return (q[:, 0] << 42) | (q[:, 1] << 21) | q[:, 2]


def _merge(lidar: np.ndarray | None, sem: np.ndarray, notes: set[str], cell: float = 0.2) -> np.ndarray:
    """Points (n, 4) x, y, z, intensity with the semantic lidar's xyz; intensity from LIDAR.

    When both clouds have the same rows the intensity is copied; otherwise (separate sensors) each semantic point
    takes the intensity of a LIDAR point in the same ``cell`` metre voxel, 0 when there is none.
    """
    out = np.zeros((sem.shape[0], 4), np.float64)
    out[:, :3] = sem[:, :3]
    if lidar is None or lidar.shape[0] == 0 or sem.shape[0] == 0:
        return out
    if lidar.shape[0] == sem.shape[0] and np.allclose(lidar[:, :3], sem[:, :3], atol=1e-3):
        out[:, 3] = lidar[:, 3]
        return out
    notes.add(
        f"LIDAR and SEMANTIC-LIDAR clouds differ (separate sensors): the model sees the semantic cloud's points, "
        f"intensity taken from a LIDAR point in the same {cell} m cell (0 if none)"
    )
    lk = _cell_keys(lidar[:, :3], cell)
    order = np.argsort(lk, kind="stable")
    lk_sorted = lk[order]
    sk = _cell_keys(sem[:, :3], cell)
    pos = np.clip(np.searchsorted(lk_sorted, sk), 0, len(lk_sorted) - 1)
    hit = lk_sorted[pos] == sk
    out[hit, 3] = lidar[order[pos[hit]], 3]
    return out


@dataclass
class _Loaded:
    scenario: str
    frame: int
    image: torch.Tensor  # (3, h, w)
    points: np.ndarray  # (n, 4) after removing ignored points
    classes: np.ndarray  # (n,)
    label: float


def _load_frame(
    mods: _Modalities,
    frame: int,
    *,
    image_size: tuple[int, int],
    label_source: str,
    anomaly: np.ndarray,
    ignore: np.ndarray,
    min_anomaly_points: int,
    png_backend: Literal["auto", "numpy"],
    notes: set[str],
) -> tuple[torch.Tensor, np.ndarray, np.ndarray, float]:
    assert mods.rgb is not None and mods.semantic is not None
    if mods.layout == "primary":
        sem = _load_npy(mods.semantic[frame], 4)
        lidar = _load_npy(mods.lidar[frame], 4) if mods.lidar is not None else None
        classes = np.rint(sem[:, 3]).astype(np.int64)
    else:
        try:
            sf = read_pcd(mods.semantic[frame])
            sem = _pcd_points(sf, mods.semantic[frame]).astype(np.float64)
            classes = _pcd_classes(sf, mods.semantic[frame])
            lidar = None
            if mods.lidar is not None:
                lidar = _pcd_points(read_pcd(mods.lidar[frame]), mods.lidar[frame]).astype(np.float64)
        except (PcdError, OSError) as e:
            raise _Drop("corrupt .pcd", str(e)) from None
        if not (np.all(np.isfinite(sem)) and (lidar is None or np.all(np.isfinite(lidar)))):
            raise _Drop("corrupt .pcd", f"frame {frame}: non-finite point coordinates")
    keep = ~np.isin(classes, ignore)
    sem, classes = sem[keep], classes[keep]
    if lidar is not None and lidar.shape[0] == keep.shape[0]:
        lidar = lidar[keep]  # same rows as the semantic cloud: drop the same (ignored) points
    points = _merge(lidar, sem, notes)
    points[:, 3] = np.clip(points[:, 3], 0.0, 1.0)
    if label_source == "voxel":
        assert mods.voxel is not None
        vox = _load_npy(mods.voxel[frame], 4)
        vcls = vox[:, 3].astype(np.int64)
        n_anom = int(np.isin(vcls[~np.isin(vcls, ignore)], anomaly).sum())
    else:
        n_anom = int(np.isin(classes, anomaly).sum())
    try:
        img = read_png(mods.rgb[frame], png_backend)
    except (PngError, OSError) as e:
        raise _Drop("unreadable PNG", str(e).replace(str(mods.rgb[frame]), mods.rgb[frame].name)) from None
    image = image_to_tensor(img, image_size)
    return image, points, classes, float(n_anom >= min_anomaly_points)


def _subsample(
    points: np.ndarray, classes: np.ndarray, num_points: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random subset (random order) of at most num_points points, padded; never the first N in scan order."""
    n = points.shape[0]
    idx = rng.permutation(n)[:num_points]
    pts = np.zeros((num_points, 4), np.float32)
    cls = np.zeros(num_points, np.int64)
    mask = np.zeros(num_points, bool)
    pts[: len(idx)] = points[idx]
    cls[: len(idx)] = classes[idx]
    mask[: len(idx)] = True
    return pts, cls, mask


# ---------------------------------------------------------------------------------------------------------------
# Split and public entry point


def split_scenarios(
    names: Sequence[str], has_anomaly: Sequence[bool], val_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Deterministic scenario split, stratified by whether a scenario has anomaly frames.

    Each group (scenarios with / without anomalies) contributes ``round(val_fraction * size)`` scenarios to val,
    at least one and at most size - 1 when the group has two or more scenarios.
    """
    rng = np.random.default_rng(seed)
    train: list[str] = []
    val: list[str] = []
    for flag in (True, False):
        group = sorted(n for n, a in zip(names, has_anomaly, strict=True) if a == flag)
        if not group:
            continue
        perm = [group[i] for i in rng.permutation(len(group))]
        k = int(round(val_fraction * len(group)))
        if len(group) >= 2:
            k = min(max(k, 1), len(group) - 1)
        val += perm[:k]
        train += perm[k:]
    # a group of one went wholly to one side; make sure both splits have a scenario
    if not val and len(train) >= 2:
        val.append(train.pop())
    if not train and len(val) >= 2:
        train.append(val.pop())
    return sorted(train), sorted(val)


def load_anovox(
    root: str | Path,
    *,
    num_points: int = 4096,
    image_size: int | tuple[int, int] = (64, 96),
    anomaly_ids: Sequence[int] = ANOMALY_IDS,
    ignore_ids: Sequence[int] = IGNORE_IDS,
    val_fraction: float = 0.2,
    seed: int = 0,
    min_anomaly_points: int = 1,
    label_source: Literal["semantic-lidar", "voxel"] = "semantic-lidar",
    max_frames_per_scenario: int | None = None,
    png_backend: Literal["auto", "numpy"] = "auto",
    cache_dir: str | Path | None = None,
) -> AnovoxData:
    """Loads AnoVox scenario folders into train and val Frames, split by scenario.

    Args:
        root: a release folder, a parent of several, or one ``Scenario_*`` folder.
        num_points: points per frame after random subsampling; fewer points are padded (``point_mask`` False).
        image_size: output image (H, W), or one int for square images.
        anomaly_ids: class ids that make a point (and its frame) anomalous.
        ignore_ids: class ids whose points are removed (ego vehicle, agent-mode actors).
        val_fraction: fraction of scenarios (per stratum) held out for validation.
        seed: split and subsampling seed.
        min_anomaly_points: anomaly points (or voxels) needed to label a frame anomalous.
        label_source: ``semantic-lidar`` (default) or ``voxel`` (VOXEL_GRID labels the frame; then required).
        max_frames_per_scenario: keep at most this many frames per scenario (evenly spaced), for quick runs.
        png_backend: ``auto`` (Pillow if installed, else the built-in decoder) or ``numpy`` (always built-in).
        cache_dir: when set, the loaded result is saved there (one ``.pt`` file, keyed by the arguments and every
            file's path, size and mtime) and reused by the next call with the same inputs: decoding PNGs in
            numpy is slow (~0.15 s per 768x512 image), a cache hit takes milliseconds per frame.

    Returns:
        AnovoxData with ``train`` and ``val`` Frames on the CPU and the load ``report``.

    Raises:
        AnovoxError: no scenarios, nothing loadable, fewer than two usable scenarios, or a split with one class.
    """
    root, size = _checked_arguments(root, image_size, num_points, val_fraction)
    scenarios = _scenarios(root)
    anomaly = np.asarray(sorted(set(anomaly_ids)), np.int64)
    ignore = np.asarray(sorted(set(ignore_ids)), np.int64)
    args = dict(
        num_points=num_points, image_size=size, anomaly_ids=anomaly.tolist(), ignore_ids=ignore.tolist(),
        val_fraction=val_fraction, seed=seed, min_anomaly_points=min_anomaly_points, label_source=label_source,
        max_frames_per_scenario=max_frames_per_scenario,
    )  # fmt: skip
    cache_path = None if cache_dir is None else _cache_file(cache_dir, root, scenarios, args)
    if cache_path is not None and (cached := _read_cache(cache_path)) is not None:
        return cached  # a hit: milliseconds per frame instead of decoding every PNG

    # Scan and decode, scenario by scenario: frames with every modality are loaded, the others (and the
    # unreadable ones) are dropped with a reason. Cost: the PNG decode of each frame.
    inv = _Inventory()
    loaded: list[_Loaded] = []
    for scn in scenarios:
        key = str(scn.relative_to(root)) if scn != root else scn.name
        mods, ids = _complete_frames(scn, key, label_source, max_frames_per_scenario, inv)
        opts = (size, label_source, anomaly, ignore, min_anomaly_points, png_backend)
        loaded += _load_frames(mods, key, ids, inv, *opts)

    # Split by scenario (stratified by whether a scenario has anomalies), then pad/subsample the points.
    drop_reasons = dict(Counter(d.kind for d in inv.dropped))
    scen_names, has_anom = _usable_scenarios(root, loaded, len(scenarios), drop_reasons, anomaly)
    train_s, val_s = split_scenarios(scen_names, [has_anom[s] for s in scen_names], val_fraction, seed)
    scen_ix = {s: i for i, s in enumerate(scen_names)}  # Frames.scenario: an index into scen_names
    train, train_stats, train_keys = _build_split(loaded, train_s, scen_ix, num_points, seed, anomaly, size)
    val, val_stats, val_keys = _build_split(loaded, val_s, scen_ix, num_points, seed, anomaly, size)
    report = AnovoxReport(
        root=str(root), layouts=dict(inv.layouts), scenarios_found=len(scenarios), frames_found=inv.frames_found,
        train=train_stats, val=val_stats, train_scenarios=train_s, val_scenarios=val_s, dropped=inv.dropped,
        drop_reasons=drop_reasons, notes=sorted(inv.notes), anomaly_ids=anomaly.tolist(),
        ignore_ids=ignore.tolist(),
    )  # fmt: skip
    _check_both_classes(root, report)
    data = AnovoxData(train, val, report, train_keys, val_keys, scen_names)
    if cache_path is not None:
        _write_cache(cache_path, data)
    return data


def _scenarios(root: Path) -> list[Path]:
    """The Scenario_* folders under ``root``; AnovoxError when there is none."""
    scenarios = find_scenarios(root)
    if not scenarios:
        raise AnovoxError(
            f"{root}: no Scenario_* folders found; point data.root at an AnoVox release (the folder that contains "
            "Scenario_<uuid>/ folders)"
        )
    return scenarios


def _load_frames(
    mods: _Modalities,
    key: str,
    ids: list[int],
    inv: _Inventory,
    image_size: tuple[int, int],
    label_source: Literal["semantic-lidar", "voxel"],
    anomaly: np.ndarray,
    ignore: np.ndarray,
    min_anomaly_points: int,
    png_backend: Literal["auto", "numpy"],
) -> list[_Loaded]:
    """The frames ``ids`` of one scenario, decoded; a frame that cannot be read goes to ``inv.dropped``."""
    loaded = []
    for f in ids:
        try:
            image, points, classes, label = _load_frame(
                mods, f, image_size=image_size, label_source=label_source, anomaly=anomaly, ignore=ignore,
                min_anomaly_points=min_anomaly_points, png_backend=png_backend, notes=inv.notes,
            )  # fmt: skip
        except _Drop as d:
            inv.dropped.append(DroppedFrame(scenario=key, frame=f, kind=d.kind, detail=d.detail))
            continue
        loaded.append(_Loaded(key, f, image, points, classes, label))
    return loaded


def _checked_arguments(
    root: str | Path, image_size: int | tuple[int, int], num_points: int, val_fraction: float
) -> tuple[Path, tuple[int, int]]:
    """The root folder and (H, W); AnovoxError for a missing folder or an impossible value."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise AnovoxError(
            f"{root}: no such folder; set data.root to the folder holding the Scenario_* folders"
        )
    size = (
        (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))
    )
    if num_points < 1:
        raise AnovoxError(f"num_points must be >= 1, got {num_points}")
    if not 0.0 < val_fraction < 1.0:
        raise AnovoxError(f"val_fraction must be in (0, 1), got {val_fraction}")
    return root, size


@dataclass
class _Inventory:
    """What the scan found and what it dropped (with reasons), for the report."""

    dropped: list[DroppedFrame] = field(default_factory=list)
    notes: set[str] = field(default_factory=set)
    layouts: Counter[str] = field(default_factory=Counter)
    frames_found: int = 0


def _complete_frames(
    scn: Path, key: str, label_source: str, max_frames: int | None, inv: _Inventory
) -> tuple[_Modalities, list[int]]:
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


def _usable_scenarios(
    root: Path, loaded: list[_Loaded], n_scenarios: int, drop_reasons: dict[str, int], anomaly: np.ndarray
) -> tuple[list[str], dict[str, bool]]:
    """The scenarios with loaded frames (sorted) and whether each has an anomalous frame.

    Raises:
        AnovoxError: nothing loaded, one scenario only (the split is by scenario), or no anomaly anywhere.
    """
    if not loaded:
        top = max(drop_reasons.items(), key=lambda kv: kv[1])[0] if drop_reasons else "no frames"
        raise AnovoxError(
            f"{root}: no loadable frame in {n_scenarios} scenarios (most common reason: {top}); check that each "
            "Scenario_* has RGB-CAM, LIDAR and SEMANTIC-LIDAR folders (or RGB_IMG, PCD, SEMANTIC_PCD)"
        )
    scen_names = sorted({x.scenario for x in loaded})
    if len(scen_names) < 2:
        raise AnovoxError(
            f"{root}: only one usable scenario ({scen_names[0]}); the split is by scenario, so at least two are "
            "needed: add scenarios"
        )
    has_anom = {s: False for s in scen_names}
    for x in loaded:
        has_anom[x.scenario] |= x.label > 0
    if not any(has_anom.values()):
        raise AnovoxError(
            f"{root}: no frame has a point with an anomaly id {anomaly.tolist()}; check anomaly_ids or the "
            "SEMANTIC-LIDAR files (a normality-only release cannot train a detector alone)"
        )
    return scen_names, has_anom


def _build_split(
    loaded: list[_Loaded],
    split: list[str],
    scen_index: dict[str, int],
    num_points: int,
    seed: int,
    anomaly: np.ndarray,
    size: tuple[int, int],
) -> tuple[Frames, SplitStats, list[tuple[str, int]]]:
    """The frames of the ``split`` scenarios as Frames (points subsampled or padded to ``num_points``,
    seeded per frame so a frame gets the same points in any split), their stats and (scenario, frame) keys."""
    members = set(split)
    items = [x for x in loaded if x.scenario in members]
    n = len(items)
    pts = np.zeros((n, num_points, 4), np.float32)
    cls = np.zeros((n, num_points), np.int64)
    msk = np.zeros((n, num_points), bool)
    for i, x in enumerate(items):
        rng = np.random.default_rng([seed, scen_index[x.scenario], x.frame])
        pts[i], cls[i], msk[i] = _subsample(x.points, x.classes, num_points, rng)
    lab = np.isin(cls, anomaly) & msk
    fl = np.asarray([x.label for x in items], np.float32)
    frames = Frames(
        image=torch.stack([x.image for x in items]) if items else torch.zeros(0, 3, *size),
        points=torch.from_numpy(pts),
        point_mask=torch.from_numpy(msk),
        point_class=torch.from_numpy(cls),
        point_label=torch.from_numpy(lab.astype(np.float32)),
        frame_label=torch.from_numpy(fl),
        scenario=torch.tensor([scen_index[x.scenario] for x in items], dtype=torch.int64),
    )
    vals, counts = np.unique(cls[msk], return_counts=True)
    stats = SplitStats(
        scenarios=len(split),
        frames=n,
        anomaly_frames=int(fl.sum()),
        normal_frames=int(n - fl.sum()),
        points=int(msk.sum()),
        anomaly_points=int(lab.sum()),
        point_classes={int(v): int(c) for v, c in zip(vals, counts, strict=True)},
    )
    return frames, stats, [(x.scenario, x.frame) for x in items]


def _check_both_classes(root: Path, report: AnovoxReport) -> None:
    """AnovoxError when a split holds only normal or only anomalous frames (nothing to rank)."""
    for name, st, scs in (
        ("train", report.train, report.train_scenarios),
        ("val", report.val, report.val_scenarios),
    ):
        if st.anomaly_frames == 0 or st.normal_frames == 0:
            only = "normal" if st.anomaly_frames == 0 else "anomaly"
            raise AnovoxError(
                f"{root}: the {name} split has only {only} frames ({st.frames} frames in {len(scs)} scenarios: "
                f"{', '.join(scs[:3])}{', ...' if len(scs) > 3 else ''}); add scenarios with "
                f"{'anomalies' if only == 'normal' else 'normal frames'} or change val_fraction/seed"
            )


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


def _cache_file(cache_dir: str | Path, root: Path, scenarios: list[Path], args: dict[str, object]) -> Path:
    return Path(cache_dir).expanduser() / f"anovox-{_cache_key(root, scenarios, args)}.pt"


def _write_cache(path: Path, data: AnovoxData) -> None:
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


def _read_cache(path: Path) -> AnovoxData | None:
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


def read_sensor_setup(scenario: Path) -> dict[str, object]:
    """The parsed ``sensor_setup.json`` of a scenario ({} when absent); raises AnovoxError if it is not JSON."""
    path = scenario / "sensor_setup.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnovoxError(f"{path}: not valid JSON ({e}); restore the file from the release") from None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m muvo_model.data.anovox ROOT [--points N] [--size H W] [--val-fraction F] [--seed S]``.

    Loads the folder and prints the load report; exit 0 when usable, 2 (one line on stderr) when not.
    """
    import argparse
    import sys

    ap = argparse.ArgumentParser(
        prog="python -m muvo_model.data.anovox", description="Check an AnoVox folder."
    )
    ap.add_argument("root")
    ap.add_argument("--points", type=int, default=4096)
    ap.add_argument("--size", type=int, nargs=2, default=(64, 96), metavar=("H", "W"))
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-frames-per-scenario", type=int, default=None)
    ap.add_argument("--cache-dir", default=None)
    a = ap.parse_args(argv)
    try:
        data = load_anovox(
            a.root,
            num_points=a.points,
            image_size=tuple(a.size),
            val_fraction=a.val_fraction,
            seed=a.seed,
            max_frames_per_scenario=a.max_frames_per_scenario,
            cache_dir=a.cache_dir,
        )
    except AnovoxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(data.report.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "AnovoxData",
    "AnovoxError",
    "AnovoxReport",
    "DroppedFrame",
    "PcdError",
    "PngError",
    "SplitStats",
    "decode_png",
    "find_scenarios",
    "image_to_tensor",
    "load_anovox",
    "read_pcd",
    "read_png",
    "split_scenarios",
]

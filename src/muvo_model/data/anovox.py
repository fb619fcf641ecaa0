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

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from muvo_model.data.anovox_cache import cache_file, read_cache, write_cache
from muvo_model.data.anovox_files import (
    PcdError,
    PngError,
    image_to_tensor,
    pcd_classes,
    pcd_points,
    read_pcd,
    read_png,
)
from muvo_model.data.anovox_report import AnovoxData, AnovoxReport, DroppedFrame, SplitStats
from muvo_model.data.anovox_scan import Inventory, Modalities, complete_frames, find_scenarios
from muvo_model.data.frames import ANOMALY_IDS, IGNORE_IDS, Frames


class AnovoxError(ValueError):
    """An AnoVox folder that cannot be used; the message is one line naming the folder and the fix."""


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
    mods: Modalities,
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
            sem = pcd_points(sf, mods.semantic[frame]).astype(np.float64)
            classes = pcd_classes(sf, mods.semantic[frame])
            lidar = None
            if mods.lidar is not None:
                lidar = pcd_points(read_pcd(mods.lidar[frame]), mods.lidar[frame]).astype(np.float64)
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
    cache_path = None if cache_dir is None else cache_file(cache_dir, root, scenarios, args)
    if cache_path is not None and (cached := read_cache(cache_path)) is not None:
        return cached  # a hit: milliseconds per frame instead of decoding every PNG

    # Scan and decode, scenario by scenario: frames with every modality are loaded, the others (and the
    # unreadable ones) are dropped with a reason. Cost: the PNG decode of each frame.
    inv = Inventory()
    loaded: list[_Loaded] = []
    for scn in scenarios:
        key = str(scn.relative_to(root)) if scn != root else scn.name
        mods, ids = complete_frames(scn, key, label_source, max_frames_per_scenario, inv)
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
        write_cache(cache_path, data)
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
    mods: Modalities,
    key: str,
    ids: list[int],
    inv: Inventory,
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
    "SplitStats",
    "find_scenarios",
    "load_anovox",
    "read_sensor_setup",
    "split_scenarios",
]

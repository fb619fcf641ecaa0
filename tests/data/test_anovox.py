"""The AnoVox reader, end to end on folders written by the AnoVox writer (no download)."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from muvo_model.data import anovox
from muvo_model.data.anovox import AnovoxError, load_anovox
from muvo_model.data.anovox_files import PngError, decode_png, image_to_tensor, read_pcd
from muvo_model.data.anovox_writer import encode_png, write_anovox, write_pcd
from muvo_model.data.frames import Frames

H, W, P = 12, 16, 48


def make_frames(anomalous: list[bool], per_scenario: int = 4, seed: int = 0) -> Frames:
    """Small random frames; scenario s has anomaly points in its odd frames when anomalous[s]."""
    g = torch.Generator().manual_seed(seed)
    n = len(anomalous) * per_scenario
    image = torch.rand(n, 3, H, W, generator=g)
    points = torch.rand(n, P, 4, generator=g)
    points[..., :3] = points[..., :3] * 60 - 20
    points[..., 2] = points[..., 2] / 6  # z within the AnoVox voxel grid's +-16 m
    n_valid = torch.randint(P // 2, P + 1, (n,), generator=g)
    mask = torch.arange(P)[None, :] < n_valid[:, None]
    normal_ids = torch.tensor([1, 2, 3, 14])
    cls = normal_ids[torch.randint(0, 4, (n, P), generator=g)]
    label = torch.zeros(n)
    for i in range(n):
        s = i // per_scenario
        cls[i, 0] = 214  # an ego-vehicle point: removed by the reader
        if anomalous[s] and i % 2 == 1:
            cls[i, 3:7] = torch.tensor([30, 30, 29, 100])
            label[i] = 1.0
    cls = torch.where(mask, cls, torch.zeros_like(cls))
    points = torch.where(mask[..., None], points, torch.zeros_like(points))
    plabel = torch.isin(cls, torch.tensor([29, 30, 100])).float()
    return Frames(
        image=image,
        points=points,
        point_mask=mask,
        point_class=cls,
        point_label=plabel,
        frame_label=label,
        scenario=torch.arange(n) // per_scenario,
    )


def written(tmp_path: Path, anomalous: list[bool], **kw) -> tuple[Frames, Path, list[tuple[str, int]]]:
    frames = make_frames(anomalous)
    root = tmp_path / "anovox"
    where = write_anovox(frames, root, **kw)
    return frames, root, where


def check_roundtrip(frames: Frames, where: list[tuple[str, int]], data) -> int:
    """Every loaded frame equals its written frame (points as a set, ignore ids removed); returns frames checked."""
    index = {key: i for i, key in enumerate(where)}
    checked = 0
    for split, keys in ((data.train, data.train_keys), (data.val, data.val_keys)):
        for j, key in enumerate(keys):
            i = index[key]
            assert split.frame_label[j] == frames.frame_label[i]
            assert (split.image[j] - frames.image[i]).abs().max() <= 0.5 / 255 + 1e-6
            m_in = frames.point_mask[i] & (frames.point_class[i] != 214)
            want = torch.cat([frames.points[i][m_in], frames.point_class[i][m_in, None].float()], 1)
            got_m = split.point_mask[j]
            got = torch.cat([split.points[j][got_m], split.point_class[j][got_m, None].float()], 1)
            assert torch.equal(want[torch.argsort(want[:, 0])], got[torch.argsort(got[:, 0])])
            assert torch.equal(
                split.point_label[j],
                (torch.isin(split.point_class[j], torch.tensor([29, 30, 100])) & got_m).float(),
            )
            checked += 1
    return checked


# --------------------------------------------------------------------------------------------------- PNG codec


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png_roundtrip_every_filter(channels: int) -> None:
    rng = np.random.default_rng(channels)
    for h, w in [(1, 1), (1, 9), (9, 1), (7, 5), (10, 13)]:
        img = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
        for filters in (0, 1, 2, 3, 4, (0, 1, 2, 3, 4), (4, 3, 2, 1)):
            out = decode_png(encode_png(img, filters))
            assert out.shape == (h, w, channels)
            assert np.array_equal(out, img), (filters, h, w)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_png_palette_and_unsupported_variants_are_clear_errors() -> None:
    sig = b"\x89PNG\r\n\x1a\n"
    # 2x1 palette image
    plte = bytes([10, 20, 30, 200, 100, 0])
    pal = sig + _chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 1, 8, 3, 0, 0, 0)) + _chunk(b"PLTE", plte)
    pal += _chunk(b"IDAT", zlib.compress(bytes([0, 1, 0]))) + _chunk(b"IEND", b"")
    assert decode_png(pal).tolist() == [[[200, 100, 0], [10, 20, 30]]]
    with pytest.raises(PngError, match="bit depth 16.*re-save"):
        decode_png(
            sig + _chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 16, 2, 0, 0, 0)) + _chunk(b"IDAT", b"x"),
            "a.png",
        )
    with pytest.raises(PngError, match="interlace 1"):
        decode_png(
            sig + _chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 1)) + _chunk(b"IDAT", b"x")
        )
    with pytest.raises(PngError, match="not a PNG"):
        decode_png(b"GIF89a....", "x.png")
    good = encode_png(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(PngError):
        decode_png(good[:40])


def test_image_resize_matches_torch_interpolate() -> None:
    img = np.random.default_rng(0).integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    x = image_to_tensor(img, (6, 8))
    assert x.shape == (3, 6, 8) and x.dtype == torch.float32
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255,
        size=(6, 8),
        mode="bilinear",
        antialias=True,
    )[0]
    assert torch.allclose(x, ref.clamp(0, 1), atol=1e-6)


# --------------------------------------------------------------------------------------------------- reader


def test_roundtrip_preserves_labels_classes_and_images(tmp_path: Path) -> None:
    frames, root, where = written(tmp_path, [True, False, True, True, False])
    # the layout the real generator writes: hashed sensor folders, non-zero frame ids
    scn = sorted(root.glob("Scenario_*"))[0]
    assert (scn / "sensor_setup.json").exists()
    cam = next(scn.glob("RGB-CAM(0, 0, 1.8)(0, 0, 0)_*"))
    assert min(int(p.stem.rsplit("_", 1)[1]) for p in cam.iterdir()) >= 3000
    data = load_anovox(root, num_points=P, image_size=(H, W), val_fraction=0.4, seed=0)
    assert check_roundtrip(frames, where, data) == len(frames)
    rep = data.report
    assert rep.frames_found == len(frames) and not rep.dropped
    assert rep.train.frames + rep.val.frames == len(frames)
    assert rep.train.anomaly_frames + rep.val.anomaly_frames == int(frames.frame_label.sum())
    assert 214 not in rep.train.point_classes and 30 in rep.train.point_classes
    text = rep.summary()
    assert "train" in text and "val" in text and "anomaly" in text and "dropped 0 frames" in text
    # resized images agree with resizing the quantised original
    small = load_anovox(root, num_points=P, image_size=(6, 8), val_fraction=0.4)
    i = where.index(small.train_keys[0])
    q = (frames.image[i] * 255).round().byte().permute(1, 2, 0).numpy()
    assert torch.allclose(small.train.image[0], image_to_tensor(q, (6, 8)), atol=1e-6)


def test_split_is_by_scenario_and_deterministic(tmp_path: Path) -> None:
    _, root, _ = written(tmp_path, [True, False] * 4)
    a = load_anovox(root, num_points=16, image_size=8, val_fraction=0.25, seed=1)
    train_s = {s for s, _ in a.train_keys}
    val_s = {s for s, _ in a.val_keys}
    assert train_s and val_s and not (train_s & val_s)
    assert set(a.report.train_scenarios) == train_s and set(a.report.val_scenarios) == val_s
    assert len(val_s) == 2  # 25% of each stratum (4 with anomalies, 4 without)
    # Frames.scenario agrees with the keys
    assert {a.scenario_names[k] for k in a.val.scenario.tolist()} == val_s
    b = load_anovox(root, num_points=16, image_size=8, val_fraction=0.25, seed=1)
    assert a.val_keys == b.val_keys and torch.equal(a.train.points, b.train.points)
    splits = {
        tuple(load_anovox(root, num_points=16, image_size=8, val_fraction=0.25, seed=s).report.val_scenarios)
        for s in range(6)
    }
    assert len(splits) > 1  # the seed moves the split


def test_missing_modality_drops_frames_and_reports(tmp_path: Path) -> None:
    frames, root, where = written(tmp_path, [True, False, True, False])
    scns = sorted(root.glob("Scenario_*"))
    shutil.rmtree(next(scns[0].glob("LIDAR(*")))  # a whole modality folder
    png = next(next(scns[1].glob("RGB-CAM(*")).glob("*.png"))
    png.unlink()  # one frame's image
    data = load_anovox(root, num_points=P, image_size=(H, W), val_fraction=0.5)
    rep = data.report
    assert rep.drop_reasons == {"missing LIDAR": 4, "missing RGB-CAM": 1}
    assert {d.scenario for d in rep.dropped if d.kind == "missing LIDAR"} == {scns[0].name}
    assert rep.train.frames + rep.val.frames == len(frames) - 5
    assert "missing LIDAR" in rep.summary() and "dropped 5 frames" in rep.summary()
    check_roundtrip(frames, where, data)


def test_scenario_without_anomaly_loads_as_normal(tmp_path: Path) -> None:
    frames, root, where = written(tmp_path, [True, True, False, False])
    data = load_anovox(root, num_points=P, image_size=(H, W), val_fraction=0.5)
    normal_scn = {where[i][0] for i in range(len(frames)) if frames.scenario[i] >= 2}
    for split, keys in ((data.train, data.train_keys), (data.val, data.val_keys)):
        for j, (s, _) in enumerate(keys):
            if s in normal_scn:
                assert split.frame_label[j] == 0 and split.point_label[j].sum() == 0


def test_corrupt_files_are_reported_drops(tmp_path: Path) -> None:
    frames, root, where = written(tmp_path, [True, False, True, False])
    scns = sorted(root.glob("Scenario_*"))
    bad_npy = sorted(next(scns[2].glob("SEMANTIC-LIDAR(*")).glob("*.npy"))[1]
    bad_npy.write_bytes(b"\x93NUMPY garbage")
    junk = sorted(next(scns[0].glob("LIDAR(*")).glob("*.npy"))[0]
    junk.write_bytes(b"junk")
    wrong_shape = sorted(next(scns[3].glob("LIDAR(*")).glob("*.npy"))[0]
    np.save(wrong_shape, np.zeros(5))
    bad_png = sorted(next(scns[1].glob("RGB-CAM(*")).glob("*.png"))[2]
    bad_png.write_bytes(bad_png.read_bytes()[:60])
    data = load_anovox(root, num_points=P, image_size=(H, W), val_fraction=0.5)
    rep = data.report
    assert rep.drop_reasons == {"corrupt .npy": 3, "unreadable PNG": 1}
    assert any(d.detail == f"{junk.name}: not a .npy file (bad header, 4 bytes)" for d in rep.dropped)
    details = " ".join(d.detail for d in rep.dropped)
    assert bad_npy.name in details and wrong_shape.name in details and bad_png.name in details
    assert all("\n" not in d.detail for d in rep.dropped)
    assert rep.train.frames + rep.val.frames == len(frames) - 4


def test_one_class_split_is_a_clear_error(tmp_path: Path) -> None:
    _, root, _ = written(
        tmp_path, [True, False, False]
    )  # one anomalous scenario: it cannot be in both splits
    with pytest.raises(AnovoxError) as e:
        load_anovox(root, num_points=8, image_size=8, val_fraction=0.34)
    msg = str(e.value)
    assert "\n" not in msg and str(root) in msg and "split has only normal frames" in msg
    assert "add scenarios with anomalies" in msg


def test_unusable_roots_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(AnovoxError, match="no such folder"):
        load_anovox(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnovoxError, match="no Scenario_\\* folders found"):
        load_anovox(tmp_path / "empty")
    _, root, _ = written(tmp_path, [False, False])
    with pytest.raises(AnovoxError, match="no frame has a point with an anomaly id"):
        load_anovox(root, num_points=8, image_size=8)


@pytest.mark.parametrize("layout", ["pcd-ascii", "pcd-binary"])
def test_fallback_pcd_layout(tmp_path: Path, layout: str) -> None:
    frames, root, where = written(tmp_path, [True, False, True], layout=layout)
    scn = sorted(root.glob("Scenario_*"))[0]
    assert (scn / "RGB_IMG").is_dir() and (scn / "PCD").is_dir() and (scn / "SEMANTIC_PCD").is_dir()
    data = load_anovox(root, num_points=P, image_size=(H, W), val_fraction=0.34)
    assert data.report.layouts == {"fallback": 3}
    assert check_roundtrip(frames, where, data) == len(frames)


def test_pcd_rgb_colours_and_compressed(tmp_path: Path) -> None:
    # open3d-style packed float rgb: anomaly colour (245, 0, 0) -> 100, (245, 30, 0) -> 30, others -> 0
    rgb = np.array([(245 << 16), (245 << 16) | (30 << 8), (128 << 16) | (64 << 8) | 128], np.uint32)
    cols = {"x": np.array([1.0, 2.0, 3.0]), "y": np.zeros(3), "z": np.zeros(3), "rgb": rgb.view(np.float32)}
    from muvo_model.data.anovox_files import pcd_classes

    for binary in (False, True):
        path = tmp_path / f"s{binary}.pcd"
        write_pcd(path, cols, binary)
        fields = read_pcd(path)
        assert fields["x"].tolist() == [1.0, 2.0, 3.0]
        assert pcd_classes(fields, path).tolist() == [100, 30, 0]
    path = tmp_path / "c.pcd"
    path.write_text("FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nPOINTS 0\nDATA binary_compressed\n")
    with pytest.raises(Exception, match="binary_compressed.*not supported"):
        read_pcd(path)


def test_subsampling_is_random_with_mask(tmp_path: Path) -> None:
    frames, root, where = written(tmp_path, [True, False, True, False])
    k = 8
    data = load_anovox(root, num_points=k, image_size=8, val_fraction=0.5, seed=0)
    assert data.train.point_mask.all()  # every frame has > 8 points: no padding
    # not the first k points in scan order (the file's order): compare with the written prefix
    prefixes_equal = 0
    for j, key in enumerate(data.train_keys):
        i = where.index(key)
        m = frames.point_mask[i] & (frames.point_class[i] != 214)
        first = frames.points[i][m][:k]
        prefixes_equal += int(torch.equal(first, data.train.points[j]))
        # the subset is drawn from the frame's points
        pool = {tuple(r) for r in frames.points[i][m].tolist()}
        assert all(tuple(r) in pool for r in data.train.points[j].tolist())
    assert prefixes_equal == 0
    other = load_anovox(root, num_points=k, image_size=8, val_fraction=0.5, seed=0, max_frames_per_scenario=4)
    assert torch.equal(other.train.points, data.train.points)  # deterministic per seed
    # more slots than points: padding is masked, zero, class 0
    big = load_anovox(root, num_points=P + 10, image_size=8, val_fraction=0.5)
    pad = ~big.train.point_mask
    assert pad.any() and (big.train.points[pad] == 0).all() and (big.train.point_class[pad] == 0).all()
    assert (big.train.point_label[pad] == 0).all()


def test_voxel_label_source(tmp_path: Path) -> None:
    frames, root, where = written(tmp_path, [True, False, True, False])
    data = load_anovox(root, num_points=P, image_size=8, val_fraction=0.5, label_source="voxel")
    for split, keys in ((data.train, data.train_keys), (data.val, data.val_keys)):
        for j, key in enumerate(keys):
            assert split.frame_label[j] == frames.frame_label[where.index(key)]


def test_cache_reuses_and_invalidates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frames, root, where = written(tmp_path, [True, False, True, False])
    cache = tmp_path / "cache"
    a = load_anovox(root, num_points=16, image_size=8, val_fraction=0.5, cache_dir=cache)
    (entry,) = list(cache.glob("anovox-*.pt"))
    with monkeypatch.context() as mp:  # a cache hit reads no frame file
        mp.setattr(anovox, "_load_frame", lambda *a, **k: pytest.fail("frame loaded despite the cache"))
        b = load_anovox(root, num_points=16, image_size=8, val_fraction=0.5, cache_dir=cache)
    assert torch.equal(a.train.image, b.train.image) and a.val_keys == b.val_keys and a.report == b.report
    # another argument or a changed file gives another cache entry
    load_anovox(root, num_points=16, image_size=8, val_fraction=0.5, seed=3, cache_dir=cache)
    assert len(list(cache.glob("anovox-*.pt"))) == 2
    png = sorted(root.rglob("*.png"))[0]
    png.write_bytes(png.read_bytes()[:50])
    c = load_anovox(root, num_points=16, image_size=8, val_fraction=0.5, cache_dir=cache)
    assert c.report.drop_reasons == {"unreadable PNG": 1}
    entry.write_bytes(b"broken")  # a broken cache file is ignored
    png.unlink()
    d = load_anovox(root, num_points=16, image_size=8, val_fraction=0.5, cache_dir=cache)
    assert d.report.drop_reasons == {"missing RGB-CAM": 1}


def test_command_line_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, root, _ = written(tmp_path, [True, False, True, False])
    assert anovox.main([str(root), "--points", "16", "--size", "8", "8", "--val-fraction", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "4 scenarios, 16 frames found" in out and "train" in out
    assert anovox.main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "set data.root" in err


def test_separate_lidar_cloud_transfers_intensity_and_notes_it(tmp_path: Path) -> None:
    frames, root, where = written(tmp_path, [True, False, True, False])
    # one LIDAR file becomes a different cloud (other order, one point missing): intensity comes by 0.2 m cell
    lid = sorted(next(sorted(root.glob("Scenario_*"))[0].glob("LIDAR(*")).glob("*.npy"))[0]
    cloud = np.load(lid)
    np.save(lid, cloud[::-1][1:])
    data = load_anovox(root, num_points=P, image_size=8, val_fraction=0.5)
    assert any("LIDAR and SEMANTIC-LIDAR clouds differ" in n for n in data.report.notes)
    key = (lid.parent.parent.name, int(lid.stem.rsplit("_", 1)[1]))
    split, keys = (data.train, data.train_keys) if key in data.train_keys else (data.val, data.val_keys)
    j = keys.index(key)
    got = split.points[j][split.point_mask[j]]
    missing = tuple(cloud[-1, :3].tolist())
    for row in got.tolist():
        hit = [r for r in cloud.tolist() if r[:3] == row[:3]]
        assert hit
        if tuple(row[:3]) != missing:
            assert row[3] == pytest.approx(hit[0][3], abs=1e-6)

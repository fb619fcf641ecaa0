"""The embedded synthetic data: shapes, determinism, labels from rendering, positive rate, contrast, shortcut guard."""

from __future__ import annotations

import pytest
import torch

from muvo_model.data.frames import Frames
from muvo_model.data.synthetic import SyntheticConfig, generate
from muvo_model.data.synthetic_config import STATIC

ANOMALY = torch.tensor([29, 30, 32])
N = 320  # frames per generated set: enough for AUROC estimates to +-0.05, ~2 s each on one core


# ---------------------------------------------------------------------------------------------- helpers


def auroc(score: torch.Tensor, label: torch.Tensor) -> float:
    """Rank formula (Mann-Whitney U) with average ranks for ties."""
    score, label = score.double(), label.bool()
    order = score.argsort()
    ranks = torch.empty_like(score)
    ranks[order] = torch.arange(1, len(score) + 1, dtype=torch.double)
    uniq, inv = torch.unique(score, return_inverse=True)
    avg = torch.zeros(len(uniq), dtype=torch.double).index_add_(0, inv, ranks)
    avg /= torch.bincount(inv, minlength=len(uniq)).double()
    ranks = avg[inv]
    npos, nneg = int(label.sum()), int((~label).sum())
    return float((ranks[label].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def fit_logreg(
    x: torch.Tensor, y: torch.Tensor, steps: int = 300
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Standardised logistic regression (LBFGS); returns (weights, mean, std) to score other data."""
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mu) / sd
    w = torch.zeros(x.shape[1] + 1, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=steps)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (
            torch.nn.functional.binary_cross_entropy_with_logits(z @ w[:-1] + w[-1], y)
            + 1e-3 * w.pow(2).sum()
        )
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), mu, sd


def score(model: tuple[torch.Tensor, torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    w, mu, sd = model
    return ((x - mu) / sd) @ w[:-1] + w[-1]


def global_stats(f: Frames) -> torch.Tensor:
    """What a shortcut would use: mean RGB, valid point count, mean height, mean intensity."""
    m = f.point_mask.float()
    cnt = m.sum(1)
    mean_z = (f.points[..., 2] * m).sum(1) / cnt
    mean_i = (f.points[..., 3] * m).sum(1) / cnt
    return torch.cat([f.image.mean((2, 3)), cnt[:, None], mean_z[:, None], mean_i[:, None]], 1)


def cue_features(f: Frames) -> torch.Tensor:
    """Features that should carry the anomaly: bright-return points standing in the corridor ahead, and
    strongly saturated pixels in the lower-middle of the image."""
    x, y, z, i = f.points.unbind(-1)
    corridor = f.point_mask & (x > 6) & (x < 42) & (y.abs() < 5.5) & (z > 0.15)
    bright = (corridor & (i > 0.75)).float().sum(1)
    img = f.image[:, :, f.image.shape[2] // 3 :, :]
    sat = img.amax(1) - img.amin(1)
    return torch.stack([bright.clamp_max(20), sat.flatten(1).quantile(0.995, dim=1)], 1)


@pytest.fixture(scope="module")
def train() -> Frames:
    return generate(N, seed=0)


@pytest.fixture(scope="module")
def held_out() -> Frames:
    return generate(N, seed=1, scenario_offset=10_000)


# ---------------------------------------------------------------------------------------------- tests


def test_shapes_dtypes_and_masking() -> None:
    cfg = SyntheticConfig(image_size=(24, 40), num_points=300, frames_per_scenario=4)
    f = generate(10, seed=3, config=cfg)
    assert f.image.shape == (10, 3, 24, 40) and f.image.dtype == torch.float32
    assert 0.0 <= float(f.image.min()) and float(f.image.max()) <= 1.0
    assert f.points.shape == (10, 300, 4) and f.points.dtype == torch.float32
    assert f.point_mask.shape == (10, 300) and f.point_mask.dtype == torch.bool
    assert f.point_class.dtype == torch.int64 and f.point_label.dtype == torch.float32
    assert f.frame_label.shape == (10,) and f.frame_label.dtype == torch.float32
    assert f.scenario.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    pad = ~f.point_mask
    assert (f.points[pad] == 0).all() and (f.point_class[pad] == 0).all() and (f.point_label[pad] == 0).all()
    assert ((f.points[..., 3] >= 0) & (f.points[..., 3] <= 1)).all()
    assert (f.point_class[f.point_mask] > 0).all()
    assert len(generate(0, seed=0)) == 0


def test_devices() -> None:
    assert generate(2, seed=0).image.device.type == "cpu"
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    f = generate(4, seed=0, device="cuda")
    assert all(t.device.type == "cuda" for t in (f.image, f.points, f.point_mask, f.frame_label, f.scenario))


def test_same_seed_is_bit_identical_and_seeds_differ() -> None:
    cfg = SyntheticConfig(image_size=(32, 32), num_points=256)
    a, b = generate(12, seed=7, config=cfg), generate(12, seed=7, config=cfg)
    for name in ("image", "points", "point_mask", "point_class", "point_label", "frame_label", "scenario"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    c = generate(12, seed=8, config=cfg)
    assert not torch.equal(a.image, c.image) and not torch.equal(a.points, c.points)
    d = generate(12, seed=7, config=cfg, scenario_offset=100)
    assert d.scenario.min() == 100 and not torch.equal(a.image, d.image)


def test_points_are_a_random_subsample_not_the_first_in_scan_order() -> None:
    f = generate(4, seed=0, config=SyntheticConfig(num_points=256))
    az = torch.atan2(f.points[..., 1], f.points[..., 0])[f.point_mask.all(1)]
    # scan order would give sorted azimuths (column-major spin); a random subsample does not
    assert (az.diff(dim=1) > 0).float().mean() < 0.7
    assert az.amax(1).sub(az.amin(1)).min() > 1.5  # the whole 120 degree sector is covered


def test_labels_agree_with_rendering(train: Frames) -> None:
    cfg = SyntheticConfig()
    is_anom = torch.isin(train.point_class, ANOMALY)
    assert torch.equal(train.point_label.bool(), is_anom & train.point_mask)
    npts = is_anom.sum(1)
    pos = train.frame_label.bool()
    assert pos.any() and (~pos).any()
    assert (npts[pos] >= cfg.min_anomaly_points).all()
    assert set(train.point_class[is_anom].unique().tolist()) == {29, 30, 32}
    # the lidar-only flavour labels by the lidar alone: label 0 <=> fewer points than the minimum
    lid = generate(80, seed=4, config=SyntheticConfig(anomaly_modality="lidar", min_anomaly_points=5))
    n_lid = torch.isin(lid.point_class, ANOMALY).sum(1)
    assert torch.equal(lid.frame_label.bool(), n_lid >= 5)


def test_camera_only_anomalies_look_normal_to_the_lidar() -> None:
    f = generate(40, seed=5, config=SyntheticConfig(anomaly_modality="camera"))
    assert f.frame_label.mean() > 0.3
    assert not torch.isin(f.point_class, ANOMALY).any() and f.point_label.sum() == 0


@pytest.mark.parametrize("fraction", [0.5, 0.2])
def test_positive_rate_close_to_requested(fraction: float, train: Frames) -> None:
    f = train if fraction == 0.5 else generate(150, seed=2, config=SyntheticConfig(anomaly_fraction=fraction))
    assert abs(float(f.frame_label.mean()) - fraction) < 0.03


def test_global_statistics_do_not_separate_classes(train: Frames, held_out: Frames) -> None:
    model = fit_logreg(global_stats(train), train.frame_label)
    auc = auroc(score(model, global_stats(held_out)), held_out.frame_label)
    assert auc < 0.6, f"global statistics predict the label: held-out AUROC {auc:.3f}"


def test_the_anomaly_is_learnable_from_simple_cues(train: Frames, held_out: Frames) -> None:
    model = fit_logreg(cue_features(train), train.frame_label)
    auc = auroc(score(model, cue_features(held_out)), held_out.frame_label)
    assert auc > 0.9, f"cue features do not detect the anomaly: held-out AUROC {auc:.3f}"


def test_contrast_zero_makes_anomalies_look_like_normal_clutter(train: Frames) -> None:
    def appearance(f: Frames) -> tuple[torch.Tensor, torch.Tensor]:
        anom = torch.isin(f.point_class, ANOMALY) & f.point_mask
        clutter = (f.point_class == STATIC) & f.point_mask
        return f.points[anom], f.points[clutter]

    f0 = generate(N, seed=6, config=SyntheticConfig(contrast=0.0))
    a, c = appearance(f0)
    assert abs(float(a[:, 3].mean() - c[:, 3].mean())) < 0.04  # intensity
    assert abs(float(a[:, 2].quantile(0.9) - c[:, 2].quantile(0.9))) < 0.25  # height
    a1, c1 = appearance(train)  # contrast 1: the same statistics differ clearly
    assert float(a1[:, 3].mean() - c1[:, 3].mean()) > 0.3
    assert float(a1[:, 2].quantile(0.9) - c1[:, 2].quantile(0.9)) > 0.25
    # and both cues vanish: the cue features no longer tell the frames apart
    for j in range(2):
        assert abs(auroc(cue_features(f0)[:, j], f0.frame_label) - 0.5) < 0.1

"""Synthetic AnoVox-like frames: street scenes ray-cast from primitives with torch ops (CPU or GPU).

Scene model (ego frame: x forward, y left, z up, metres, ground at z = 0):
  ground plane   road (|y| < road half width), sidewalks, terrain beyond, dashed centre line
  boxes          buildings (scenario layout), cars, traffic signs, normal clutter boxes, the odd-box anomaly
  cylinders      poles (scenario layout), pedestrians
  ellipsoids     normal clutter (rocks, bags), the animal anomaly
  cones          normal clutter (traffic cones), the special anomaly
Sensors: a pinhole camera and a spinning lidar (rings x azimuth grid) at the origin, a little above the ground.

Every frame has 1-3 clutter objects in the drivable corridor plus cars and pedestrians; in a positive frame one of
the clutter objects is the anomaly. Anomaly cues, scaled by `contrast`: camera = vivid colour and stripes,
lidar = high intensity and a taller shape. At contrast 0 anomalies are drawn from exactly the normal clutter's
distribution. All random scene parameters are drawn on the CPU from one torch.Generator (identical scenes on
every device); the pixel / point noise comes from a device generator seeded from it.

Cost: one chunk of frames is cast at a time; every ray is tested against every primitive (30 per frame),
so work is frames x rays x 30 elementwise ops, bounded in memory by `rays_per_chunk`.
"""

from __future__ import annotations

import math

import torch

from muvo_model.data.frames import Frames
from muvo_model.data.synthetic_config import ROAD, ROAD_LINE, SIDEWALK, TERRAIN, SyntheticConfig
from muvo_model.data.synthetic_raycast import bundle, cast
from muvo_model.data.synthetic_scene import (
    KB,
    KC,
    KE,
    KN,
    TYPE,
    Scene,
    draw_scene,
    place_anomaly,
    place_clutter,
)


def _surface(s: Scene, k: torch.Tensor, p: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-ray material and normal of the hit (N, R, ...) from the primitive table; k = -1 is the ground."""
    n_, r_ = k.shape
    kk = k.clamp_min(0)

    def g(x: torch.Tensor) -> torch.Tensor:  # gather a (N, K, ...) column by k
        idx = kk.view(n_, r_, *([1] * (x.dim() - 2))).expand(n_, r_, *x.shape[2:])
        return torch.gather(x, 1, idx)

    typ = TYPE.to(k.device)[kk]
    ground = k < 0
    # normals: box, cylinder, ellipsoid, cone (computed for all, selected by type)
    bc = torch.gather(s.box_c, 1, kk.clamp_max(KB - 1)[..., None].expand(n_, r_, 3))
    bh = torch.gather(s.box_h, 1, kk.clamp_max(KB - 1)[..., None].expand(n_, r_, 3))
    q = (p - bc) / bh
    ax = q.abs().argmax(-1, keepdim=True)
    n_box = torch.zeros_like(p).scatter_(-1, ax, torch.gather(q, -1, ax).sign())
    kc = (kk - KB).clamp(0, KC - 1)[..., None]
    cxy = torch.gather(s.cyl_xy, 1, kc.expand(n_, r_, 2))
    ctop = torch.gather(s.cyl_z[..., 1], 1, kc[..., 0])
    n_cyl = torch.cat([p[..., :2] - cxy, torch.zeros_like(p[..., :1])], -1)
    n_cyl = torch.where(
        (p[..., 2:] > ctop[..., None] - 1e-3), torch.tensor([0.0, 0.0, 1.0], device=p.device), n_cyl
    )
    ke = (kk - KB - KC).clamp(0, KE - 1)[..., None]
    ec = torch.gather(s.ell_c, 1, ke.expand(n_, r_, 3))
    es = torch.gather(s.ell_s, 1, ke.expand(n_, r_, 3))
    n_ell = (p - ec) / es**2
    kn = (kk - KB - KC - KE).clamp(0, KN - 1)
    nxy = torch.gather(s.cone_xy, 1, kn[..., None].expand(n_, r_, 2))
    nk2 = torch.gather((s.cone_r / s.cone_h) ** 2, 1, kn)
    nzt = torch.gather(s.cone_zb + s.cone_h, 1, kn)
    n_cone = torch.cat([p[..., :2] - nxy, (nk2 * (nzt - p[..., 2]))[..., None]], -1)
    t4 = typ[..., None]
    nrm = torch.where(t4 == 0, n_box, torch.where(t4 == 1, n_cyl, torch.where(t4 == 2, n_ell, n_cone)))
    nrm = torch.where(ground[..., None], torch.tensor([0.0, 0.0, 1.0], device=p.device), nrm)
    nrm = nrm / nrm.norm(dim=-1, keepdim=True).clamp_min(1e-9)

    # ground material by lateral position: road, centre line (dashed, moves with the ego), sidewalk, terrain
    ay = p[..., 1].abs()
    rw, sw = s.road_hw[:, None], s.side_w[:, None]
    line = (ay < 0.12) & ((p[..., 0] + s.ego_x[:, None]).remainder(6.0) < 3.0)
    g_cls = torch.where(
        ay < rw, torch.where(line, ROAD_LINE, ROAD), torch.where(ay < rw + sw, SIDEWALK, TERRAIN)
    )
    g_col = torch.where(
        (ay < rw)[..., None],
        torch.where(line[..., None], torch.tensor([0.85, 0.85, 0.8], device=p.device), s.road_col[:, None]),
        torch.where((ay < rw + sw)[..., None], s.side_col[:, None], s.terr_col[:, None]),
    )
    g_refl = torch.where(ay < rw, torch.where(line, 0.7, 0.12), torch.where(ay < rw + sw, 0.3, 0.25))
    return {
        "cls": torch.where(ground, g_cls, g(s.cls)),
        "albedo": torch.where(ground[..., None], g_col, g(s.albedo)),
        "refl": torch.where(ground, g_refl, g(s.refl)),
        "stripe": torch.where(ground, 0.0, g(s.stripe)),
        "glow": torch.where(ground, 0.0, g(s.glow)),
        "anom": ~ground & g(s.anom),
        "normal": nrm,
    }


def _camera_rays(
    cfg: SyntheticConfig, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit ray directions (1, H*W, 3) in pixel order, the same in 8x8-tile bundles (1, T, S, 3), and for each
    pixel its position in the bundled order (H*W,)."""
    h, w = cfg.image_size
    tx = math.tan(math.radians(cfg.camera_hfov_deg) / 2)
    ty = tx * h / w
    u = (torch.arange(w, device=device) + 0.5) / w * 2 - 1
    v = (torch.arange(h, device=device) + 0.5) / h * 2 - 1
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    d = torch.stack([torch.ones_like(uu), -uu * tx, -vv * ty], -1).reshape(1, h * w, 3)
    pitch = math.radians(cfg.camera_pitch_deg)
    cp, sp = math.cos(pitch), math.sin(pitch)
    d = torch.stack([d[..., 0] * cp - d[..., 2] * sp, d[..., 1], d[..., 0] * sp + d[..., 2] * cp], -1)
    d = d / d.norm(dim=-1, keepdim=True)
    ii, jj = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    tile = ((ii // 8) * (-(-w // 8)) + jj // 8).reshape(-1)
    order = torch.sort(tile, stable=True).indices
    pos = torch.empty_like(order)
    pos[order] = torch.arange(h * w, device=device)
    return d, bundle(d[:, order]), pos


def _render_camera(
    s: Scene,
    cfg: SyntheticConfig,
    cam_rays: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    gdev: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image (N, 3, H, W) in [0, 1] and the count of visible anomaly pixels (N,)."""
    n = s.road_hw.shape[0]
    h, w = cfg.image_size
    rays, bundles, pos = cam_rays
    t, k, p = cast(s, cfg.camera_height, bundles, 1e4)
    t, k, p = t[:, pos], k[:, pos], p[:, pos]  # back to pixel order
    m = _surface(s, k, p)
    hit = torch.isfinite(t)
    lam = (m["normal"] * s.sun[:, None]).sum(-1).clamp_min(0)
    col = m["albedo"] * (0.35 + 0.65 * lam + m["glow"])[..., None]
    stripes = ((p[..., 0] + p[..., 1] + 2.0 * p[..., 2]) * 6.0).sin() > 0
    col = torch.where(
        stripes[..., None], col * (1.0 - m["stripe"][..., None]), col
    )  # dark bands keep the hue
    fog = 1.0 - torch.exp(-torch.where(hit, t, 0.0) / s.fog_m[:, None])
    haze = 0.7 * s.sky_col.mean(-1, keepdim=True) + 0.3 * s.sky_col  # greyish: fog must not tint far objects
    col = col * (1 - fog[..., None]) + haze[:, None] * fog[..., None]
    up = rays[..., 2:].clamp(0, 1)  # sky: brighter towards the horizon
    sky = s.sky_col[:, None] * (1.0 - 0.5 * up) + 0.15 * (1 - up)
    col = torch.where(hit[..., None], col, sky) * s.exposure[:, None, None]
    img = col.reshape(n, h, w, 3).permute(0, 3, 1, 2)
    img = img + cfg.image_noise * torch.randn(img.shape, generator=gdev, device=img.device)
    return img.clamp(0, 1).contiguous(), (m["anom"] & hit).sum(1)


def _render_lidar(
    s: Scene, cfg: SyntheticConfig, gdev: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Points (N, P, 4), mask (N, P), class (N, P), anomaly flag (N, P).

    Rays: a random stratified subset of the rings x azimuth grid (M ~ oversample x P rays, cheaper than casting
    the whole scan); the hits are then randomly ordered and the first P kept, so the kept points are a uniform
    random subsample of the scan, never the first points in scan order.
    """
    n, dev = s.road_hw.shape[0], s.road_hw.device
    rings, az = cfg.lidar_rings, cfg.lidar_azimuth_steps
    grid = rings * az
    m_rays = min(grid, math.ceil(cfg.num_points * cfg.lidar_oversample))
    j = torch.arange(m_rays, device=dev)
    idx = (
        ((j + torch.rand(n, m_rays, generator=gdev, device=dev)) * (grid / m_rays)).long().clamp_max(grid - 1)
    )
    col, ring = idx // rings, idx % rings  # column-major scan: consecutive rays form narrow azimuth strips
    lo, hi = (math.radians(v) for v in cfg.lidar_elevation_deg)
    el = lo + (hi - lo) * ring.float() / max(rings - 1, 1)
    hf = math.radians(cfg.lidar_hfov_deg)
    azm = -hf / 2 + hf * (col.float() + 0.5) / az
    d = torch.stack([el.cos() * azm.cos(), el.cos() * azm.sin(), el.sin()], -1)  # (N, M, 3)
    t, k, p = cast(s, cfg.lidar_height, bundle(d), cfg.lidar_range)
    t, k, p = t[:, :m_rays], k[:, :m_rays], p[:, :m_rays]
    m = _surface(s, k, p)
    hit = torch.isfinite(t)
    cos = (m["normal"] * d).sum(-1).abs()
    inten = m["refl"] * (0.7 + 0.3 * cos) * s.gain[:, None]
    inten = inten + cfg.intensity_noise * torch.randn(inten.shape, generator=gdev, device=dev)
    tn = torch.where(hit, t, 0.0) + cfg.range_noise * torch.randn(t.shape, generator=gdev, device=dev)
    xyz = d * tn[..., None]
    xyz = torch.cat([xyz[..., :2], xyz[..., 2:] + cfg.lidar_height], -1)
    pts = torch.cat([xyz, inten.clamp(0, 1)[..., None]], -1)
    key = torch.rand(n, m_rays, generator=gdev, device=dev) + (~hit).float() * 2.0
    order = key.argsort(1)[:, : cfg.num_points]
    mask = torch.gather(hit, 1, order)
    pts = torch.gather(pts, 1, order[..., None].expand(-1, -1, 4)) * mask[..., None]
    cls = torch.gather(m["cls"], 1, order) * mask
    anom = torch.gather(m["anom"], 1, order) & mask
    if order.shape[1] < cfg.num_points:  # fewer rays than points requested: pad
        pad = cfg.num_points - order.shape[1]
        pts = torch.nn.functional.pad(pts, (0, 0, 0, pad))
        mask, cls, anom = (torch.nn.functional.pad(x, (0, pad)) for x in (mask, cls, anom))
    return pts.contiguous(), mask, cls, anom


# ----------------------------------------------------------------------------------------------------------


def _render(
    cam: Scene, lid: Scene, cfg: SyntheticConfig, device: torch.device, gdev: torch.Generator
) -> dict[str, torch.Tensor]:
    n = cam.road_hw.shape[0]
    h, w = cfg.image_size
    rays = _camera_rays(cfg, device)
    rays_per_frame = h * w + math.ceil(cfg.num_points * cfg.lidar_oversample)
    step = max(1, cfg.rays_per_chunk // rays_per_frame)
    parts: list[dict[str, torch.Tensor]] = []
    for i in range(0, n, step):
        sl = torch.arange(i, min(n, i + step))
        c, li = cam.index(sl).to(device), lid.index(sl).to(device)
        img, apix = _render_camera(c, cfg, rays, gdev)
        pts, mask, cls, anom = _render_lidar(li, cfg, gdev)
        parts.append({"image": img, "apix": apix, "points": pts, "mask": mask, "cls": cls, "anom": anom})
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}


def _visible(out: dict[str, torch.Tensor], cfg: SyntheticConfig) -> torch.Tensor:
    cam_ok = out["apix"] >= cfg.min_anomaly_pixels
    lid_ok = out["anom"].sum(1) >= cfg.min_anomaly_points
    if cfg.anomaly_modality == "camera":
        return cam_ok
    if cfg.anomaly_modality == "lidar":
        return lid_ok
    return cam_ok & lid_ok


def generate(
    n: int,
    *,
    seed: int,
    config: SyntheticConfig | None = None,
    device: str | torch.device = "cpu",
    scenario_offset: int = 0,
) -> Frames:
    """Generate n synthetic camera + lidar frames with per-point and per-frame anomaly labels.

    Args:
        n: number of frames.
        seed: random seed; the same (seed, scenario_offset, config, device) gives bit-identical tensors.
        config: scene and sensor knobs (default SyntheticConfig()).
        device: where the frames are cast and returned (scene parameters are drawn on the CPU).
        scenario_offset: first scenario id; frames i*fps .. (i+1)*fps-1 get scenario offset + i. It is also
            mixed into the seed, so a train set (seed a, offset 0) and a val set (seed b, offset 10_000)
            share neither scenes nor ids.

    Returns:
        Frames on `device`. frame_label is 1 where the anomaly is visible with at least min_anomaly_pixels
        pixels and min_anomaly_points points (only the modality carrying it counts for camera/lidar-only).
        Frames meant to be positive whose anomaly ended up hidden get a fresh anomaly, up to max_retries
        times, so the realised positive rate stays close to anomaly_fraction.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    cfg = config or SyntheticConfig()
    dev = torch.device(device)
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(scenario_offset)) % (1 << 63))
    gdev = torch.Generator(device=dev).manual_seed(int(torch.randint(0, 1 << 62, (1,), generator=g)))

    if n == 0:
        h, w = cfg.image_size
        p = cfg.num_points
        return Frames(
            image=torch.zeros(0, 3, h, w, device=dev),
            points=torch.zeros(0, p, 4, device=dev),
            point_mask=torch.zeros(0, p, dtype=torch.bool, device=dev),
            point_class=torch.zeros(0, p, dtype=torch.long, device=dev),
            point_label=torch.zeros(0, p, device=dev),
            frame_label=torch.zeros(0, device=dev),
            scenario=torch.zeros(0, dtype=torch.long, device=dev),
        )
    frame = torch.arange(n)
    scen_local = frame // cfg.frames_per_scenario
    # exactly round(n * fraction) frames get an anomaly (a random set), so small sets hit the rate too
    positive = torch.rand(n, generator=g).argsort().argsort() < round(n * cfg.anomaly_fraction)
    cam = draw_scene(g, scen_local, frame % cfg.frames_per_scenario, cfg)
    place_clutter(g, cam, positive, cfg)
    lid = cam.index(torch.arange(n))  # copy; differs only in anomaly slots
    rows = positive.nonzero()[:, 0]
    place_anomaly(g, cam, lid, rows, cfg)
    out = _render(cam, lid, cfg, dev, gdev)
    for attempt in range(cfg.max_retries):
        failed = rows[~_visible(out, cfg)[rows.to(dev)].cpu()]
        if failed.numel() == 0:
            break
        # later attempts place the anomaly in the nearer half of the range, where fewer things hide it
        place_anomaly(g, cam, lid, failed, cfg, 1.0 if attempt < 2 else 0.5)
        redo = _render(cam.index(failed), lid.index(failed), cfg, dev, gdev)
        fd = failed.to(dev)
        for key in out:
            out[key][fd] = redo[key]
    label = _visible(out, cfg)
    return Frames(
        image=out["image"],
        points=out["points"],
        point_mask=out["mask"],
        point_class=out["cls"],
        point_label=out["anom"].float(),
        frame_label=label.float(),
        scenario=(scen_local + scenario_offset).to(dev),
    )


__all__ = ["SyntheticConfig", "generate"]

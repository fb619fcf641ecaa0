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
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from muvo_model.data.frames import Frames

# AnoVox semantic ids (CARLA 0.9.14 Cityscapes-style tags, AnoVox Definitions.py; see docs/anovox.md)
ROAD, SIDEWALK, BUILDING, POLE, TRAFFIC_SIGN, TERRAIN, PEDESTRIAN, CAR, STATIC, ROAD_LINE = (
    1,
    2,
    3,
    6,
    8,
    10,
    12,
    14,
    20,
    24,
)
ANOMALY_HOME, ANOMALY_ANIMAL, ANOMALY_SPECIAL = 29, 30, 32

# Primitive slots per frame (fixed counts so that everything is one batched tensor op; unused slots sit underground).
_N_BUILDING, _N_CAR, _N_SIGN, _N_CLUTTER_BOX = 8, 4, 2, 2
_N_POLE, _N_PED = 4, 3
_N_CLUTTER_ELL, _N_CLUTTER_CONE = 2, 2
_KB = _N_BUILDING + _N_CAR + _N_SIGN + _N_CLUTTER_BOX + 1  # boxes; last = anomaly box (29)
_KC = _N_POLE + _N_PED  # vertical cylinders
_KE = _N_CLUTTER_ELL + 1  # ellipsoids; last = anomaly (30)
_KN = _N_CLUTTER_CONE + 1  # cones; last = anomaly (32)
_K = _KB + _KC + _KE + _KN
_ANOM_BOX, _ANOM_ELL, _ANOM_CONE = _KB - 1, _KB + _KC + _KE - 1, _K - 1  # column of each anomaly in the table
_TYPE = torch.tensor([0] * _KB + [1] * _KC + [2] * _KE + [3] * _KN)  # 0 box, 1 cylinder, 2 ellipsoid, 3 cone
_FAR = -1000.0  # z of unused primitives: below the ground, never hit
_INF = float("inf")


class SyntheticConfig(BaseModel):
    """Knobs of the synthetic scene generator (defaults: the embedded training set).

    Attributes:
        image_size: camera image (H, W).
        num_points: lidar points per frame; hits are randomly subsampled, missing ones padded with mask False.
        anomaly_fraction: requested fraction of frames with a visible anomaly (frame_label 1).
        contrast: strength of the anomaly cues in [0, 1]; 0 = drawn like normal clutter.
        anomaly_modality: which sensors carry the cue; the other one sees a normal-looking object there.
        min_anomaly_pixels: visible anomaly pixels needed for frame_label 1 (scale with the image area).
        min_anomaly_points: anomaly lidar points (after subsampling) needed for frame_label 1.
        frames_per_scenario: consecutive frames sharing a scenario id and its street layout (ego drives on).
        anomaly_distance: range (m ahead) where clutter and anomalies are placed in the corridor.
        anomaly_types: AnoVox ids drawn for anomalies: 29 odd box, 30 animal (ellipsoid), 32 special (cone).
        lidar_hfov_deg: horizontal field of view of the kept lidar scan (360 = full spin; default the camera's
            forward sector, as camera+lidar fusion crops usually do).
        rays_per_chunk: memory bound of one casting chunk (frames x rays); part of the seed-to-data mapping.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    image_size: tuple[int, int] = (64, 64)
    num_points: int = Field(1024, ge=1)
    anomaly_fraction: float = Field(0.5, ge=0.0, le=1.0)
    contrast: float = Field(1.0, ge=0.0, le=1.0)
    anomaly_modality: Literal["both", "camera", "lidar"] = "both"
    min_anomaly_pixels: int = Field(4, ge=1)
    min_anomaly_points: int = Field(3, ge=1)
    frames_per_scenario: int = Field(10, ge=1)
    ego_step_m: float = 2.5
    anomaly_distance: tuple[float, float] = (8.0, 40.0)
    anomaly_types: tuple[int, ...] = (ANOMALY_HOME, ANOMALY_ANIMAL, ANOMALY_SPECIAL)
    camera_height: float = 1.7
    camera_hfov_deg: float = Field(70.0, gt=1.0, lt=170.0)
    camera_pitch_deg: float = -3.0
    lidar_height: float = 1.8
    lidar_rings: int = Field(32, ge=1)
    lidar_azimuth_steps: int = Field(1024, ge=1)
    lidar_hfov_deg: float = Field(120.0, gt=0.0, le=360.0)
    lidar_elevation_deg: tuple[float, float] = (-15.0, 5.0)
    lidar_range: float = Field(60.0, gt=0.0)
    lidar_oversample: float = Field(1.6, ge=1.0)
    image_noise: float = Field(0.02, ge=0.0)
    range_noise: float = Field(0.02, ge=0.0)
    intensity_noise: float = Field(0.03, ge=0.0)
    max_retries: int = Field(8, ge=0)
    rays_per_chunk: int = Field(1 << 20, ge=1)

    @model_validator(mode="after")
    def _check(self) -> SyntheticConfig:
        if min(self.image_size) < 1:
            raise ValueError(f"image_size must be positive (H, W), got {self.image_size}")
        lo, hi = self.anomaly_distance
        if not 0.0 < lo < hi:
            raise ValueError(
                f"anomaly_distance must be (near, far) with 0 < near < far, got {self.anomaly_distance}"
            )
        bad = set(self.anomaly_types) - {ANOMALY_HOME, ANOMALY_ANIMAL, ANOMALY_SPECIAL}
        if bad or not self.anomaly_types:
            raise ValueError(
                f"anomaly_types must be a non-empty subset of (29, 30, 32), got {self.anomaly_types}"
            )
        if not self.lidar_elevation_deg[0] < self.lidar_elevation_deg[1]:
            raise ValueError(f"lidar_elevation_deg must be (low, high), got {self.lidar_elevation_deg}")
        return self


# ----------------------------------------------------------------------------------------------------------
# scene parameters (CPU, float32)


def _u(g: torch.Generator, lo: float, hi: float, *shape: int) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(*shape, generator=g)


def _muted(g: torch.Generator, n: int, k: int) -> torch.Tensor:
    """(n, k, 3) everyday colours: greys, browns, olives (low saturation)."""
    grey = _u(g, 0.2, 0.75, n, k, 1)
    tint = _u(g, -0.08, 0.08, n, k, 3)
    return (grey + tint).clamp(0.02, 0.98)


def _vivid(g: torch.Generator, n: int) -> torch.Tensor:
    """(n, 3) saturated colours of random hue (unusual in a street scene)."""
    h = _u(g, 0.0, 6.0, n, 1)
    rgb = torch.cat([(h - s).remainder(6.0) for s in (0.0, 2.0, 4.0)], dim=1)
    rgb = (2.0 - (rgb - 1.0).abs()).clamp(0.0, 1.0)  # hue wheel, ~max saturation
    return 0.05 + 0.9 * rgb


class _Scene:
    """All primitive parameters of N frames (CPU tensors); anomaly slots hold per-modality variants."""

    def __init__(self, n: int) -> None:
        # unused slots: centred under the sensor, 1 km underground (never hit, culled by the angular bounds)
        self.box_c = torch.tensor([0.0, 0.0, _FAR]).repeat(n, _KB, 1)
        self.box_h = torch.full((n, _KB, 3), 0.1)
        self.cyl_xy = torch.zeros(n, _KC, 2)
        self.cyl_r = torch.full((n, _KC), 0.1)
        self.cyl_z = torch.tensor([_FAR - 1, _FAR]).repeat(n, _KC, 1)
        self.ell_c = torch.tensor([0.0, 0.0, _FAR]).repeat(n, _KE, 1)
        self.ell_s = torch.full((n, _KE, 3), 0.1)
        self.cone_xy = torch.zeros(n, _KN, 2)
        self.cone_r = torch.full((n, _KN), 0.1)
        self.cone_zb = torch.full((n, _KN), _FAR)
        self.cone_h = torch.full((n, _KN), 0.1)
        self.cls = torch.zeros(n, _K, dtype=torch.long)
        self.albedo = torch.full((n, _K, 3), 0.5)
        self.refl = torch.full((n, _K), 0.3)
        self.stripe = torch.zeros(n, _K)
        self.glow = torch.zeros(
            n, _K
        )  # self-lit fraction of the albedo (fluorescent paint): shading-proof colour
        self.anom = torch.zeros(n, _K, dtype=torch.bool)
        # per-frame ground / light / sensor
        self.road_hw = torch.zeros(n)
        self.side_w = torch.zeros(n)
        self.ego_x = torch.zeros(n)
        self.road_col = torch.zeros(n, 3)
        self.side_col = torch.zeros(n, 3)
        self.terr_col = torch.zeros(n, 3)
        self.sun = torch.zeros(n, 3)
        self.sky_col = torch.zeros(n, 3)
        self.fog_m = torch.zeros(n)
        self.exposure = torch.zeros(n)
        self.gain = torch.zeros(n)

    def index(self, idx: torch.Tensor) -> _Scene:
        out = _Scene.__new__(_Scene)
        for k, v in vars(self).items():
            setattr(out, k, v[idx])
        return out

    def to(self, device: torch.device) -> _Scene:
        out = _Scene.__new__(_Scene)
        for k, v in vars(self).items():
            setattr(out, k, v.to(device))
        return out


def _draw_scene(
    g: torch.Generator, scen_local: torch.Tensor, step_in_scen: torch.Tensor, cfg: SyntheticConfig
) -> _Scene:
    """Street layout per scenario, movers and clutter per frame (no anomaly yet)."""
    n = scen_local.shape[0]
    ns = int(scen_local.max()) + 1 if n else 0
    s = _Scene(n)
    S = scen_local  # frame -> local scenario index

    # scenario level: road, colours, light, buildings and poles in world x (the ego drives along +x)
    road_hw, side_w = _u(g, 3.0, 5.5, ns)[S], _u(g, 1.5, 3.0, ns)[S]
    s.road_hw, s.side_w = road_hw, side_w
    s.ego_x = step_in_scen.float() * cfg.ego_step_m
    s.road_col = (_u(g, 0.22, 0.38, ns, 1) + _u(g, -0.02, 0.02, ns, 3))[S]
    s.side_col = (_u(g, 0.5, 0.7, ns, 1) + _u(g, -0.04, 0.04, ns, 3))[S]
    s.terr_col = torch.stack([_u(g, 0.25, 0.4, ns), _u(g, 0.35, 0.5, ns), _u(g, 0.15, 0.25, ns)], 1)[S]
    az, el = _u(g, -math.pi, math.pi, ns), _u(g, 0.35, 1.2, ns)
    s.sun = torch.stack([el.cos() * az.cos(), el.cos() * az.sin(), el.sin()], 1)[S]
    s.sky_col = torch.stack([_u(g, 0.45, 0.65, ns), _u(g, 0.6, 0.78, ns), _u(g, 0.8, 0.95, ns)], 1)[S]
    s.fog_m = _u(g, 60.0, 160.0, ns)[S]
    s.exposure = _u(g, 0.8, 1.2, ns)[S] * _u(g, 0.95, 1.05, n)
    s.gain = _u(g, 0.85, 1.15, ns)[S] * _u(g, 0.93, 1.07, n)  # sensor calibration x wetness

    # buildings: 4 per side, consecutive along x with gaps
    half = _N_BUILDING // 2
    length = _u(g, 10.0, 30.0, ns, 2, half)
    gap = _u(g, 2.0, 10.0, ns, 2, half)
    start = _u(g, -25.0, -5.0, ns, 2, 1) + torch.cumsum(length + gap, -1) - length - gap
    setback = _u(g, 0.5, 4.0, ns, 2, half)
    depth = _u(g, 8.0, 15.0, ns, 2, half)
    height = _u(g, 4.0, 20.0, ns, 2, half)
    side = torch.tensor([1.0, -1.0]).view(1, 2, 1)
    inner = (road_hw + side_w)[:, None, None] + setback[S]
    bx = (start[S] + length[S] / 2).reshape(n, _N_BUILDING) - s.ego_x[:, None]
    by = (side * (inner + depth[S] / 2)).reshape(n, _N_BUILDING)
    s.box_c[:, :_N_BUILDING] = torch.stack([bx, by, height[S].reshape(n, -1) / 2], -1)
    s.box_h[:, :_N_BUILDING] = torch.stack(
        [length[S].reshape(n, -1) / 2, depth[S].reshape(n, -1) / 2, height[S].reshape(n, -1) / 2], -1
    )
    k0 = 0
    s.cls[:, k0 : k0 + _N_BUILDING] = BUILDING
    s.albedo[:, k0 : k0 + _N_BUILDING] = _muted(g, ns, _N_BUILDING)[S]
    s.refl[:, k0 : k0 + _N_BUILDING] = _u(g, 0.2, 0.45, ns, _N_BUILDING)[S]

    # poles on the sidewalks (cylinders), signs on the first two (thin boxes facing the road)
    pside = torch.where(torch.rand(ns, _N_POLE, generator=g) < 0.5, 1.0, -1.0)
    px = _u(g, -5.0, 60.0, ns, _N_POLE)[S] - s.ego_x[:, None]
    py = pside[S] * (road_hw + 0.6 * side_w)[:, None]
    ph = _u(g, 4.0, 8.0, ns, _N_POLE)[S]
    c0 = _KB
    s.cyl_xy[:, :_N_POLE] = torch.stack([px, py], -1)
    s.cyl_r[:, :_N_POLE] = 0.12
    s.cyl_z[:, :_N_POLE] = torch.stack([torch.zeros_like(ph), ph], -1)
    s.cls[:, c0 : c0 + _N_POLE] = POLE
    s.albedo[:, c0 : c0 + _N_POLE] = _muted(g, ns, _N_POLE)[S]
    s.refl[:, c0 : c0 + _N_POLE] = 0.35
    has_sign = (torch.rand(ns, _N_SIGN, generator=g) < 0.7)[S]
    sz = _u(g, 2.3, 3.2, ns, _N_SIGN)[S]
    k0 = _N_BUILDING + _N_CAR
    sc = torch.stack([px[:, :_N_SIGN], py[:, :_N_SIGN] - pside[S][:, :_N_SIGN] * 0.2, sz], -1)
    sc[..., 2] = torch.where(has_sign, sc[..., 2], _FAR)
    s.box_c[:, k0 : k0 + _N_SIGN] = sc
    s.box_h[:, k0 : k0 + _N_SIGN] = torch.tensor([0.05, 0.35, 0.3])
    s.cls[:, k0 : k0 + _N_SIGN] = TRAFFIC_SIGN
    s.albedo[:, k0 : k0 + _N_SIGN] = torch.tensor([[0.1, 0.25, 0.7], [0.75, 0.15, 0.1]])[
        torch.randint(0, 2, (ns, _N_SIGN), generator=g)
    ][S]
    s.refl[:, k0 : k0 + _N_SIGN] = 0.95  # retroreflective: normal frames have bright lidar returns too

    # cars: per frame; in a driving lane (often inside the anomaly corridor) or parked at the kerb
    k0 = _N_BUILDING
    lane = torch.rand(n, _N_CAR, generator=g) < 0.6
    cside = torch.where(torch.rand(n, _N_CAR, generator=g) < 0.5, 1.0, -1.0)
    cy = cside * torch.where(lane, 0.5, 0.85) * road_hw[:, None] + _u(g, -0.3, 0.3, n, _N_CAR)
    cx = _u(g, -10.0, 60.0, n, _N_CAR)
    dims = torch.stack(
        [_u(g, 3.8, 5.0, n, _N_CAR), _u(g, 1.7, 2.0, n, _N_CAR), _u(g, 1.4, 1.9, n, _N_CAR)], -1
    )
    active = torch.rand(n, _N_CAR, generator=g) < 0.75
    s.box_c[:, k0 : k0 + _N_CAR] = torch.stack([cx, cy, torch.where(active, dims[..., 2] / 2, _FAR)], -1)
    s.box_h[:, k0 : k0 + _N_CAR] = dims / 2
    s.cls[:, k0 : k0 + _N_CAR] = CAR
    s.albedo[:, k0 : k0 + _N_CAR] = _muted(g, n, _N_CAR)
    s.refl[:, k0 : k0 + _N_CAR] = _u(g, 0.25, 0.6, n, _N_CAR)

    # pedestrians: on a sidewalk or crossing the corridor
    c0 = _KB + _N_POLE
    on_road = torch.rand(n, _N_PED, generator=g) < 0.4
    pside = torch.where(torch.rand(n, _N_PED, generator=g) < 0.5, 1.0, -1.0)
    ped_y = torch.where(
        on_road,
        _u(g, -1.0, 1.0, n, _N_PED) * (road_hw[:, None] - 0.5),
        pside * (road_hw + 0.5 * side_w)[:, None],
    )
    ped_x = torch.where(on_road, _u(g, *cfg.anomaly_distance, n, _N_PED), _u(g, 0.0, 50.0, n, _N_PED))
    ph = _u(g, 1.5, 1.9, n, _N_PED)
    active = torch.rand(n, _N_PED, generator=g) < 0.7
    s.cyl_xy[:, _N_POLE:] = torch.stack([ped_x, ped_y], -1)
    s.cyl_r[:, _N_POLE:] = _u(g, 0.2, 0.3, n, _N_PED)
    s.cyl_z[:, _N_POLE:] = torch.stack(
        [torch.where(active, 0.0, _FAR - 1), torch.where(active, ph, _FAR)], -1
    )
    s.cls[:, c0 : c0 + _N_PED] = PEDESTRIAN
    s.albedo[:, c0 : c0 + _N_PED] = _muted(g, n, _N_PED)
    s.refl[:, c0 : c0 + _N_PED] = _u(g, 0.2, 0.45, n, _N_PED)

    # clutter: 1-3 normal objects (boxes, ellipsoids, cones) in the corridor; geometry in _place_clutter
    s.cls[:, _N_BUILDING + _N_CAR + _N_SIGN : _KB] = STATIC
    s.cls[:, _KB + _KC :] = STATIC
    return s


def _clutter_slots() -> list[int]:
    k_box = list(range(_N_BUILDING + _N_CAR + _N_SIGN, _KB - 1))
    k_ell = list(range(_KB + _KC, _KB + _KC + _N_CLUTTER_ELL))
    k_cone = list(range(_KB + _KC + _KE, _K - 1))
    return k_box + k_ell + k_cone


def _shape_geometry(
    g: torch.Generator,
    n: int,
    kind: torch.Tensor,
    road_hw: torch.Tensor,
    cfg: SyntheticConfig,
    reach: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Geometry of n corridor objects of the given kind (0 box, 1 ellipsoid, 2 cone); one distribution for
    normal clutter and anomalies (the anomaly cue is added on top). reach < 1 keeps them nearer."""
    near, far = cfg.anomaly_distance
    x = _u(g, near, near + reach * (far - near), n)
    y = _u(g, -1.0, 1.0, n) * (road_hw - 0.6)
    a, b, c = _u(g, 0.25, 0.8, n), _u(g, 0.25, 0.8, n), _u(g, 0.25, 0.8, n)  # half extents / semi axes
    return {"x": x, "y": y, "a": a, "b": b, "c": c, "kind": kind}


def _set_object(
    s: _Scene, rows: torch.Tensor, col: torch.Tensor, geo: dict[str, torch.Tensor], hscale: torch.Tensor
) -> None:
    """Write one object per row into its slot column (boxes, ellipsoids, cones by slot type)."""
    typ = _TYPE[col]
    x, y, a, b, c = geo["x"], geo["y"], geo["a"], geo["b"], geo["c"] * hscale
    for t in (0, 2, 3):
        m = typ == t
        if not bool(m.any()):
            continue
        r, k = rows[m], col[m]
        if t == 0:
            s.box_c[r, k] = torch.stack([x[m], y[m], c[m]], -1)
            s.box_h[r, k] = torch.stack([a[m], b[m], c[m]], -1)
        elif t == 2:
            s.ell_c[r, k - _KB - _KC] = torch.stack([x[m], y[m], c[m]], -1)
            s.ell_s[r, k - _KB - _KC] = torch.stack([a[m], b[m], c[m]], -1)
        else:
            kk = k - _KB - _KC - _KE
            s.cone_xy[r, kk] = torch.stack([x[m], y[m]], -1)
            s.cone_r[r, kk] = 0.5 * (a[m] + b[m])
            s.cone_zb[r, kk] = 0.0
            s.cone_h[r, kk] = 2.5 * c[m]


def _place_clutter(g: torch.Generator, s: _Scene, positive: torch.Tensor, cfg: SyntheticConfig) -> None:
    """1-3 corridor objects per frame; in positive frames one fewer normal object (the anomaly takes its place)."""
    n = positive.shape[0]
    slots = torch.tensor(_clutter_slots())
    count = torch.randint(1, 4, (n,), generator=g) - positive.long()
    order = torch.rand(n, len(slots), generator=g).argsort(1)
    use = order < count[:, None]  # random subset of `count` slots per frame
    rows, j = use.nonzero(as_tuple=True)
    col = slots[j]
    geo = _shape_geometry(g, rows.shape[0], _TYPE[col], s.road_hw[rows], cfg)
    _set_object(s, rows, col, geo, torch.ones(rows.shape[0]))
    s.albedo[rows, col] = _muted(g, rows.shape[0], 1)[:, 0]
    s.refl[rows, col] = _u(g, 0.15, 0.5, rows.shape[0])


def _place_anomaly(
    g: torch.Generator, cam: _Scene, lid: _Scene, rows: torch.Tensor, cfg: SyntheticConfig, reach: float = 1.0
) -> None:
    """Put one anomaly in each frame of `rows`, with per-modality cues (cam / lid scenes differ only here)."""
    m = rows.shape[0]
    for s in (cam, lid):  # clear earlier anomalies of these frames (retries)
        s.box_c[rows, _ANOM_BOX, 2] = _FAR
        s.ell_c[rows, _ANOM_ELL - _KB - _KC, 2] = _FAR
        s.cone_zb[rows, -1] = _FAR
        s.anom[rows] = False
    if m == 0:
        return
    types = torch.tensor(cfg.anomaly_types)[torch.randint(0, len(cfg.anomaly_types), (m,), generator=g)]
    col = torch.where(
        types == ANOMALY_HOME, _ANOM_BOX, torch.where(types == ANOMALY_ANIMAL, _ANOM_ELL, _ANOM_CONE)
    )
    geo = _shape_geometry(g, m, _TYPE[col], cam.road_hw[rows], cfg, reach)
    k = cfg.contrast
    base_col = _muted(g, m, 1)[:, 0]
    vivid = _vivid(g, m)
    base_refl, bright = _u(g, 0.15, 0.5, m), _u(g, 0.85, 1.0, m)
    tall = torch.full((m,), 1.0 + 0.6 * k)
    cam_cue = cfg.anomaly_modality in ("both", "camera")
    lid_cue = cfg.anomaly_modality in ("both", "lidar")
    for s, cue in ((cam, cam_cue), (lid, lid_cue)):
        # the lidar shape cue (taller) shows in the camera too when both carry the anomaly
        hscale = tall if lid_cue and (s is lid or cfg.anomaly_modality == "both") else torch.ones(m)
        _set_object(s, rows, col, geo, hscale)
        s.albedo[rows, col] = base_col + k * (vivid - base_col) if (cue and s is cam) else base_col
        s.stripe[rows, col] = 0.35 * k if (cue and s is cam) else 0.0
        s.glow[rows, col] = 0.6 * k if (cue and s is cam) else 0.0
        s.refl[rows, col] = base_refl + k * (bright - base_refl) if (cue and s is lid) else base_refl
        s.cls[rows, col] = types if cue else STATIC
        s.anom[rows, col] = cue


# ----------------------------------------------------------------------------------------------------------
# ray casting: o = (0, 0, h) for every frame, d (B, R, 3) with B in {1, N}; returns t (N, R, K_type), inf = miss


def _safe(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)


def _hit_boxes(h: float, d: torch.Tensor, c: torch.Tensor, hs: torch.Tensor) -> torch.Tensor:
    o = (0.0, 0.0, h)
    tnear = tfar = None
    for a in range(3):
        inv = 1.0 / _safe(d[..., a : a + 1])  # (B, R, 1)
        lo = (c[:, None, :, a] - hs[:, None, :, a] - o[a]) * inv  # (N, R, K)
        hi = (c[:, None, :, a] + hs[:, None, :, a] - o[a]) * inv
        t0, t1 = torch.minimum(lo, hi), torch.maximum(lo, hi)
        tnear = t0 if tnear is None else torch.maximum(tnear, t0)
        tfar = t1 if tfar is None else torch.minimum(tfar, t1)
    assert tnear is not None and tfar is not None
    return torch.where((tnear <= tfar) & (tnear > 1e-4), tnear, _INF)


def _hit_cylinders(
    h: float, d: torch.Tensor, xy: torch.Tensor, r: torch.Tensor, z: torch.Tensor
) -> torch.Tensor:
    dx, dy, dz = d[..., 0:1], d[..., 1:2], d[..., 2:3]
    cx, cy = xy[:, None, :, 0], xy[:, None, :, 1]
    a = (dx * dx + dy * dy).clamp_min(1e-12)
    b = -2.0 * (cx * dx + cy * dy)
    cc = cx * cx + cy * cy - r[:, None] ** 2
    disc = b * b - 4.0 * a * cc
    t = (-b - disc.clamp_min(0).sqrt()) / (2.0 * a)
    zh = h + t * dz
    z0, z1 = z[:, None, :, 0], z[:, None, :, 1]
    t = torch.where((disc >= 0) & (t > 1e-4) & (zh >= z0) & (zh <= z1), t, _INF)
    tc = (z1 - h) / _safe(dz)  # top cap, seen from above
    px, py = tc * dx - cx, tc * dy - cy
    tc = torch.where((tc > 1e-4) & (px * px + py * py <= r[:, None] ** 2), tc, _INF)
    return torch.minimum(t, tc)


def _hit_ellipsoids(h: float, d: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    a = b = cc = None
    o = (0.0, 0.0, h)
    for i in range(3):
        dd = d[..., i : i + 1] / s[:, None, :, i]  # (N, R, K)
        oo = (o[i] - c[:, None, :, i]) / s[:, None, :, i]  # (N, 1, K)
        a = dd * dd if a is None else a + dd * dd
        b = oo * dd if b is None else b + oo * dd
        cc = oo * oo if cc is None else cc + oo * oo
    assert a is not None and b is not None and cc is not None
    disc = b * b - a * (cc - 1.0)
    t = (-b - disc.clamp_min(0).sqrt()) / a
    return torch.where((disc >= 0) & (t > 1e-4), t, _INF)


def _hit_cones(
    h: float, d: torch.Tensor, xy: torch.Tensor, r: torch.Tensor, zb: torch.Tensor, hh: torch.Tensor
) -> torch.Tensor:
    # x^2 + y^2 = k^2 (zt - z)^2 with k = r / H, 0 <= z - zb <= H (apex up)
    dx, dy, dz = d[..., 0:1], d[..., 1:2], d[..., 2:3]
    ox, oy = -xy[:, None, :, 0], -xy[:, None, :, 1]
    k2 = (r / hh)[:, None] ** 2
    w0 = (zb + hh)[:, None] - h  # zt - oz
    a = dx * dx + dy * dy - k2 * dz * dz
    b = 2.0 * (ox * dx + oy * dy + k2 * w0 * dz)
    c = ox * ox + oy * oy - k2 * w0 * w0
    disc = b * b - 4.0 * a * c
    sq = disc.clamp_min(0).sqrt()
    a = torch.where(a.abs() < 1e-9, torch.full_like(a, 1e-9), a)
    best = None
    for sgn in (-1.0, 1.0):
        t = (-b + sgn * sq) / (2.0 * a)
        zrel = h + t * dz - zb[:, None]
        ok = (disc >= 0) & (t > 1e-4) & (zrel >= 0) & (zrel <= hh[:, None])
        t = torch.where(ok, t, _INF)
        best = t if best is None else torch.minimum(best, t)
    assert best is not None
    return best


_BUNDLE = 64  # rays per bundle: the unit of culling (an 8x8 pixel tile, or a narrow lidar azimuth strip)


def _prim_bounds(s: _Scene, h: float) -> torch.Tensor:
    """Conservative (azimuth lo, hi, elevation lo, hi) of every primitive seen from (0, 0, h): (N, K, 4)."""
    lo = torch.cat(
        [
            s.box_c - s.box_h,
            torch.cat([s.cyl_xy - s.cyl_r[..., None], s.cyl_z[..., :1]], -1),
            s.ell_c - s.ell_s,
            torch.cat([s.cone_xy - s.cone_r[..., None], s.cone_zb[..., None]], -1),
        ],
        1,
    )
    hi = torch.cat(
        [
            s.box_c + s.box_h,
            torch.cat([s.cyl_xy + s.cyl_r[..., None], s.cyl_z[..., 1:]], -1),
            s.ell_c + s.ell_s,
            torch.cat([s.cone_xy + s.cone_r[..., None], (s.cone_zb + s.cone_h)[..., None]], -1),
        ],
        1,
    )
    x0, y0, z0 = lo.unbind(-1)
    x1, y1, z1 = hi.unbind(-1)
    z0, z1 = z0 - h, z1 - h
    dmin = torch.hypot((-x1).clamp_min(0) + x0.clamp_min(0), (-y1).clamp_min(0) + y0.clamp_min(0))
    dmax = torch.maximum(torch.hypot(x0, y0), torch.hypot(x1, y1))
    dmax = torch.maximum(dmax, torch.maximum(torch.hypot(x0, y1), torch.hypot(x1, y0)))
    el_hi = torch.atan2(z1, torch.where(z1 > 0, dmin, dmax))
    el_lo = torch.atan2(z0, torch.where(z0 > 0, dmax, dmin))
    az = torch.stack([torch.atan2(y0, x0), torch.atan2(y0, x1), torch.atan2(y1, x0), torch.atan2(y1, x1)], -1)
    front = x0 > 0.05  # the box lies ahead: its azimuth range is spanned by its corners (no wrap-around)
    az_lo = torch.where(front, az.amin(-1), -math.pi)
    az_hi = torch.where(front, az.amax(-1), math.pi)
    eps = 1e-3
    return torch.stack([az_lo - eps, az_hi + eps, el_lo - eps, el_hi + eps], -1)


def _bundle_bounds(d: torch.Tensor) -> torch.Tensor:
    """(azimuth lo, hi, elevation lo, hi) of each ray bundle: d (B, T, S, 3) -> (B, T, 4)."""
    az = torch.atan2(d[..., 1], d[..., 0])
    el = torch.asin(d[..., 2].clamp(-1, 1))
    return torch.stack([az.amin(-1), az.amax(-1), el.amin(-1), el.amax(-1)], -1)


def _cast(
    s: _Scene, h: float, d: torch.Tensor, max_t: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest hit of each ray of d (B, T, S, 3), B in {1, N} (unit directions, bundles of nearby rays).

    Returns t (N, T*S) (inf = no hit within max_t), primitive column (N, T*S) (-1 = ground), hit points
    (N, T*S, 3). Only (frame, bundle, primitive) triples whose angular bounds overlap are intersected: a
    street scene has a depth complexity of a few primitives per bundle, ~10x less work than all 30.
    """
    n, (b, nt, ns, _) = s.road_hw.shape[0], d.shape
    pb, bb = _prim_bounds(s, h), _bundle_bounds(d)  # (N, K, 4), (B, T, 4)
    ov = (
        (pb[:, None, :, 0] <= bb[:, :, None, 1])
        & (pb[:, None, :, 1] >= bb[:, :, None, 0])
        & (pb[:, None, :, 2] <= bb[:, :, None, 3])
        & (pb[:, None, :, 3] >= bb[:, :, None, 2])
    )  # (N, T, K)
    fi, ti, ki = ov.nonzero(as_tuple=True)  # row-major: triples of one (frame, bundle) are contiguous
    tall = torch.empty(fi.shape[0], ns, device=d.device)
    typ = _TYPE.to(d.device)[ki]
    for t_id in range(4):
        m = typ == t_id
        f, tb, k = fi[m], ti[m], ki[m]
        if f.numel() == 0:
            continue
        dd = d[f if b > 1 else torch.zeros_like(f), tb]  # (L, S, 3)
        if t_id == 0:
            t = _hit_boxes(h, dd, s.box_c[f, k][:, None], s.box_h[f, k][:, None])
        elif t_id == 1:
            kl = k - _KB
            t = _hit_cylinders(
                h, dd, s.cyl_xy[f, kl][:, None], s.cyl_r[f, kl][:, None], s.cyl_z[f, kl][:, None]
            )
        elif t_id == 2:
            kl = k - _KB - _KC
            t = _hit_ellipsoids(h, dd, s.ell_c[f, kl][:, None], s.ell_s[f, kl][:, None])
        else:
            kl = k - _KB - _KC - _KE
            t = _hit_cones(
                h,
                dd,
                s.cone_xy[f, kl][:, None],
                s.cone_r[f, kl][:, None],
                s.cone_zb[f, kl][:, None],
                s.cone_h[f, kl][:, None],
            )
        tall[m] = t[..., 0]  # (L_type, S)
    # nearest hit per ray: lay each (frame, bundle)'s candidates out densely (n*nt, Kmax, S) and take the min
    # (cheaper and thread-friendlier than scatter_reduce; ties go to the lower column, deterministically)
    row = fi * nt + ti
    cnt = torch.bincount(row, minlength=n * nt)
    kmax = max(int(cnt.max()), 1) if row.numel() else 1
    slot = torch.arange(row.shape[0], device=d.device) - (torch.cumsum(cnt, 0) - cnt)[row]
    dense = torch.full((n * nt, kmax, ns), _INF, device=d.device)
    dense[row, slot] = tall
    kd = torch.full((n * nt, kmax), -1, dtype=torch.long, device=d.device)
    kd[row, slot] = ki
    tmin, arg = dense.min(1)
    k = torch.where(torch.isfinite(tmin), torch.gather(kd, 1, arg), -1)
    tmin, k = tmin.view(n, nt * ns), k.view(n, nt * ns)
    df = d.reshape(b, nt * ns, 3)
    dz = df[..., 2].expand_as(tmin)
    tg = torch.where(dz < -1e-6, -h / _safe(dz), torch.full_like(tmin, _INF))
    ground = tg < tmin
    tmin = torch.where(ground, tg, tmin)
    k = torch.where(ground, -1, k)
    tmin = torch.where(tmin <= max_t, tmin, _INF)
    p = df * tmin[..., None]
    p = torch.cat([p[..., :2], p[..., 2:] + h], -1)
    return tmin, k, p


def _surface(s: _Scene, k: torch.Tensor, p: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-ray material and normal of the hit (N, R, ...) from the primitive table; k = -1 is the ground."""
    n_, r_ = k.shape
    kk = k.clamp_min(0)

    def g(x: torch.Tensor) -> torch.Tensor:  # gather a (N, K, ...) column by k
        idx = kk.view(n_, r_, *([1] * (x.dim() - 2))).expand(n_, r_, *x.shape[2:])
        return torch.gather(x, 1, idx)

    typ = _TYPE.to(k.device)[kk]
    ground = k < 0
    # normals: box, cylinder, ellipsoid, cone (computed for all, selected by type)
    bc = torch.gather(s.box_c, 1, kk.clamp_max(_KB - 1)[..., None].expand(n_, r_, 3))
    bh = torch.gather(s.box_h, 1, kk.clamp_max(_KB - 1)[..., None].expand(n_, r_, 3))
    q = (p - bc) / bh
    ax = q.abs().argmax(-1, keepdim=True)
    n_box = torch.zeros_like(p).scatter_(-1, ax, torch.gather(q, -1, ax).sign())
    kc = (kk - _KB).clamp(0, _KC - 1)[..., None]
    cxy = torch.gather(s.cyl_xy, 1, kc.expand(n_, r_, 2))
    ctop = torch.gather(s.cyl_z[..., 1], 1, kc[..., 0])
    n_cyl = torch.cat([p[..., :2] - cxy, torch.zeros_like(p[..., :1])], -1)
    n_cyl = torch.where(
        (p[..., 2:] > ctop[..., None] - 1e-3), torch.tensor([0.0, 0.0, 1.0], device=p.device), n_cyl
    )
    ke = (kk - _KB - _KC).clamp(0, _KE - 1)[..., None]
    ec = torch.gather(s.ell_c, 1, ke.expand(n_, r_, 3))
    es = torch.gather(s.ell_s, 1, ke.expand(n_, r_, 3))
    n_ell = (p - ec) / es**2
    kn = (kk - _KB - _KC - _KE).clamp(0, _KN - 1)
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


def _bundle(d: torch.Tensor) -> torch.Tensor:
    """(B, R, 3) -> (B, T, S, 3) bundles of S consecutive rays; the last bundle is padded by repeating a ray."""
    b, r, _ = d.shape
    t = -(-r // _BUNDLE)
    d = torch.cat([d, d[:, -1:].expand(b, t * _BUNDLE - r, 3)], 1)
    return d.view(b, t, _BUNDLE, 3)


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
    return d, _bundle(d[:, order]), pos


def _render_camera(
    s: _Scene,
    cfg: SyntheticConfig,
    cam_rays: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    gdev: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image (N, 3, H, W) in [0, 1] and the count of visible anomaly pixels (N,)."""
    n = s.road_hw.shape[0]
    h, w = cfg.image_size
    rays, bundles, pos = cam_rays
    t, k, p = _cast(s, cfg.camera_height, bundles, 1e4)
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
    s: _Scene, cfg: SyntheticConfig, gdev: torch.Generator
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
    t, k, p = _cast(s, cfg.lidar_height, _bundle(d), cfg.lidar_range)
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
    cam: _Scene, lid: _Scene, cfg: SyntheticConfig, device: torch.device, gdev: torch.Generator
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
    cam = _draw_scene(g, scen_local, frame % cfg.frames_per_scenario, cfg)
    _place_clutter(g, cam, positive, cfg)
    lid = cam.index(torch.arange(n))  # copy; differs only in anomaly slots
    rows = positive.nonzero()[:, 0]
    _place_anomaly(g, cam, lid, rows, cfg)
    out = _render(cam, lid, cfg, dev, gdev)
    for attempt in range(cfg.max_retries):
        failed = rows[~_visible(out, cfg)[rows.to(dev)].cpu()]
        if failed.numel() == 0:
            break
        # later attempts place the anomaly in the nearer half of the range, where fewer things hide it
        _place_anomaly(g, cam, lid, failed, cfg, 1.0 if attempt < 2 else 0.5)
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


__all__ = [
    "ANOMALY_ANIMAL",
    "ANOMALY_HOME",
    "ANOMALY_SPECIAL",
    "BUILDING",
    "CAR",
    "PEDESTRIAN",
    "POLE",
    "ROAD",
    "ROAD_LINE",
    "SIDEWALK",
    "STATIC",
    "TERRAIN",
    "TRAFFIC_SIGN",
    "SyntheticConfig",
    "generate",
]

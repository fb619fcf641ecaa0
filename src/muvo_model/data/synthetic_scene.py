"""Synthetic street scenes: the primitive table of N frames and the random draw of its layout and objects."""

from __future__ import annotations

import math

import torch

from muvo_model.data.synthetic_config import (
    ANOMALY_ANIMAL,
    ANOMALY_HOME,
    BUILDING,
    CAR,
    PEDESTRIAN,
    POLE,
    STATIC,
    TRAFFIC_SIGN,
    SyntheticConfig,
)

# Primitive slots per frame (fixed counts so that everything is one batched tensor op; unused slots sit underground).
_N_BUILDING, _N_CAR, _N_SIGN, _N_CLUTTER_BOX = 8, 4, 2, 2
_N_POLE, _N_PED = 4, 3
_N_CLUTTER_ELL, _N_CLUTTER_CONE = 2, 2
KB = _N_BUILDING + _N_CAR + _N_SIGN + _N_CLUTTER_BOX + 1  # boxes; last = anomaly box (29)
KC = _N_POLE + _N_PED  # vertical cylinders
KE = _N_CLUTTER_ELL + 1  # ellipsoids; last = anomaly (30)
KN = _N_CLUTTER_CONE + 1  # cones; last = anomaly (32)
_K = KB + KC + KE + KN
_ANOM_BOX, _ANOM_ELL, _ANOM_CONE = KB - 1, KB + KC + KE - 1, _K - 1  # column of each anomaly in the table
TYPE = torch.tensor([0] * KB + [1] * KC + [2] * KE + [3] * KN)  # 0 box, 1 cylinder, 2 ellipsoid, 3 cone
_FAR = -1000.0  # z of unused primitives: below the ground, never hit


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


class Scene:
    """All primitive parameters of N frames (CPU tensors); anomaly slots hold per-modality variants."""

    def __init__(self, n: int) -> None:
        # unused slots: centred under the sensor, 1 km underground (never hit, culled by the angular bounds)
        self.box_c = torch.tensor([0.0, 0.0, _FAR]).repeat(n, KB, 1)
        self.box_h = torch.full((n, KB, 3), 0.1)
        self.cyl_xy = torch.zeros(n, KC, 2)
        self.cyl_r = torch.full((n, KC), 0.1)
        self.cyl_z = torch.tensor([_FAR - 1, _FAR]).repeat(n, KC, 1)
        self.ell_c = torch.tensor([0.0, 0.0, _FAR]).repeat(n, KE, 1)
        self.ell_s = torch.full((n, KE, 3), 0.1)
        self.cone_xy = torch.zeros(n, KN, 2)
        self.cone_r = torch.full((n, KN), 0.1)
        self.cone_zb = torch.full((n, KN), _FAR)
        self.cone_h = torch.full((n, KN), 0.1)
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

    def index(self, idx: torch.Tensor) -> Scene:
        out = Scene.__new__(Scene)
        for k, v in vars(self).items():
            setattr(out, k, v[idx])
        return out

    def to(self, device: torch.device) -> Scene:
        out = Scene.__new__(Scene)
        for k, v in vars(self).items():
            setattr(out, k, v.to(device))
        return out


def draw_scene(
    g: torch.Generator, scen_local: torch.Tensor, step_in_scen: torch.Tensor, cfg: SyntheticConfig
) -> Scene:
    """Street layout per scenario, movers and clutter per frame (no anomaly yet).

    The draws happen in this order (the order is part of the seed-to-data mapping).
    """
    n = scen_local.shape[0]
    ns = int(scen_local.max()) + 1 if n else 0
    s = Scene(n)
    S = scen_local  # frame -> local scenario index

    # scenario level: road, colours, light, buildings and poles in world x (the ego drives along +x)
    _draw_street(g, s, S, ns, step_in_scen, cfg)
    _draw_buildings(g, s, S, ns)
    _draw_poles_and_signs(g, s, S, ns)
    # frame level: cars and pedestrians move between frames
    _draw_cars(g, s, n)
    _draw_pedestrians(g, s, n, cfg)
    # clutter: 1-3 normal objects (boxes, ellipsoids, cones) in the corridor; geometry in place_clutter
    s.cls[:, _N_BUILDING + _N_CAR + _N_SIGN : KB] = STATIC
    s.cls[:, KB + KC :] = STATIC
    return s


def _draw_street(
    g: torch.Generator, s: Scene, S: torch.Tensor, ns: int, step_in_scen: torch.Tensor, cfg: SyntheticConfig
) -> None:
    """Road and sidewalk widths, ground colours, sun, sky, fog, exposure and lidar gain."""
    n = S.shape[0]
    s.road_hw, s.side_w = _u(g, 3.0, 5.5, ns)[S], _u(g, 1.5, 3.0, ns)[S]
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


def _draw_buildings(g: torch.Generator, s: Scene, S: torch.Tensor, ns: int) -> None:
    """4 buildings per side, consecutive along x with gaps (scenario level)."""
    n, road_hw, side_w = S.shape[0], s.road_hw, s.side_w
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


def _draw_poles_and_signs(g: torch.Generator, s: Scene, S: torch.Tensor, ns: int) -> None:
    """Poles on the sidewalks (cylinders), signs on the first two (thin boxes facing the road)."""
    road_hw, side_w = s.road_hw, s.side_w
    pside = torch.where(torch.rand(ns, _N_POLE, generator=g) < 0.5, 1.0, -1.0)
    px = _u(g, -5.0, 60.0, ns, _N_POLE)[S] - s.ego_x[:, None]
    py = pside[S] * (road_hw + 0.6 * side_w)[:, None]
    ph = _u(g, 4.0, 8.0, ns, _N_POLE)[S]
    c0 = KB
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


def _draw_cars(g: torch.Generator, s: Scene, n: int) -> None:
    """Cars per frame: in a driving lane (often inside the anomaly corridor) or parked at the kerb."""
    road_hw = s.road_hw
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


def _draw_pedestrians(g: torch.Generator, s: Scene, n: int, cfg: SyntheticConfig) -> None:
    """Pedestrians per frame: on a sidewalk or crossing the corridor."""
    road_hw, side_w = s.road_hw, s.side_w
    c0 = KB + _N_POLE
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


def _clutter_slots() -> list[int]:
    k_box = list(range(_N_BUILDING + _N_CAR + _N_SIGN, KB - 1))
    k_ell = list(range(KB + KC, KB + KC + _N_CLUTTER_ELL))
    k_cone = list(range(KB + KC + KE, _K - 1))
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
    s: Scene, rows: torch.Tensor, col: torch.Tensor, geo: dict[str, torch.Tensor], hscale: torch.Tensor
) -> None:
    """Write one object per row into its slot column (boxes, ellipsoids, cones by slot type)."""
    typ = TYPE[col]
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
            s.ell_c[r, k - KB - KC] = torch.stack([x[m], y[m], c[m]], -1)
            s.ell_s[r, k - KB - KC] = torch.stack([a[m], b[m], c[m]], -1)
        else:
            kk = k - KB - KC - KE
            s.cone_xy[r, kk] = torch.stack([x[m], y[m]], -1)
            s.cone_r[r, kk] = 0.5 * (a[m] + b[m])
            s.cone_zb[r, kk] = 0.0
            s.cone_h[r, kk] = 2.5 * c[m]


def place_clutter(g: torch.Generator, s: Scene, positive: torch.Tensor, cfg: SyntheticConfig) -> None:
    """1-3 corridor objects per frame; in positive frames one fewer normal object (the anomaly takes its place)."""
    n = positive.shape[0]
    slots = torch.tensor(_clutter_slots())
    count = torch.randint(1, 4, (n,), generator=g) - positive.long()
    order = torch.rand(n, len(slots), generator=g).argsort(1)
    use = order < count[:, None]  # random subset of `count` slots per frame
    rows, j = use.nonzero(as_tuple=True)
    col = slots[j]
    geo = _shape_geometry(g, rows.shape[0], TYPE[col], s.road_hw[rows], cfg)
    _set_object(s, rows, col, geo, torch.ones(rows.shape[0]))
    s.albedo[rows, col] = _muted(g, rows.shape[0], 1)[:, 0]
    s.refl[rows, col] = _u(g, 0.15, 0.5, rows.shape[0])


def place_anomaly(
    g: torch.Generator, cam: Scene, lid: Scene, rows: torch.Tensor, cfg: SyntheticConfig, reach: float = 1.0
) -> None:
    """Put one anomaly in each frame of `rows`, with per-modality cues (cam / lid scenes differ only here)."""
    m = rows.shape[0]
    for s in (cam, lid):  # clear earlier anomalies of these frames (retries)
        s.box_c[rows, _ANOM_BOX, 2] = _FAR
        s.ell_c[rows, _ANOM_ELL - KB - KC, 2] = _FAR
        s.cone_zb[rows, -1] = _FAR
        s.anom[rows] = False
    if m == 0:
        return
    types = torch.tensor(cfg.anomaly_types)[torch.randint(0, len(cfg.anomaly_types), (m,), generator=g)]
    col = torch.where(
        types == ANOMALY_HOME, _ANOM_BOX, torch.where(types == ANOMALY_ANIMAL, _ANOM_ELL, _ANOM_CONE)
    )
    geo = _shape_geometry(g, m, TYPE[col], cam.road_hw[rows], cfg, reach)
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

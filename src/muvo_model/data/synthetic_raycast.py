"""Ray casting against the synthetic scene's primitives: hit tests, angular culling by ray bundle."""

from __future__ import annotations

import math

import torch

from muvo_model.data.synthetic_scene import KB, KC, KE, TYPE, Scene

_INF = float("inf")


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


def _prim_bounds(s: Scene, h: float) -> torch.Tensor:
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


def cast(
    s: Scene, h: float, d: torch.Tensor, max_t: float
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
    typ = TYPE.to(d.device)[ki]
    for t_id in range(4):
        m = typ == t_id
        f, tb, k = fi[m], ti[m], ki[m]
        if f.numel() == 0:
            continue
        dd = d[f if b > 1 else torch.zeros_like(f), tb]  # (L, S, 3)
        if t_id == 0:
            t = _hit_boxes(h, dd, s.box_c[f, k][:, None], s.box_h[f, k][:, None])
        elif t_id == 1:
            kl = k - KB
            t = _hit_cylinders(
                h, dd, s.cyl_xy[f, kl][:, None], s.cyl_r[f, kl][:, None], s.cyl_z[f, kl][:, None]
            )
        elif t_id == 2:
            kl = k - KB - KC
            t = _hit_ellipsoids(h, dd, s.ell_c[f, kl][:, None], s.ell_s[f, kl][:, None])
        else:
            kl = k - KB - KC - KE
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


def bundle(d: torch.Tensor) -> torch.Tensor:
    """(B, R, 3) -> (B, T, S, 3) bundles of S consecutive rays; the last bundle is padded by repeating a ray."""
    b, r, _ = d.shape
    t = -(-r // _BUNDLE)
    d = torch.cat([d, d[:, -1:].expand(b, t * _BUNDLE - r, 3)], 1)
    return d.view(b, t, _BUNDLE, 3)

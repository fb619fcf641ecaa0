"""The camera + lidar anomaly detectors, in one file.

Two architectures share one call signature, ``model(image, points, point_mask)``, and one output dict
``{"frame_logit": (N,), "point_logit": (N, P) or None}`` (logits, never probabilities):

- ``original``: the incident's ``AnomalyDetectionModel`` layer for layer, 792,321 parameters. Kept as the
  reference the doctor was born on and as the throughput benchmark's subject.
- ``fusion`` (default): ours. Fixed input normalisation, a PointNet-style point encoder whose pooling is
  masked (padding never reaches an output), points querying image tokens with cross-attention, a frame
  head and a per-point head.

Shapes: N frames, H x W images, P points per frame (padded; ``point_mask`` is True on real points).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Arch = Literal["original", "fusion"]
ORIGINAL_PARAMETERS = 792_321


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over dim 1 of (N, P, C) where mask (N, P) is True; 0 for a frame without points."""
    neg = torch.finfo(x.dtype).min
    pooled = x.masked_fill(~mask.unsqueeze(-1), neg).amax(dim=1)  # (N, C)
    return torch.where(mask.any(dim=1, keepdim=True), pooled, torch.zeros_like(pooled))


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1 of (N, P, C) where mask (N, P) is True; 0 for a frame without points."""
    m = mask.unsqueeze(-1).to(x.dtype)
    # torch.where, not x * m: a padded NaN/Inf times 0 would still be NaN.
    total = torch.where(mask.unsqueeze(-1), x, torch.zeros_like(x)).sum(dim=1)  # (N, C)
    return total / m.sum(dim=1).clamp_min(1.0)


def image_encoder(channels: int, tokens: int) -> nn.Sequential:
    """Both models' image encoder: three 3x3 convolutions (32, 64, ``channels``), two 2x2 max-pools, then an
    average pool to a tokens x tokens grid: (N, 3, H, W) -> (N, channels, tokens, tokens)."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, channels, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d((tokens, tokens)),
    )


class OriginalModel(nn.Module):
    """The incident's model, exactly: 792,321 parameters.

    The report lists the layers but not ``forward``. Its parameter count is reached by the listed layers
    alone (conv 93,248 + point MLP 41,664 + attention 263,168 + head 394,241), so the 128-channel image
    tokens enter the 256-wide attention without a learned projection; we zero-pad them to 256 channels.
    Points are pooled with a plain mean over all P slots, as the original did (it had no mask).
    """

    def __init__(self) -> None:
        super().__init__()
        self.image_encoder = image_encoder(128, 4)
        self.point_encoder = nn.Sequential(
            nn.Linear(4, 64),
            nn.ReLU(),
            nn.Linear(64, 128),
            nn.ReLU(),
            nn.Linear(128, 256),
        )
        self.cross_attention = nn.MultiheadAttention(embed_dim=256, num_heads=4, batch_first=True)
        self.anomaly_head = nn.Sequential(
            nn.Linear(256 * 2, 512),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.Linear(512, 256),
            nn.ReLU(),
            nn.Linear(256, 1),
        )

    def forward(
        self, image: torch.Tensor, points: torch.Tensor, point_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor | None]:
        img = self.image_encoder(image)  # (N, 128, 4, 4)
        img = img.flatten(2).transpose(1, 2)  # (N, 16, 128)
        img = F.pad(img, (0, 128))  # (N, 16, 256): parameter-free widening, see the class docstring
        pts = self.point_encoder(points)  # (N, P, 256)
        att, _ = self.cross_attention(pts, img, img, need_weights=False)  # (N, P, 256)
        fused = torch.cat([att.mean(dim=1), pts.mean(dim=1)], dim=-1)  # (N, 512)
        return {"frame_logit": self.anomaly_head(fused).squeeze(-1), "point_logit": None}  # (N,)


class FusionModel(nn.Module):
    """Our detector: masked point encoder + image tokens + cross-attention, frame and point heads.

    Args:
        width: channel width d of point features and image tokens.
        heads: attention heads (must divide width).
        tokens: the image is pooled to tokens x tokens image tokens.
        dropout: dropout in the heads.
        point_scale: divisors for (x, y, z, intensity) so that points enter at unit scale.
    """

    def __init__(
        self,
        width: int = 128,
        heads: int = 4,
        tokens: int = 8,
        dropout: float = 0.1,
        point_scale: tuple[float, float, float, float] = (40.0, 20.0, 3.0, 1.0),
    ) -> None:
        super().__init__()
        d = width
        # Fixed normalisation (buffers: saved in checkpoints, moved with .to(), never trained).
        self.register_buffer("image_mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))
        self.register_buffer("image_std", torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1))
        self.register_buffer("point_scale", torch.tensor(point_scale).view(1, 1, 4))
        self.image_encoder = image_encoder(d, tokens)
        self.image_pos = nn.Parameter(torch.zeros(1, tokens * tokens, d))  # learned token positions
        self.point_encoder = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, d), nn.ReLU())
        # PointNet segmentation trick: each point also sees the frame's masked max-pooled feature.
        self.point_mix = nn.Sequential(nn.Linear(2 * d, d), nn.ReLU())
        self.attn_norm = nn.LayerNorm(d)
        self.cross_attention = nn.MultiheadAttention(d, heads, batch_first=True)
        self.frame_head = nn.Sequential(nn.Linear(3 * d, d), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d, 1))
        self.point_head = nn.Sequential(nn.Linear(2 * d, d // 2), nn.ReLU(), nn.Linear(d // 2, 1))

    def forward(
        self, image: torch.Tensor, points: torch.Tensor, point_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor | None]:
        if point_mask is None:
            point_mask = torch.ones(points.shape[:2], dtype=torch.bool, device=points.device)
        x = (image - self.image_mean) / self.image_std  # (N, 3, H, W)
        img = self.image_encoder(x).flatten(2).transpose(1, 2) + self.image_pos  # (N, T, d)
        # Padded points are zeroed before the MLP and masked in every pooling below.
        p = torch.where(point_mask.unsqueeze(-1), points / self.point_scale, torch.zeros_like(points))
        pts = self.point_encoder(p)  # (N, P, d)
        glob = masked_max(pts, point_mask)  # (N, d)
        pts = self.point_mix(torch.cat([pts, glob.unsqueeze(1).expand_as(pts)], dim=-1))  # (N, P, d)
        # Each point queries the image tokens: queries are independent, so padded queries affect nobody.
        att, _ = self.cross_attention(self.attn_norm(pts), img, img, need_weights=False)  # (N, P, d)
        per_point = torch.cat([pts, att], dim=-1)  # (N, P, 2d)
        frame = torch.cat([masked_max(per_point, point_mask), img.mean(dim=1)], dim=-1)  # (N, 3d)
        frame_logit = self.frame_head(frame).squeeze(-1)  # (N,)
        point_logit = self.point_head(per_point).squeeze(-1)  # (N, P)
        return {"frame_logit": frame_logit, "point_logit": point_logit}


def build_model(arch: Arch = "fusion", **kwargs: object) -> nn.Module:
    """Build a detector by name.

    Args:
        arch: ``"original"`` (the incident's 792,321-parameter model; takes no options) or ``"fusion"``.
        **kwargs: FusionModel options (width, heads, tokens, dropout, point_scale).

    Raises:
        ValueError: unknown arch, or options given to ``original``.
    """
    if arch == "original":
        if kwargs:
            raise ValueError(f"arch 'original' takes no options (got {sorted(kwargs)}); it is fixed")
        return OriginalModel()
    if arch == "fusion":
        return FusionModel(**kwargs)  # type: ignore[arg-type]
    raise ValueError(f"unknown arch '{arch}'; use 'original' or 'fusion'")


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements (trainable or not)."""
    return sum(p.numel() for p in model.parameters())

"""Frames: the one batch format every data source produces and the model consumes."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

# AnoVox semantic ids (see docs/anovox.md): anomaly classes and ids to ignore.
ANOMALY_IDS: tuple[int, ...] = (29, 30, 31, 32, 33, 34, 100)
IGNORE_IDS: tuple[int, ...] = (112, 113, 114, 115, 116, 117, 118, 119, 214)


@dataclass
class Frames:
    """A batch of N camera + lidar frames, all tensors on one device.

    image:         (N, 3, H, W) float32 in [0, 1]
    points:        (N, P, 4) float32: x forward, y left, z up (metres, ego frame), intensity in [0, 1]
    point_mask:    (N, P) bool, True where the point is real (padding and dropped points are False)
    point_class:   (N, P) int64 semantic id per point (AnoVox ids; 0 for padding)
    point_label:   (N, P) float32 1.0 on anomaly points, 0.0 otherwise (0 where masked)
    frame_label:   (N,) float32 1.0 when an anomaly is visible in the frame
    scenario:      (N,) int64 scenario id, the unit of splitting
    """

    image: torch.Tensor
    points: torch.Tensor
    point_mask: torch.Tensor
    point_class: torch.Tensor
    point_label: torch.Tensor
    frame_label: torch.Tensor
    scenario: torch.Tensor

    def __len__(self) -> int:
        return int(self.frame_label.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Frames:
        return Frames(
            **{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)}
        )

    def index(self, idx: torch.Tensor | slice) -> Frames:
        return Frames(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    @staticmethod
    def cat(parts: list[Frames]) -> Frames:
        return Frames(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Frames)})

"""The synthetic generator's settings (SyntheticConfig) and the AnoVox class ids its scenes use."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
]
